"""Releases on the server (kiln-release): what an operator's deploy does when it fails."""

from kilnlib import out, sh

SRC = "/var/tmp/kiln-test-failing-release"


def test_a_build_that_fails_leaves_no_release_and_the_next_deploy_builds_again(host):
    # A copy of the running app whose dependencies cannot be installed: a wheelhouse made for its very lock (so every
    # check before the install passes) whose pip cannot run. The failing step is a plain command inside the build,
    # not one of kiln-release's own checks: before kiln-release ran its build with inherit_errexit, the build went on
    # after it (bash runs `v=$(build ...)` without set -e), marked the incomplete release as built, and every later
    # deploy of the same source reported "already built" and failed at its release commands.
    current = out(host, "readlink /srv/kiln/current")
    releases = out(host, "ls -1 /srv/kiln/releases")
    sh(host, f"rm -rf {SRC} && mkdir -p {SRC}/wheelhouse && cp -a /srv/kiln/current/app {SRC}/app")
    sh(host, f"echo '# changed by {__name__}' >> {SRC}/app/manage.py")
    lock = out(host, "bash -c '. /srv/kiln/current/kiln-app.env && echo $KILN_APP_LOCK'")
    sh(
        host,
        f"cp {SRC}/app/{lock} {SRC}/wheelhouse/requirements.txt"
        f" && sha256sum < {SRC}/app/{lock} | cut -c1-64 > {SRC}/wheelhouse/source-requirements.sha256"
        f" && echo 'not a zip archive' > {SRC}/wheelhouse/pip-runner.zip",
    )
    try:
        for attempt in (1, 2):
            res = sh(host, f"KILN_WHEELHOUSE={SRC}/wheelhouse kiln-release deploy {SRC}/app 9.9.9-failing", ok=None)
            said = res.stdout + res.stderr
            assert res.rc != 0, f"attempt {attempt}: the deploy of an app that cannot be installed succeeded:\n{said}"
            assert "build of 9.9.9-failing FAILED" in said, f"attempt {attempt}: the failure is not named:\n{said}"
            assert "already built" not in said, f"attempt {attempt}: a failed build was kept as built:\n{said}"
            left = out(host, "ls -1 /srv/kiln/releases")
            assert left == releases, f"attempt {attempt}: releases before:\n{releases}\nafter:\n{left}"
            assert out(host, "readlink /srv/kiln/current") == current, f"attempt {attempt}: current was switched"
        print(said[-1500:])
    finally:
        sh(host, f"rm -rf {SRC} /srv/kiln/releases/9.9.9-failing")
