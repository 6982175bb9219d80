"""Releases on the server (kiln-release): what an operator's deploy does when it fails, and deploys that never drop a
request (kiln-release's header: the new release started beside the old one as kiln-web-next, health-gated, nginx
switched to it, kiln-web restarted on it, nginx back, the workers restarted warmly).

The deploy scenarios run in order on copies of the running app, each through a bounded load loop on the target
(LOAD: threads of plain requests, a new connection each, against nginx on loopback: /healthz over HTTP, the records
page and a static file over HTTPS) and print its counts: requests, non-2xx answers, connection errors, the versions
seen.
Their releases are built once, up front (the venv linked from the running release: same lock), and removed at the
end; the release that was current before is current again afterwards."""

import base64
import contextlib
import json
import secrets
import shlex
import time

import pytest

import test_jobs as jobs
from kilnlib import (
    SOCKET,
    all_running,
    figure,
    http,
    out,
    sh,
    supervisor_status,
    supervisor_text,
    wait_for,
    wait_in_guest,
    worker_names,
)

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
    # A lock of its own (a comment more): a release with the same lock would lend it its venv (reuse_venv), and the
    # build would install nothing.
    sh(host, f"echo '# changed by {__name__}' >> {SRC}/app/{lock}")
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


# --- deploys that never drop a request ------------------------------------------------------------------------------

DEPLOY = "/var/tmp/kiln-test-deploy"
GOOD, NO_IMPORT, UNHEALTHY = "9.9.1-deploy-good", "9.9.2-deploy-noimport", "9.9.3-deploy-unhealthy"
TOKEN = f"deploy-{secrets.token_hex(4)}"  # what the changed app's /healthz says (the original's says nothing)
STATIC = "/static/admin/css/base.css"
NEXT_SOCKET = "/run/kiln/gunicorn-next.sock"
UPSTREAM = "/etc/nginx/snippets/kiln-upstream.conf"
KEEP_DROPIN = "/run/systemd/system/kiln-retention.service.d/50-kiln-test-release.conf"
JOB_GATE = "/var/tmp/kiln-test-deploy-job"  # the deploy test's job ends once JOB_GATE/release exists

# The load loop, run on the target with its python3: three threads until the stop file appears (bounded), each request
# on a new connection (Connection: close): a client that reuses a keep-alive connection may meet an old nginx worker
# closing it at a reload, which a browser retries and a counting loop would not. Counts every answer and exception.
LOAD = r"""
import http.client, json, os, ssl, sys, threading, time
out, stop, bound, static = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3]), sys.argv[4]
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
TARGETS = [[("http", "/healthz")], [("http", "/healthz")], [("https", "/records/"), ("https", static)]]
lock = threading.Lock()
res = {"requests": 0, "non_2xx": 0, "errors": 0, "failures": [], "versions": {}, "by_target": {}}
t0 = time.monotonic()
def loop(targets):
    n = 0
    while not os.path.exists(stop) and time.monotonic() < bound:
        scheme, path = targets[n % len(targets)]
        n += 1
        at, status, err, body = round(time.monotonic() - t0, 2), 0, None, b""
        try:
            if scheme == "http":
                c = http.client.HTTPConnection("127.0.0.1", 80, timeout=70)
            else:
                c = http.client.HTTPSConnection("127.0.0.1", 443, timeout=70, context=ctx)
            c.request("GET", path, headers={"Host": "localhost", "Connection": "close"})
            r = c.getresponse()
            body, status = r.read(), r.status
            c.close()
        except Exception as exc:
            err = f"{type(exc).__name__}: {exc}"
        key = f"{scheme} {path}"
        with lock:
            res["requests"] += 1
            res["by_target"][key] = res["by_target"].get(key, 0) + 1
            if err or not 200 <= status < 300:
                res["errors" if err else "non_2xx"] += 1
                if len(res["failures"]) < 20:
                    res["failures"].append({"t": at, "target": key, "status": status, "error": err,
                                            "body": body[:300].decode("utf-8", "replace")})
            elif path == "/healthz":
                try:
                    v = json.loads(body).get("deploy_test", "original")
                except ValueError:
                    v = "unparsable"
                seen = res["versions"].setdefault(v, {"n": 0, "first_s": at, "last_s": at})
                seen["n"] += 1
                seen["last_s"] = at
        time.sleep(0.05)  # bounded: ~40 requests a second in all, not every CPU cycle the deploy needs
threads = [threading.Thread(target=loop, args=(t,)) for t in TARGETS]
for t in threads:
    t.start()
for t in threads:
    t.join()
res["seconds"] = round(time.monotonic() - t0, 1)
with open(out + ".tmp", "w") as f:
    json.dump(res, f)
os.rename(out + ".tmp", out)
"""


