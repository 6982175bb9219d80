"""Release artifacts (provision/files/usr/local/lib/kiln/kiln_artifact.py): what `make release` packs and what a
server's `kiln deploy FILE` accepts.

- a packed app and wheelhouse unpack to the same files (what a release never takes left out), the name defaults to the
  contract's version + the app tree's hash, and the same inputs give the same file byte for byte;
- refused, with the member or the mismatch named and exit 1: a changed member, a member the manifest does not list,
  a listed member missing, another distro, another Python, a member that would land outside the scratch directory,
  a file that is no tar, a tar whose first member is not the manifest, a scratch directory that is not empty.
The deploy of a real artifact (offline, on a running server): tests/provision/nspawn-check.sh, "artifact deploy".
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
from kilntest import ROOT, load

art = load("kiln_artifact", ROOT / "provision" / "files" / "usr" / "local" / "lib" / "kiln" / "kiln_artifact.py")
HERE_PY = "{}.{}".format(*sys.version_info[:2])


@pytest.fixture
def src(tmp_path: Path) -> tuple[Path, Path]:
    app, wheels = tmp_path / "app", tmp_path / "wheels"
    for rel, text in {
        "manage.py": "print('manage')\n",
        "site/__init__.py": "",
        "site/static/site.css": "body { color: red }\n",
        "site/__pycache__/x.cpython-313.pyc": "bytecode",
        "staticfiles/site.css": "collected",
        "media/upload.txt": "a user's file",
        ".git/HEAD": "ref: refs/heads/main\n",
        "requirements.txt": "django==5.2 --hash=sha256:00\n",
    }.items():
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        (app / rel).write_text(text)
    (app / "bin").mkdir()
    (app / "bin" / "run").write_text("#!/bin/sh\n")
    (app / "bin" / "run").chmod(0o755)
    (app / "site" / "css").symlink_to("static")
    wheels.mkdir()
    (wheels / ".python").write_text(f"Python {HERE_PY}.1\n")
    (wheels / "requirements.txt").write_text("django==5.2 --hash=sha256:11\n")
    (wheels / "Django-5.2-py3-none-any.whl").write_bytes(b"PK wheel bytes")
    (wheels / ".inputs").write_text("cache key\n")
    return app, wheels


def packed(src: tuple[Path, Path], out: Path, **kw) -> str:
    return art.pack(src[0], src[1], kw.pop("distro", "debian-13"), out, kw.pop("name", None), "git abc", "1.2.0")


def rewrite(path: Path, change) -> None:
    """The artifact at PATH re-tarred with change(members), members: [(TarInfo, bytes | None)]."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]
    members = change(members)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for m, data in members:
            if data is not None:
                m.size = len(data)
                tar.addfile(m, io.BytesIO(data))
            else:
                tar.addfile(m)


def refused(path: Path, dest: Path, distro: str = "debian-13") -> str:
    with pytest.raises(art.ArtifactError) as e:
        art.unpack(path, dest, distro)
    return str(e.value)


def test_an_artifact_unpacks_to_the_app_and_wheels_without_what_a_release_never_takes(src, tmp_path, capsys):
    out = tmp_path / "a.kiln.tar"
    name = packed(src, out)
    assert name.startswith("1.2.0+") and len(name) == len("1.2.0+") + 12, name
    dest = tmp_path / "dest"
    dest.mkdir()
    assert art.main(["unpack", str(out), str(dest), "--distro", "debian-13"]) == 0
    said = capsys.readouterr().out
    assert f"ARTIFACT_NAME={name}\n" in said and f"ARTIFACT_APP={dest}/app" in said, said
    assert "ARTIFACT_ORIGIN='a.kiln.tar sha256:" in said and " git abc'" in said, said
    got = sorted(
        str(Path(d, f).relative_to(dest))
        for d, dirs, files in art.os.walk(dest)
        for f in files + [x for x in dirs if Path(d, x).is_symlink()]
    )
    assert got == [
        "app/bin/run",
        "app/manage.py",
        "app/requirements.txt",
        "app/site/__init__.py",
        "app/site/css",
        "app/site/static/site.css",
        "wheels/.python",
        "wheels/Django-5.2-py3-none-any.whl",
        "wheels/requirements.txt",
    ], got
    assert (dest / "app/site/css").is_symlink() and (
        dest / "app/site/css/site.css"
    ).read_text() == "body { color: red }\n"
    assert (dest / "app/bin/run").stat().st_mode & 0o111, "the executable bit was lost"
    assert (dest / "wheels/Django-5.2-py3-none-any.whl").read_bytes() == b"PK wheel bytes"


