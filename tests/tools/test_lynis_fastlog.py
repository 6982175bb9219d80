"""tests/hardening/lynis-fastlog.bash against the Lynis it stands in for (this host's lynis package): every function
of the shim must give what the command or the Lynis function it replaces gives, for the argument forms it takes over,
and hand everything else to the real command.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FASTLOG = ROOT / "tests" / "hardening" / "lynis-fastlog.bash"
LYNIS_FUNCTIONS = Path("/usr/share/lynis/include/functions")
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
# What Lynis logs: paths, shell metacharacters, backslashes (echo must not interpret them), options-like text.
TEXTS = ["Performing test ID DEB-0001", r"a\b \n \t %s %d", "-n", "-e", "*", "$HOME `id`", "quote ' \" end", ""]

pytestmark = pytest.mark.skipif(not LYNIS_FUNCTIONS.exists(), reason="lynis is not installed (make test-tools)")


def bash(script: str, *args: str, shim: bool, **extra: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC", **extra}
    if shim:
        env["BASH_ENV"] = str(FASTLOG)
    return subprocess.run(["bash", "-c", script, "bash", *args], env=env, capture_output=True, text=True, check=False)


def logtext_lines(tmp_path: Path, shim: bool) -> tuple[list[str], str]:
    log = tmp_path / f"lynis-{shim}.log"
    script = (
        'LOGFILE=$1 LOGTEXT=1; shift; . /usr/share/lynis/include/functions; for t in "$@"; do LogText "$t"; done; '
        "declare -f LogText"
    )
    res = bash(script, str(log), *TEXTS, shim=shim)
    assert res.returncode == 0, res.stderr
    return log.read_text().splitlines(), res.stdout + res.stderr


def test_logtext_writes_the_lines_lynis_logtext_writes(tmp_path):
    theirs, _ = logtext_lines(tmp_path, shim=False)
    ours, said = logtext_lines(tmp_path, shim=True)
    assert "printf -v CDATE" in said, (
        f"the shim's LogText is not the one in effect after Lynis defined its own:\n{said}"
    )
    assert "LogText: readonly function" in said, said
    assert all(STAMP.match(line) for line in theirs + ours), (theirs, ours)
    assert [STAMP.sub("", line) for line in ours] == [STAMP.sub("", line) for line in theirs]


def test_logtext_is_lynis_own_when_lynis_defines_it_otherwise(tmp_path):
    # A Lynis whose LogText differs from the mirrored line keeps its own: the shim never replaces what it does not know.
    other = tmp_path / "functions"
    other.write_text(LYNIS_FUNCTIONS.read_text().replace('echo "${CDATE} $1"', 'echo "${CDATE}  $1"'))
    script = f". {other}; declare -f LogText"
    res = bash(script, shim=True, KILN_LYNIS_FUNCTIONS=str(other))
    assert "printf -v CDATE" not in res.stdout and "own LogText is used" in res.stderr, res.stdout + res.stderr


@pytest.mark.parametrize("fmt", ["+%Y-%m-%d %H:%M:%S", "+%s%N", "+%N", "+%s", "-u +%F"])
def test_date_forms_match_date(fmt):
    for _ in range(20):  # the same second for both, or try again
        t0 = time.time()
        ours = bash('date "$@"', *fmt.split(" ", 1) if fmt.startswith("-u") else [fmt], shim=True)
        real = subprocess.run(
            ["date", *(fmt.split(" ", 1) if fmt.startswith("-u") else [fmt])],
            capture_output=True,
            text=True,
            check=True,
            env={"TZ": "UTC"},
        )
        if int(time.time()) == int(t0):
            break
    assert ours.returncode == 0, ours.stderr
    if fmt in ("+%N", "+%s%N"):
        assert re.fullmatch(r"\d+\n", ours.stdout) and len(ours.stdout) == len(real.stdout), (ours.stdout, real.stdout)
        if fmt == "+%s%N":  # nanoseconds since the epoch, to the microsecond
            assert abs(int(ours.stdout) - int(real.stdout)) < 2_000_000_000
    else:
        assert ours.stdout == real.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["0", "+", "0"],
        ["1", "+", "2"],
        ["007", "+", "1"],
        ["999999999999999", "+", "1"],
        ["5", "-", "3"],
        ["a", "+", "1"],
        ["1", "+"],
    ],
)
def test_expr_forms_match_expr(args):
    ours = bash('expr "$@"', *args, shim=True)
    real = subprocess.run(["expr", *args], capture_output=True, text=True, check=False)
    assert (ours.returncode, ours.stdout) == (real.returncode, real.stdout)


# Inputs as Lynis pipes them, and the edges: none, no final newline, empty fields, repeated delimiters, tabs,
# non-ASCII (the real command takes over) and a NUL byte (the real command gets all of it).
CORPUS = [
    b"net.ipv6.conf.all.mtu=1280\nconfig-data=sysctl;fs.suid_dumpable;0;1;desc-space-x;\n a:b:c  d\tx,y,z | w\n",
    b"config:x:y!space!z\nskip-test=A!space!!space!B\n!space!",
    b"DEB-0001 KRNL-6000\nx deb-0001\nDEB-0001",
    b"",
    b"\n",
    b"deb-0001\n",
    b"DEB-0001",
    b"a b  c \n",
    b"x=y=z\nno delimiter\n=lead\ntrail=\n\n",
    b"\tkey = value with spaces \n",
    "é=ü höhe\n".encode(),
    b"a\x00b=c d\n",
    b"line1\nline2 x\nlast=1",
]
FORMS = [
    ["tr", "[:lower:]", "[:upper:]"],
    ["tr", "-d", " "],
    ["wc", "-m"],
    ["cut", "-d", "=", "-f1"],
    ["cut", "-d", "=", "-f2"],
    ["cut", "-d", "=", "-f3"],
    ["cut", "-d", " ", "-f2-"],
    ["cut", "-d", "=", "-f1-"],
    ["cut", "-c", "9"],
    ["cut", "-c", "1"],
    ["grep", "DEB-0001"],
    ["grep", "x"],
    ["grep", "a.b"],
    ["grep", "-v"],
    ["grep", "-E", "^config:"],
    ["grep", "-E", "^x"],
    ["grep", "-E", "^a.b"],
    ["sed", "s/!space!/ /g"],
    ["/usr/bin/sed", "s/__space__/ /g"],
    ["awk", "{ print $1 }"],
    ["awk", "{print $2}"],
    ["awk", "-F ", "{ print $3 }"],
    ["/usr/bin/awk", "-F=", "{ print $1 }"],
    ["/usr/bin/awk", "-F=", "{ print $2 }"],
    ["/usr/bin/awk", "-F;", "{ print $4 }"],
    ["/usr/bin/awk", "-F:", "{print $1}"],
    ["/usr/bin/awk", "-F/", "{ print $NF }"],
    ["/usr/bin/awk", "{ print $1, $2 }"],
    ["/usr/bin/cut", "-d", ",", "-f2"],
    ["/usr/bin/cut", "-d", ":", "-f1"],
    ["/usr/bin/tr", "[:lower:]", "[:upper:]"],
    ["/usr/bin/tr", "|", " "],
    ["/usr/bin/grep", "DEB-0001"],
    ["sed", "s/a/X/g"],
    ["sed", "s/a/X/"],
    ["sed", "s/a.b/X/g"],
    ["tr", "a", "b"],
    ["cut", "-f1"],
    ["wc", "-l"],
]


@pytest.mark.parametrize("form", FORMS, ids=" ".join)
@pytest.mark.parametrize("lang", ["C.UTF-8", "C"])
def test_text_forms_give_what_the_command_gives(form, lang):
    for data in CORPUS:
        env = {"PATH": "/usr/bin:/bin", "LANG": lang}
        ours = subprocess.run(
            ["bash", "-c", '"$@"', "bash", *form],
            input=data,
            capture_output=True,
            check=False,
            env={**env, "BASH_ENV": str(FASTLOG)},
        )
        real = subprocess.run(form, input=data, capture_output=True, check=False, env=env)
        assert (ours.returncode, ours.stdout) == (real.returncode, real.stdout), f"{form} on {data!r}"


@pytest.mark.parametrize(
    "args", [["-e", "- Checking", "x", "[ OK ]"], ["-e", "a\\tb"], ["-e", "-n", "x"], ["-e"], ["-n", "x"], ["x\\cy"]]
)
def test_bin_echo_gives_what_bin_echo_gives(args):
    ours = bash('/bin/echo "$@"', *args, shim=True)
    real = subprocess.run(["/bin/echo", *args], capture_output=True, text=True, check=False)
    assert (ours.returncode, ours.stdout) == (real.returncode, real.stdout)


def test_text_forms_run_without_a_process(tmp_path):
    # The point of the shim: for Lynis's forms on ASCII text no program starts (PATH holds none of them here).
    script = (
        "echo DEB-0001 | tr '[:lower:]' '[:upper:]'; echo 'a b' | wc -m | tr -d ' '; echo k=v | cut -d = -f2; "
        "echo a=b | /usr/bin/awk -F= '{ print $2 }'; /bin/echo -e done"
    )
    res = subprocess.run(
        ["/bin/bash", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": str(tmp_path), "BASH_ENV": str(FASTLOG)},
    )
    assert res.stdout == "DEB-0001\n4\nv\nb\ndone\n", res.stdout + res.stderr