@contextlib.contextmanager
def load_loop(host, label: str):
    """The load loop on the target for the with-block; its counts land in the yielded dict (printed) at the end."""
    run = f"{DEPLOY}/load-{label}"
    sh(host, f"rm -f {run}.json {run}.stop")
    sh(host, f"setsid -f python3 {DEPLOY}/load.py {run}.json {run}.stop 900 {STATIC} >{run}.log 2>&1 </dev/null")
    counts: dict = {}
    try:
        time.sleep(3)  # requests before the step
        yield counts
        time.sleep(3)  # and after it
    finally:
        sh(host, f"touch {run}.stop")
        wait_in_guest(host, f"[ -s {run}.json ]", 120, f"the load loop's counts ({run}.json)")
        counts.update(json.loads(out(host, f"cat {run}.json")))
        figure(
            f"load loop during {label}: {counts['requests']} requests in {counts['seconds']} s "
            f"({counts['by_target']}), {counts['non_2xx']} non-2xx, {counts['errors']} connection errors; "
            f"versions of /healthz seen: {counts['versions']}"
        )


def assert_nothing_dropped(counts: dict, label: str) -> None:
    assert counts["non_2xx"] == 0 and counts["errors"] == 0, (
        f"{label}: the load loop saw {counts['non_2xx']} non-2xx answers and {counts['errors']} connection errors "
        f"in {counts['requests']} requests; the first: {json.dumps(counts['failures'], indent=1)}"
    )
    assert counts["requests"] >= 20, f"{label}: the load loop ran only {counts['requests']} requests: {counts}"


def served_version(host) -> str:
    r = http(host, "/healthz", scheme="http")
    assert r.status == 200, f"/healthz: {r}"
    return json.loads(r.body).get("deploy_test", "original")


def web_master(host) -> tuple[int, str]:
    """(pid, working directory) of kiln-web's gunicorn master: the release it runs."""
    pid = int(out(host, "cat /run/kiln/gunicorn.pid"))
    return pid, out(host, f"readlink /proc/{pid}/cwd")


def deploy(host, *args: str) -> tuple[int, str, float]:
    """`kiln ARGS` (deploy, rollback): the operator's command, which hands over to kiln-release."""
    t0 = time.monotonic()
    res = sh(host, f"kiln {' '.join(map(shlex.quote, args))}", ok=None, timeout=900)
    return res.rc, res.stdout + res.stderr, time.monotonic() - t0


def web_at_rest(host) -> str:
    """'' when the web is back to its resting state (kiln-web serving, kiln-web-next stopped, nginx's upstream on
    kiln-web's socket), else what is not."""
    st = supervisor_status(host)
    seen = {n: st[n].state if n in st else "missing" for n in ("kiln-web", "kiln-web-next")}
    upstream = out(host, f"grep -v '^#' {UPSTREAM}")
    if (
        seen == {"kiln-web": "RUNNING", "kiln-web-next": "STOPPED"}
        and upstream == f"server unix:{SOCKET} fail_timeout=0;"
    ):
        return ""
    return f"programs {seen}, upstream {upstream!r}"


