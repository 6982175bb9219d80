#!/usr/bin/env python3
"""kiln_artifact: a release artifact, the app and its wheelhouse in one file that a server deploys offline.

  kiln_artifact.py pack --app DIR --wheels DIR --distro D --out FILE [--name NAME | --version V] [--origin TEXT]
      (make release: packer/scripts/make-release.sh) FILE, a tar: kiln-release.json first, then app/ (the app's tree,
      without what a release never takes from a source: __pycache__, *.pyc, staticfiles/, media/, .venv/, .git/) and
      wheels/ (packer/scripts/build-wheelhouse.sh's output: the same wheels, hashes and bytecode an image gets).
      Members are sorted, owned by root, dated 1980-01-01: the same inputs give the same file, byte for byte.
      NAME (the release's default name) defaults to V+<12 digits of the app tree's hash> (V: the contract's version).
  kiln_artifact.py unpack FILE DEST --distro D
      (kiln-release build FILE) checks FILE against its manifest and extracts it into DEST (an empty directory), then
      prints shell assignments (shlex-quoted: eval only assigns): ARTIFACT_NAME, ARTIFACT_APP (DEST/app),
      ARTIFACT_WHEELS (DEST/wheels) and ARTIFACT_ORIGIN (FILE's name, its sha256 and the origin it was packed with).

The manifest, kiln-release.json: {"format": 1, "name", "distro", "python" (MAJOR.MINOR of the wheels' Python, the
wheelhouse's .python), "origin", "files": {member: "sha256:HEX" | "symlink:TARGET"}}. An artifact is refused, exit 1
and one line naming the problem, when it is not a tar, its first member is not the manifest, it was built for another
distro or Python (its wheels and bytecode would not load), a member is not in the manifest or differs from it (a
changed or corrupted file is named), a listed member is missing, or a member could land outside DEST (tar's "data"
filter: absolute names, .., links out, devices). DEST is left to the caller to remove.

Standard library only (the server's python3; also 3.11, the host's: make release and the tests run it there).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shlex
import sys
import tarfile
from pathlib import Path

MANIFEST = "kiln-release.json"
FORMAT = 1
EPOCH = 315532800  # 1980-01-01, the date every member carries (zip's first day, as build-wheelhouse's pycache.tar)
# What kiln-release's build never takes from an app's source (its tar's excludes), and .git: a release is a tree.
SKIP_DIRS = {"__pycache__", ".git"}
SKIP_TOP = {"staticfiles", "media", ".venv"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # kiln-release's release names


class ArtifactError(Exception):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree(root: Path, skip_top: frozenset[str] | set[str] = frozenset()) -> list[Path]:
    """The files and symlinks under ROOT, sorted, minus the skipped folders (anywhere) and top-level names."""
    found = []
    for here, dirs, files in os.walk(root):
        rel = Path(here).relative_to(root)
        kept = [d for d in dirs if d not in SKIP_DIRS and not (rel == Path(".") and d in skip_top)]
        links = [d for d in kept if (Path(here) / d).is_symlink()]  # taken as links, never followed
        dirs[:] = sorted(d for d in kept if d not in links)
        found += [rel / d for d in links] + [rel / f for f in files if not f.endswith(".pyc")]
    return sorted(found, key=str)


def entry(path: Path) -> str:
    return f"symlink:{os.readlink(path)}" if path.is_symlink() else f"sha256:{sha256_file(path)}"


def python_of(wheels: Path) -> str:
    """MAJOR.MINOR of the Python the wheelhouse was built for (its .python: `Python 3.13.5`)."""
    try:
        m = re.match(r"Python (\d+)\.(\d+)", (wheels / ".python").read_text())
    except OSError as e:
        raise ArtifactError(f"{wheels} is no wheelhouse of build-wheelhouse.sh (no .python: {e.strerror})") from None
    if not m:
        raise ArtifactError(f"{wheels}/.python names no Python version")
    return f"{m[1]}.{m[2]}"


def pack(app: Path, wheels: Path, distro: str, out: Path, name: str | None, origin: str, version: str = "0.0.0") -> str:
    for what, d in (("--app", app), ("--wheels", wheels)):
        if not d.is_dir():
            raise ArtifactError(f"{what} {d}: not a directory")
    if not (wheels / "requirements.txt").is_file():
        raise ArtifactError(f"{wheels} has no requirements.txt: make it with packer/scripts/build-wheelhouse.sh")
    members = [(f"app/{p}", app / p) for p in tree(app, SKIP_TOP)]
    members += [(f"wheels/{p}", wheels / p) for p in tree(wheels) if p.name != ".inputs"]
    files = {m: entry(src) for m, src in members}
    if name is None:
        digest = hashlib.sha256("".join(f"{m} {e}\n" for m, e in files.items() if m.startswith("app/")).encode())
        name = f"{version}+{digest.hexdigest()[:12]}"
    if not NAME.match(name):
        raise ArtifactError(f"release name {name!r}: letters, digits and . _ + - only, not first . _ + -")
    manifest = {
        "format": FORMAT,
        "name": name,
        "distro": distro,
        "python": python_of(wheels),
        "origin": origin,
        "files": files,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        data = json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
        info = fixed(tarfile.TarInfo(MANIFEST))
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for m, src in members:
            info = fixed(tar.gettarinfo(str(src), m))
            if info.isreg():
                with src.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    tmp.replace(out)
    return name


def fixed(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = EPOCH
    if info.isreg():
        info.mode = 0o755 if info.mode & 0o111 else 0o644
    return info


def unpack(path: Path, dest: Path, distro: str) -> dict[str, str]:
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by the with below; its open error is named here
    except (OSError, tarfile.TarError) as e:
        raise ArtifactError(f"{path}: not a release artifact (not a tar: {e})") from None
    with tar:
        try:
            return check_and_extract(path, tar, dest, distro)
        except (tarfile.TarError, OSError, EOFError) as e:  # a header or a member cut short or broken mid-way
            raise ArtifactError(f"{path}: damaged ({e}): nothing deployed") from None


def check_and_extract(path: Path, tar: tarfile.TarFile, dest: Path, distro: str) -> dict[str, str]:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isreg():
        raise ArtifactError(
            f"{path}: not a release artifact (its first member is not {MANIFEST}: make release makes one)"
        )
    try:
        manifest = json.load(tar.extractfile(first))
        files, name = manifest["files"], manifest["name"]
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path}: its {MANIFEST} cannot be read ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: format {manifest.get('format')!r}, this Kiln reads format {FORMAT}")
    if manifest.get("distro") != distro:
        raise ArtifactError(
            f"{path} was built for {manifest.get('distro')}, this server is {distro}: make release DISTRO={distro}"
        )
    here = "{}.{}".format(*sys.version_info[:2])
    if manifest.get("python") != here:
        raise ArtifactError(f"{path}: its wheels are for Python {manifest.get('python')}, this server's is {here}")
    if not isinstance(name, str) or not NAME.match(name):
        raise ArtifactError(f"{path}: its release name {name!r} is not one")
    seen = set()
    for m in tar:  # (from the first member again: the manifest is skipped)
        if m is first or m.isdir():
            continue
        want = files.get(m.name)
        if want is None:
            raise ArtifactError(f"{path}: member {m.name} is not in its manifest")
        try:
            tar.extract(m, dest, filter="data")
        except tarfile.FilterError as e:
            raise ArtifactError(f"{path}: member {m.name} refused: {e}") from None
        got = entry(dest / m.name)
        if got != want:
            raise ArtifactError(
                f"{path}: member {m.name} differs from its manifest (corrupted or changed after make release)"
            )
        seen.add(m.name)
    missing = sorted(set(files) - seen)
    if missing:
        raise ArtifactError(f"{path}: {len(missing)} member(s) of its manifest missing, first {missing[0]}")
    digest = sha256_file(path)
    origin = f"{path.name} sha256:{digest}" + (f" {manifest['origin']}" if manifest.get("origin") else "")
    return {
        "ARTIFACT_NAME": name,
        "ARTIFACT_APP": str(dest / "app"),
        "ARTIFACT_WHEELS": str(dest / "wheels"),
        "ARTIFACT_ORIGIN": origin,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kiln_artifact.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack")
    pk.add_argument("--app", type=Path, required=True)
    pk.add_argument("--wheels", type=Path, required=True)
    pk.add_argument("--distro", required=True)
    pk.add_argument("--out", type=Path, required=True)
    pk.add_argument("--name")
    pk.add_argument("--version", default="0.0.0", help="the app's version (the default name's first part)")
    pk.add_argument("--origin", default="")
    up = sub.add_parser("unpack")
    up.add_argument("file", type=Path)
    up.add_argument("dest", type=Path)
    up.add_argument("--distro", required=True)
    a = p.parse_args(argv)
    try:
        if a.cmd == "pack":
            print(pack(a.app, a.wheels, a.distro, a.out, a.name, a.origin, a.version))
        else:
            if not a.dest.is_dir() or any(a.dest.iterdir()):
                raise ArtifactError(f"{a.dest}: not an empty directory")
            for k, v in unpack(a.file, a.dest, a.distro).items():
                print(f"{k}={shlex.quote(v)}")
    except ArtifactError as e:
        print(f"kiln_artifact: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