def test_the_same_inputs_give_the_same_file_byte_for_byte(src, tmp_path):
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    name = packed(src, a)
    (src[0] / "manage.py").touch()  # a newer mtime: not part of the artifact
    packed(src, b)
    assert a.read_bytes() == b.read_bytes()
    (src[0] / "manage.py").write_text("print('changed')\n")
    assert packed(src, b) != name, "a changed app tree must change the default name"


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (
            lambda ms: [(m, d + b"!" if m.name == "app/manage.py" else d) for m, d in ms],
            "member app/manage.py differs from its manifest",
        ),
        (lambda ms: [*ms, (tarfile.TarInfo("app/extra.py"), b"x = 1\n")], "member app/extra.py is not in its manifest"),
        (
            lambda ms: [(m, d) for m, d in ms if m.name != "wheels/requirements.txt"],
            "member(s) of its manifest missing, first wheels/requirements.txt",
        ),
        (lambda ms: ms[1:], "its first member is not kiln-release.json"),
    ],
    ids=["changed", "unlisted", "missing", "no-manifest-first"],
)
def test_a_tampered_artifact_is_refused_naming_the_member(src, tmp_path, change, expect):
    out = tmp_path / "a.tar"
    packed(src, out)
    rewrite(out, change)
    dest = tmp_path / "dest"
    dest.mkdir()
    assert expect in refused(out, dest)


def test_a_member_that_would_land_outside_the_scratch_is_refused(src, tmp_path):
    out = tmp_path / "a.tar"
    packed(src, out)
    evil = b"owned\n"

    def add(ms):
        manifest = json.loads(ms[0][1])
        manifest["files"]["app/../../evil"] = "sha256:" + art.hashlib.sha256(evil).hexdigest()
        return [(ms[0][0], json.dumps(manifest).encode()), *ms[1:], (tarfile.TarInfo("app/../../evil"), evil)]

    rewrite(out, add)
    dest = tmp_path / "deep" / "dest"
    dest.mkdir(parents=True)
    assert "member app/../../evil refused" in refused(out, dest)
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize(
    ("distro", "python", "expect"),
    [
        ("ubuntu-24.04", None, "was built for ubuntu-24.04, this server is debian-13: make release DISTRO=debian-13"),
        ("debian-13", "2.7", f"its wheels are for Python 2.7, this server's is {HERE_PY}"),
    ],
)
def test_an_artifact_for_another_distro_or_python_is_refused(src, tmp_path, distro, python, expect):
    if python:
        (src[1] / ".python").write_text(f"Python {python}.18\n")
    out = tmp_path / "a.tar"
    packed(src, out, distro=distro)
    dest = tmp_path / "dest"
    dest.mkdir()
    assert expect in refused(out, dest)
    assert not any(dest.iterdir()), "something was unpacked from a refused artifact"


def test_no_tar_and_a_used_scratch_are_refused_with_exit_1(src, tmp_path, capsys):
    junk = tmp_path / "junk.kiln.tar"
    junk.write_bytes(b"this is no tar\n" * 100)
    dest = tmp_path / "dest"
    dest.mkdir()
    assert "not a release artifact (not a tar" in refused(junk, dest)
    (dest / "left").write_text("")
    assert art.main(["unpack", str(junk), str(dest), "--distro", "debian-13"]) == 1
    assert "not an empty directory" in capsys.readouterr().err


def test_an_artifact_cut_short_is_refused(src, tmp_path):
    out = tmp_path / "a.tar"
    packed(src, out)
    with tarfile.open(out) as tar:
        cut = tar.getmember("wheels/Django-5.2-py3-none-any.whl").offset_data + 3
    out.write_bytes(out.read_bytes()[:cut])  # a copy that stopped inside a wheel
    dest = tmp_path / "dest"
    dest.mkdir()
    said = refused(out, dest)
    assert "damaged" in said or "missing, first" in said, said