@pytest.fixture(scope="module")
def releases(host):
    """Three releases built from copies of the running app: GOOD (its /healthz says TOKEN), NO_IMPORT (GOOD whose
    WSGI module imports a module that does not exist), UNHEALTHY (GOOD whose /readyz, the contract's health path,
    answers 503). Afterwards the release current before is current again and they are gone."""
    original = out(host, "kiln-release current")
    assert "-deploy-" not in original, f"current is a release of an earlier run of these tests: {original}"
    previous = out(host, "readlink /srv/kiln/previous || true")
    # The deploys prune (kiln-retention's KILN_RELEASES_KEPT): here none of the releases the suites came with goes.
    sh(
        host,
        f"mkdir -p {KEEP_DROPIN.rsplit('/', 1)[0]} && printf '[Service]\\nEnvironment=KILN_RELEASES_KEPT=50\\n' "
        f"> {KEEP_DROPIN} && systemctl daemon-reload",
    )
    healthz = 'return JsonResponse({"ok": True})'
    sh(
        host,
        f"set -e; rm -rf {DEPLOY}; mkdir -p {DEPLOY}; cp -a /srv/kiln/current/app {DEPLOY}/good; "
        f'sed -i \'s/{healthz}$/return JsonResponse({{"ok": True, "deploy_test": "{TOKEN}"}})/\' '
        f"{DEPLOY}/good/kiln/health.py; grep -q {TOKEN} {DEPLOY}/good/kiln/health.py; "
        f"cp -a {DEPLOY}/good {DEPLOY}/noimport; cp -a {DEPLOY}/good {DEPLOY}/unhealthy; "
        f"echo 'import kiln_test_no_such_module  # {__name__}' >> {DEPLOY}/noimport/kiln/wsgi.py; "
        f"sed -i 's/status=200 if ok else 503/status=503/' {DEPLOY}/unhealthy/kiln/health.py; "
        f"grep -q 'status=503)' {DEPLOY}/unhealthy/kiln/health.py",
    )
    sh(host, f"echo {shlex.quote(base64.b64encode(LOAD.encode()).decode())} | base64 -d > {DEPLOY}/load.py")
    t0 = time.monotonic()
    for src, version in (("good", GOOD), ("noimport", NO_IMPORT), ("unhealthy", UNHEALTHY)):
        sh(host, f"kiln-release build {DEPLOY}/{src} {version}", timeout=900)
    print(f"built {GOOD}, {NO_IMPORT}, {UNHEALTHY} in {time.monotonic() - t0:.0f} s (release {original} was current)")
    yield {"original": original}
    try:
        sh(host, f"touch {JOB_GATE}/release 2>/dev/null || true")  # the deploy test's job, should it still wait
        if out(host, "kiln-release current") != original:
            sh(host, f"kiln-release switch {original}", timeout=900)
        sh(host, f"rm -rf {DEPLOY} {JOB_GATE} /srv/kiln/releases/9.9.*-deploy-*")
        sh(host, f"rm -f /srv/kiln/releases/{original}/.kiln-bad")
        if previous:
            sh(host, f"ln -sfn {previous} /srv/kiln/previous")
    finally:
        sh(host, f"rm -f {KEEP_DROPIN} && systemctl daemon-reload")


def test_a_deploy_serves_the_changed_app_without_dropping_a_request_and_a_running_job_finishes(host, releases):
    assert served_version(host) == "original"
    before = web_master(host)
    # A job that runs until its worker has been asked to stop: the deploy's warm stop of the workers is what it
    # finishes under, however long the deploy takes to get there (a fixed time.sleep could end before it on a slow
    # machine, or hold the deploy long after it). The release file's directory is its own, 0755 explicitly: the
    # target's umask (027) makes DEPLOY 0750, which the app's user, who runs the job, cannot enter.
    gate = JOB_GATE
    sh(host, f"install -d -m 0755 {gate} && rm -f {gate}/release {gate}/seen")
    waits = f"until [ -e {gate}/release ]; do sleep 0.5; done"
    job = jobs.enqueue(host, f'"subprocess.run", ["sh", "-c", "{waits}"]', job_timeout=600)
    assert job["status"] == "started" and job["worker"], f"the job was not started by a worker: {job}"
    # On the target, bounded (600 polls, 5 min): once rq logs the warm stop of the job's own worker (its pid: no
    # earlier line matches), 5 s more, and the worker must still be there, waiting for its job (a stop that killed it
    # would leave the job's work horse to kiln-rqworker's reaping at the worker's next start); then the job may end.
    pid = job["worker"]["pid"]
    sh(
        host,
        "setsid -f sh -c '"
        f'i=0; until grep -qsF "[PID {pid}]: warm shut down requested" /var/log/kiln/worker-*.log; do i=$((i+1)); '
        f"if [ $i -gt 600 ]; then echo no warm stop logged > {gate}/seen; touch {gate}/release; exit 0; fi; "
        f"sleep 0.5; done; sleep 5; if kill -0 {pid}; then echo waited; else echo gone 5 s after its TERM; fi "
        f"> {gate}/seen; touch {gate}/release' </dev/null >/dev/null 2>&1",
    )
    with load_loop(host, "deploy") as counts:
        rc, said, took = deploy(host, "deploy", f"{DEPLOY}/good", GOOD)
        served = [served_version(host) for _ in range(3)]
    print(f"deploy of {GOOD}: rc {rc} in {took:.0f} s\n{said[-2500:]}")
    seen = out(host, f"cat {gate}/seen 2>/dev/null || echo 'not seen yet'")
    print(f"the job's worker (pid {pid}) at the deploy's stop of the workers: {seen}")
    assert seen == "waited", f"the deploy's stop of the job's worker (pid {pid}): {seen}\n{said}"
    assert rc == 0, f"the deploy failed:\n{said}"
    assert served == [TOKEN] * 3, f"after the deploy /healthz says {served}, not the changed app's {TOKEN}"
    assert_nothing_dropped(counts, "deploy")
    assert list(counts["versions"]) == ["original", TOKEN], f"the loop did not see the switch: {counts['versions']}"
    after = web_master(host)
    assert after[0] != before[0] and after[1] == f"/srv/kiln/releases/{GOOD}/app", (
        f"kiln-web's master before {before}, after {after}: not a new master running {GOOD}"
    )
    assert not web_at_rest(host), web_at_rest(host)
    alias = out(host, "grep -h 'alias ' /etc/nginx/snippets/kiln-app.conf")
    assert alias == f"alias /srv/kiln/releases/{GOOD}/static/;", f"nginx serves the static files from: {alias}"
    assert "releases kept:" in said, f"the deploy pruned nothing (no 'releases kept:'):\n{said}"
    final = jobs.wait_final(host, job["id"], 120, want=("finished", "failed", "stopped", "canceled"))
    print(f"job {job['id']} (runs until its worker's warm stop, started on {job['worker']}): {final['status']}")
    assert final["status"] == "finished", f"the job running during the deploy did not finish: {final}\n{said}"
    assert "workers stopped warmly" in said, f"the workers were not restarted by the deploy:\n{said}"
    assert "rqworker" not in out(host, f"ps -o args= -p {pid} || true"), (
        f"the worker that ran the job (pid {pid}) still runs: not restarted on {GOOD}"
    )


@pytest.mark.parametrize(
    ("version", "src", "reason"),
    [
        (NO_IMPORT, "noimport", "does not import"),
        (UNHEALTHY, "unhealthy", "health path /readyz answered 503"),
    ],
    ids=["import-error", "failing-health"],
)
def test_a_broken_release_is_refused_and_the_old_one_serves_on(host, releases, version, src, reason):
    before = web_master(host)
    with load_loop(host, f"refused-{src}") as counts:
        rc, said, took = deploy(host, "deploy", f"{DEPLOY}/{src}", version)
        served = [served_version(host) for _ in range(3)]
    print(f"deploy of {version}: rc {rc} in {took:.0f} s\n{said[-2500:]}")
    assert rc != 0, f"the deploy of a broken release succeeded:\n{said}"
    assert f"deploy of {version} REFUSED" in said and reason in said, f"the reason ({reason!r}) is not named:\n{said}"
    assert out(host, "kiln-release current") == GOOD, "current was switched to the refused release"
    assert served == [TOKEN] * 3, f"after the refused deploy /healthz says {served}, not {TOKEN}"
    assert web_master(host) == before, f"kiln-web was touched: before {before}, after {web_master(host)}"
    assert not web_at_rest(host), web_at_rest(host)
    assert_nothing_dropped(counts, f"refused deploy ({src})")
    assert "bad: not deployed" in out(host, f"kiln-release list | grep -F {version}"), out(host, "kiln-release list")


def test_rollback_restarts_the_previous_release_without_dropping_a_request(host, releases):
    original = releases["original"]
    before = web_master(host)
    with load_loop(host, "rollback") as counts:
        rc, said, took = deploy(host, "rollback")
        served = [served_version(host) for _ in range(3)]
    print(f"rollback: rc {rc} in {took:.0f} s\n{said[-2500:]}")
    assert rc == 0, f"the rollback failed:\n{said}"
    assert out(host, "kiln-release current") == original
    assert served == ["original"] * 3, f"after the rollback /healthz says {served}"
    after = web_master(host)
    assert after[0] != before[0] and after[1] == f"/srv/kiln/releases/{original}/app", (
        f"kiln-web's master before {before}, after {after}: the old code was not started again"
    )
    assert not web_at_rest(host), web_at_rest(host)
    assert_nothing_dropped(counts, "rollback")
    assert list(counts["versions"]) == [TOKEN, "original"], f"the loop did not see the switch: {counts['versions']}"
    assert "bad: rolled back" in out(host, f"kiln-release list | grep -F {GOOD}"), out(host, "kiln-release list")
    again = sh(host, "kiln-release rollback", ok=None)
    assert again.rc != 0 and "marked bad" in again.stderr, f"a second rollback went back to the bad release: {again}"


def test_a_deploy_starts_programs_that_were_stopped(host, releases):
    sh(host, "supervisorctl stop kiln-web 'kiln-worker:*'", timeout=600)
    stopped = {n: p.state for n, p in supervisor_status(host).items()}
    rc, said, took = deploy(host, "deploy", f"{DEPLOY}/good", GOOD)
    print(f"with {stopped}: deploy of {GOOD}: rc {rc} in {took:.0f} s\n{said[-2000:]}")
    assert rc == 0, f"the deploy failed:\n{said}"
    wait_for(
        lambda: all_running(host, ["kiln-web", *worker_names(host)]) and worker_names(host),
        60,
        1,
        "kiln-web and every worker RUNNING",
        evidence=lambda: supervisor_text(host),
    )
    assert served_version(host) == TOKEN
    assert not web_at_rest(host), web_at_rest(host)
    assert "bad" not in out(host, f"kiln-release list | grep -F {GOOD}"), "a good deploy left the release marked bad"


def test_manage_runs_the_current_releases_manage_py_as_the_app_and_passes_its_exit_status(host, releases):
    res = sh(
        host,
        """kiln-release manage shell -c 'import os, sys; print("whoami", os.getuid(), sys.prefix); sys.exit(3)'""",
        ok=None,
    )
    print(f"rc {res.rc}\n{res.stdout}{res.stderr}")
    kiln_uid = out(host, "id -u kiln")
    assert res.rc == 3, f"kiln-release manage did not pass manage.py's exit status 3 on:\n{res.stdout}{res.stderr}"
    assert f"whoami {kiln_uid} /srv/kiln/releases/" in res.stdout, (
        f"not the app's user in a release's venv:\n{res.stdout}"
    )
