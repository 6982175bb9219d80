"""The cluster test of issue 14: one image in roles (KILN_ROLE at first boot; the units per role: the table in
provision/lib/common.sh), proven on a private network of namespaces (tests/cluster/cluster.py), a host per role:

  data 10.77.0.2 (KILN_ROLE=data)   replica 10.77.0.3 (data-replica)   web1 10.77.0.11, web2 10.77.0.12 (web)
  worker 10.77.0.21   lb 10.77.0.5 (HAProxy)
  client 10.77.0.100: curl, the load loop, the port scans, moto's S3 server (the media; the backups)

The data host boots first and backs up (the replica's seed); `kiln role-env web|worker|data-replica` on it gives the
other hosts' overrides. The cluster boots once for the module (fixture `env`); the checks run in this file's order
(web1 is killed, stopped and back before the rolling deploy; the replica's promotion, which stops the data host, last).
`make test-cluster` (root).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import re
import secrets
import shlex
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster import (
    ADDR,
    BACKUP_BUCKET,
    BUCKET,
    FIRSTBOOT_UNITS,
    HOST_SH,
    MOTO_URL,
    PRIVATE_NET,
    PYTHON,
    REPO,
    ROLE,
    ROLE_PORTS,
    ROLE_UNITS,
    S3_KEY,
    Client,
    Cluster,
    HarnessError,
    Host,
    access_lines,
    describe_load,
    figure,
    run,
    say,
    wait_until,
)

LB = f"https://{ADDR['lb']}"
CLIENT = ADDR["client"]
TOKEN = secrets.token_hex(3)  # this run's, in what it writes and asks for
API_USER = "cluster-test"
API_PASSWORD = secrets.token_hex(16)
MANAGED_UNITS = sorted(set().union(*ROLE_UNITS.values()))
MEDIA = (
    f"AWS_STORAGE_BUCKET_NAME={BUCKET}\nAWS_S3_ENDPOINT_URL={MOTO_URL}\nAWS_S3_REGION_NAME=us-east-1\n"
    f"AWS_ACCESS_KEY_ID={S3_KEY}\nAWS_SECRET_ACCESS_KEY={S3_KEY}\n"
)
SITE = f"SITE_URL={LB}\n"
BACKUPS = (
    f"KILN_BACKUP_REPOSITORY=s3:{MOTO_URL}/{BACKUP_BUCKET}/kiln\nKILN_BACKUP_PASSWORD={secrets.token_hex(12)}\n"
    f"KILN_BACKUP_AWS_ACCESS_KEY_ID={S3_KEY}\nKILN_BACKUP_AWS_SECRET_ACCESS_KEY={S3_KEY}\n"
    "KILN_BACKUP_AWS_DEFAULT_REGION=us-east-1\n"
)
RECORDS = "kiln.records_record"  # the reference app's records (app/records)
WEB = (
    f"KILN_TRUSTED_PROXIES={ADDR['lb']}\n"
    f"ALLOWED_HOSTS={ADDR['lb']},{ADDR['web1']},{ADDR['web2']},{ADDR['web3']},localhost,127.0.0.1\n{SITE}"
)
# SIGKILL of nginx and gunicorn in a web host, masters and workers at once (pids from their pid files).
# What a copy of the reference app leaves out (as the nspawn tier's copy does).
SKIP_COPY = ("__pycache__", ".venv", "staticfiles", "collected", "media")
KILL_WEB = (
    "n=$(cat /run/nginx.pid); g=$(cat /run/kiln/gunicorn.pid); "
    'p="$n $(pgrep -P "$n" | xargs) $g $(pgrep -P "$g" | xargs)"; kill -KILL $p; echo $p'
)


@dataclass
class Env:
    cluster: Cluster
    role_env: dict[str, str]  # role -> `kiln role-env ROLE` of the data host
    user: str  # user:password of an API user (Basic auth)
    broken: dict[str, str]  # the hosts that did not come up: what failed (the checks that need them fail)

    def need(self, *names: str) -> None:
        down = {n: self.broken[n] for n in names if n in self.broken}
        assert not down, f"needs hosts that did not come up: {down} (their state: printed at the fixture's setup)"

    def host(self, name: str) -> Host:
        self.need(name)
        return self.cluster.hosts[name]

    @property
    def client(self) -> Client:
        assert self.cluster.client is not None
        return self.cluster.client


def role_env_of(data: Host, role: str) -> str:
    res = data.exec(["/usr/local/sbin/kiln", "role-env", role], timeout=60)
    lines = [line for line in res.stdout.splitlines() if line.strip() and not line.startswith("#")]
    if res.returncode or not lines or not all(re.match(r"[A-Za-z_][A-Za-z0-9_]*=", line) for line in lines):
        shown = re.sub(r"(PASSWORD|SECRET_KEY|://[^:@/]*:)[^@\s]*", r"\1***", res.stdout)
        raise AssertionError(f"`kiln role-env {role}` on the data host: rc {res.returncode}\n{shown}{res.stderr}")
    return "\n".join(lines) + "\n"


def keys(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def sql(host: Host, query: str, timeout: float = 120) -> str:
    """QUERY as root on HOST's own database server (its socket): the rows, tab-separated."""
    res = host.exec(["mariadb", "-N", "-B", "-e", query], timeout=timeout)
    assert res.returncode == 0, f"{host.name}: {query}: rc {res.returncode} {res.stderr}"
    return res.stdout.strip()


def replication(host: Host) -> dict[str, str]:
    """HOST's SHOW SLAVE STATUS (empty: not a replica)."""
    out = host.out("mariadb -e 'SHOW SLAVE STATUS\\G'")
    fields = (line.strip().partition(":") for line in out.splitlines() if ":" in line)
    return {k: v.strip() for k, _, v in fields}


def replicating(host: Host) -> bool:
    r = replication(host)
    return r.get("Slave_IO_Running") == "Yes" and r.get("Slave_SQL_Running") == "Yes"


def caught_up(data: Host, replica: Host) -> tuple[str, float]:
    """The data host's binary log position, once the replica applied it; and the seconds that took."""
    pos = sql(data, "SELECT @@gtid_binlog_pos")
    t0 = time.monotonic()
    waited = sql(replica, f"SELECT MASTER_GTID_WAIT('{pos}', 60)", timeout=90)
    assert waited == "0", f"the replica did not reach the data host's GTID {pos} in 60 s: {replication(replica)}"
    return pos, time.monotonic() - t0


def table_checksums(host: Host) -> dict[str, str]:
    """CHECKSUM TABLE of every table of the app's database on HOST."""
    tables = sql(
        host,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'kiln' "
        "AND table_type = 'BASE TABLE' ORDER BY 1",
    ).split()
    out = sql(host, "CHECKSUM TABLE " + ", ".join(f"kiln.`{t}`" for t in tables)) if tables else ""
    return dict(line.split("\t", 1) for line in out.splitlines())


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    cl = Cluster()
    try:
        cl.start()
        client = cl.client
        assert client is not None

        def web_ready(h: Host) -> None:
            url = f"https://{h.addr}/readyz"
            wait_until(f"{h.name}: GET {url} 200 from the client", lambda: client.curl(url, timeout=5)[0] == 200, 180)

        def worker_ready(h: Host) -> None:
            wait_until(
                f"{h.name}: an rq worker RUNNING",
                lambda: re.search(r"^kiln-worker:\S+\s+RUNNING", h.out("supervisorctl status"), re.M),
                120,
            )

        def lb_ready(h: Host) -> None:
            wait_until(f"lb: GET {LB}/readyz 200", lambda: client.curl(f"{LB}/readyz", timeout=5)[0] == 200, 120)

        def replica_ready(h: Host) -> None:
            wait_until(f"{h.name}: replicating", lambda: replicating(h), 60)

        def ready(h: Host) -> None:
            {"web": web_ready, "worker": worker_ready, "lb": lb_ready, "data-replica": replica_ready}[ROLE[h.name]](h)

        cl.add("data", f"KILN_ROLE=data\nKILN_PRIVATE_NET={PRIVATE_NET}\n" + BACKUPS)
        cl.boot(["data"])
        try:
            # The backup the replica is seeded from (a data host's dump carries its replication position).
            backup = cl.hosts["data"].exec(["/usr/local/sbin/kiln", "backup"], timeout=300)
            assert backup.returncode == 0, f"kiln backup on the data host: {backup.stdout}{backup.stderr}"
            role_env = {role: role_env_of(cl.hosts["data"], role) for role in ("web", "worker", "data-replica")}
        except AssertionError:
            print(cl.diagnose(["data"]), flush=True)
            raise
        say(
            f"kiln role-env on the data host: web {sorted(keys(role_env['web']))}, "
            f"worker {sorted(keys(role_env['worker']))}"
        )
        cl.add("web1", role_env["web"] + WEB + MEDIA + "KILN_RELEASE_COMMANDS=1\n")
        cl.add("web2", role_env["web"] + WEB + MEDIA)
        cl.add("worker", role_env["worker"] + SITE + MEDIA)
        cl.add("lb", f"KILN_ROLE=lb\nKILN_LB_BACKENDS={ADDR['web1']},{ADDR['web2']}\n")
        cl.add("replica", role_env["data-replica"])
        # Not strict: a host that does not come up fails the checks that need it, the others still run.
        broken = cl.boot(["web1", "web2", "worker", "lb", "replica"], ready, strict=False)
        if broken:
            print(cl.diagnose(list(broken)), flush=True)
        up = len(ROLE) - len(broken)
        took = time.monotonic() - cl.hosts["data"].times["boot started"]
        figure(f"cluster: {up} of {len(ROLE)} hosts up in {took:.1f}s")
        assert "web1" not in broken, f"web1 did not come up: {broken['web1']}"
        # An API user, made as an operator makes one: manage.py as the app's user with the instance's settings.
        manage = (
            "runuser -u kiln -- env -i PATH=/usr/bin:/bin HOME=/srv/kiln LANG=C.UTF-8 KILN_ENV_FILE=/etc/kiln/kiln.env"
        )
        res = cl.hosts["web1"].exec(
            [
                *manage.split(),
                f"DJANGO_SUPERUSER_PASSWORD={API_PASSWORD}",
                "/srv/kiln/current/venv/bin/python",
                "/srv/kiln/current/app/manage.py",
                *f"createsuperuser --noinput --username {API_USER} --email ops@example.com".split(),
            ],
            timeout=120,
        )
        assert res.returncode == 0, f"createsuperuser on web1: {res.stdout}{res.stderr}"
        yield Env(cl, role_env, f"{API_USER}:{API_PASSWORD}", broken)
    finally:
        cl.close()


def diag(env: Env, *names: str) -> str:
    return "\n" + env.cluster.diagnose(names)


def export(env: Env, web: str) -> str:
    """POST /api/exports/ through a web host: the job's id."""
    status, body = env.client.json(
        f"https://{ADDR[web]}/api/exports/",
        method="POST",
        auth=env.user,
        data="",
        content_type="application/x-www-form-urlencoded",
    )
    assert status == 202 and isinstance(body, dict) and body.get("job_id"), (
        f"POST /api/exports/ on {web}: {status} {body}"
    )
    return str(body["job_id"])


def export_status(env: Env, web: str, job_id: str) -> str:
    status, body = env.client.json(f"https://{ADDR[web]}/api/exports/{job_id}/", auth=env.user)
    return str(body.get("status")) if status == 200 and isinstance(body, dict) else f"HTTP {status}: {str(body)[:120]}"


def test_a_record_written_through_web1_is_read_through_web2(env: Env) -> None:
    env.need("web1", "web2")
    title = f"cluster {TOKEN}"
    data = json.dumps({"title": title, "body": "written through web1"})
    status, body = env.client.json(f"https://{ADDR['web1']}/api/records/", method="POST", auth=env.user, data=data)
    assert status == 201 and isinstance(body, dict), f"POST /api/records/ on web1: {status} {body}"
    status, got = env.client.json(f"https://{ADDR['web2']}/api/records/{body['id']}/")
    assert status == 200 and isinstance(got, dict) and got.get("title") == title, (
        f"record {body['id']} written through web1, read through web2: {status} {got}"
    )


def test_a_job_enqueued_through_web2_runs_on_the_worker_host(env: Env) -> None:
    env.need("web2", "worker")
    job_id = export(env, "web2")
    seen = wait_until(
        f"export job {job_id} finished",
        lambda: (s := export_status(env, "web2", job_id)) in ("finished", "failed") and s,
        120,
    )
    ran_on = {
        name: env.host(name).out(f"grep -l -F -- {job_id} /var/log/kiln/worker-*.log 2>/dev/null || true")
        for name in ("worker", "web1", "web2")
    }
    assert seen == "finished" and ran_on["worker"] and not ran_on["web1"] and not ran_on["web2"], (
        f"job {job_id}: {seen}; worker logs naming it: {ran_on}" + diag(env, "worker")
    )


@pytest.mark.parametrize("name", list(ROLE))
def test_each_role_runs_only_its_units(env: Env, name: str) -> None:
    host, role = env.host(name), ROLE[name]
    out = host.out(
        f"for u in {' '.join(MANAGED_UNITS)}; do "
        'echo "$u|$(systemctl is-enabled "$u" 2>/dev/null || true)|$(systemctl is-active "$u" 2>/dev/null || true)"; '
        "done; echo '-- supervisor'; supervisorctl status 2>/dev/null || true"
    )
    units, _, programs = out.partition("-- supervisor")
    wrong = []
    for line in units.strip().splitlines():
        unit, enabled, active = [*line.split("|"), "", ""][:3]
        want = unit in ROLE_UNITS[role]
        if want and (enabled != "enabled" or active != "active"):
            wrong.append(f"{unit}: {enabled or 'not-found'}/{active}, wanted enabled/active")
        if not want and (enabled in ("enabled", "enabled-runtime") or active == "active"):
            wrong.append(f"{unit}: {enabled or 'not-found'}/{active}, wanted off (not the {role} role's)")
    running = set(re.findall(r"^(\S+)\s+RUNNING", programs, re.M))
    web_running = "kiln-web" in running
    workers_running = sorted(p for p in running if p.startswith("kiln-worker:"))
    if role == "web" and (not web_running or workers_running):
        wrong.append(
            f"supervisor: kiln-web running {web_running}, rq workers running {workers_running}: wanted kiln-web only"
        )
    if role == "worker" and (web_running or not workers_running):
        wrong.append(
            f"supervisor: kiln-web running {web_running}, rq workers running {workers_running}: wanted workers only"
        )
    assert not wrong, f"{name} (role {role}):\n  " + "\n  ".join(wrong) + f"\n{out}"


@pytest.fixture(scope="module")
def port_scans(env: Env) -> dict[str, dict[int, str]]:
    """Every host that came up, scanned from the client at once: each scan waits out its 2 s timeout on the dropped
    ports, so one host after the other took 2 s apiece."""
    up = [name for name in ROLE if name not in env.broken]
    with concurrent.futures.ThreadPoolExecutor(max(1, len(up))) as pool:
        return dict(zip(up, pool.map(lambda name: env.client.scan(ADDR[name]), up), strict=True))


@pytest.mark.parametrize("name", list(ROLE))
def test_each_role_exposes_only_its_ports(env: Env, port_scans: dict[str, dict[int, str]], name: str) -> None:
    env.need(name)
    scan = port_scans[name]
    reachable = {port for port, state in scan.items() if state == "open"}
    figure(f"port scan of {name} ({ROLE[name]}) from the client: " + " ".join(f"{p}:{s}" for p, s in scan.items()))
    assert reachable == ROLE_PORTS[ROLE[name]], (
        f"{name} (role {ROLE[name]}): reachable {sorted(reachable)}, wanted {sorted(ROLE_PORTS[ROLE[name]])}"
    )
    # ...and the others dropped by the firewall (no answer), not only unserved: a refused port is one ufw lets through
    let_through = sorted(port for port, state in scan.items() if state not in ("open", "timeout"))
    assert not let_through, f"{name} (role {ROLE[name]}): the firewall lets through {let_through}: {scan}"


def test_the_client_address_reaches_web1s_log_and_django(env: Env) -> None:
    env.need("lb")
    tag = f"who{TOKEN}"
    statuses = [env.client.curl(f"{LB}/api/records/?who={tag}&n={n}")[0] for n in range(8)]
    web1 = env.host("web1")
    nginx = access_lines(web1, tag)
    # Django's REMOTE_ADDR: gunicorn's access log (/var/log/kiln/web.log) prints the WSGI environ's REMOTE_ADDR after
    # the response, the dict Django's request.META is (a middleware's change shows there too).
    django = access_lines(web1, tag, "/var/log/kiln/web.log")
    seen_nginx = sorted({line.split()[0] for line in nginx})
    seen_django = sorted({line.split()[0] for line in django})
    assert nginx and seen_nginx == [CLIENT] and seen_django == [CLIENT], (
        f"8 requests from {CLIENT} through the lb ({statuses}): web1's nginx logged {len(nginx)} from {seen_nginx}, "
        f"gunicorn (Django's REMOTE_ADDR) {len(django)} from {seen_django}; the lb is {ADDR['lb']}\n"
        + "\n".join((nginx + django)[:4])
    )


def test_the_data_host_lets_the_roles_in_over_tls_only(env: Env) -> None:
    """The cluster's database users log in over TLS only (REQUIRE SSL): web2's login with TLS is encrypted, the same
    login without it is refused; the replica replicates over TLS."""
    env.need("web2", "replica")
    web2, replica = env.host("web2"), env.host("replica")
    password = re.search(r"://kiln_web:([^@]+)@", env.role_env["web"])
    assert password and "ssl-mode=REQUIRED" in env.role_env["web"], "`kiln role-env web` gives no TLS DATABASE_URL"

    def login(*tls: str) -> tuple[int, str]:
        query = ["-N", "-B", "-e", "SHOW STATUS LIKE 'Ssl_version'"]
        res = web2.exec(
            ["env", f"MYSQL_PWD={password[1]}", "mariadb", *tls, "-h", ADDR["data"], "-u", "kiln_web", *query]
        )
        return res.returncode, (res.stdout + res.stderr).strip()

    with_tls, without = login("--ssl", "--skip-ssl-verify-server-cert"), login("--skip-ssl")
    ssl = replication(replica).get("Master_SSL_Allowed")
    figure(f"kiln_web from web2 to the data host: with TLS {with_tls}; without {without}; replication TLS {ssl}")
    assert with_tls[0] == 0 and re.search(r"Ssl_version\s+TLSv1\.[23]", with_tls[1]), with_tls
    assert without[0] != 0 and "Access denied" in without[1], f"a login without TLS: {without}"
    assert ssl == "Yes", f"the replica's replication: {replication(replica)}"


def test_restarting_the_queue_redis_loses_no_queued_job(env: Env) -> None:
    env.need("web2")
    worker, data = env.host("worker"), env.host("data")
    worker.exec("supervisorctl stop 'kiln-worker:*'", check=True)
    try:
        jobs = [export(env, "web2") for _ in range(5)]
        before = [export_status(env, "web2", j) for j in jobs]
        res = data.exec(
            "systemctl restart redis-server@queue.service && systemctl is-active redis-server@queue.service"
        )
        assert res.returncode == 0, f"restart of the queue Redis on the data host: {res.stdout}{res.stderr}" + diag(
            env, "data"
        )
    finally:
        worker.exec("supervisorctl start 'kiln-worker:*'")
    deadline = time.monotonic() + 180
    after = before
    while time.monotonic() < deadline:
        after = [export_status(env, "web2", j) for j in jobs]
        if all(s in ("finished", "failed") for s in after):
            break
        time.sleep(2)
    figure(f"queue Redis restarted with {len(jobs)} jobs queued (workers stopped): before {before}, after {after}")
    assert all(s == "queued" for s in before) and all(s == "finished" for s in after), (
        f"jobs {jobs}: before the restart {before}, after {after}" + diag(env, "worker", "data")
    )


def test_stopping_web1_costs_at_most_the_requests_in_flight(env: Env) -> None:
    """Under a load loop through the lb: SIGKILL of web1's nginx and gunicorn, then a clean stop of web1 (its
    poweroff). Each event's budget: the loop's requests in flight just before or just after it, the larger."""
    env.need("lb")
    web1, web2 = env.host("web1"), env.host("web2")
    tag = f"loop{TOKEN}"
    loop = env.client.load(f"{LB}/api/records/?loop={tag}", concurrency=4, max_seconds=120)
    killed, stop_secs = "", 0.0
    try:
        wait_until(
            "both web hosts serve the loop", lambda: access_lines(web1, tag) and access_lines(web2, tag), 30, 0.5
        )
        time.sleep(2)
        loop.mark("before the kill")
        killed = web1.out(KILL_WEB)
        loop.mark("after the kill")
        time.sleep(8)  # HAProxy's checks (1 s, fall 2) take web1 out; supervisor starts gunicorn again
        loop.mark("before the clean stop")
        stop_secs = web1.stop()
        loop.mark("after the clean stop")
        time.sleep(3)
    finally:
        r = loop.finish()
    marks = r.get("marks", [])
    budget = sum(max(a["in_flight"], b["in_flight"]) for a, b in zip(marks[::2], marks[1::2], strict=False))
    figure(
        f"web1 killed (pids {killed}), then stopped ({stop_secs:.1f}s), under load through the lb: {describe_load(r)}"
    )
    assert r.get("requests", 0) > 0 and len(marks) == 4 and r.get("errors", 1) <= budget, (
        f"errors {r.get('errors')} > the requests in flight at the kill and at the stop ({budget}): "
        f"{describe_load(r)}; errors at (s): {r.get('error_times', [])[:20]}"
    )


def test_web1_receives_traffic_again_after_it_returns(env: Env) -> None:
    """web1 back (a fresh first boot of the same host, stopped by the test above): the lb sends it requests again."""
    env.need("lb")
    web1, web2 = env.host("web1"), env.host("web2")
    if web1.alive():  # the test above did not get to stop it
        web1.stop()
    web1.boot()
    state = web1.wait_first_boot()
    assert state == "done", f"web1's first boot again: {state}" + diag(env, "web1")
    url = f"https://{web1.addr}/readyz"
    wait_until("web1: /readyz 200 again", lambda: env.client.curl(url, timeout=5)[0] == 200, 180)
    tag = f"back{TOKEN}"
    loop = env.client.load(f"{LB}/api/records/?loop={tag}", concurrency=2, max_seconds=30, pause=0.05)
    with contextlib.suppress(HarnessError):  # the counts below say what was seen
        wait_until("web1 in the loop's traffic", lambda: len(access_lines(web1, tag)) >= 5, 25, 1)
    r = loop.finish()
    lines = {h.name: len(access_lines(h, tag)) for h in (web1, web2)}
    figure(f"web1 back (first boot {web1.times['first boot']:.1f}s): {describe_load(r)}; served by {lines}")
    assert lines["web1"] > 0 and r.get("errors", 1) == 0, f"after web1 returned: {describe_load(r)}; lines {lines}"


@dataclass
class Refused:
    state: str  # the first boot's: "failed: UNITS" when it refused
    journal: str  # the first-boot units' journal
    services: str  # nginx's and supervisor's states, kiln-web's
    https: tuple[int, str]  # GET /readyz from the client
    shown: str  # diag() of the host, for a failure's message


def boot_refused(env: Env, name: str, overrides: str) -> Refused:
    """A short-lived web host with OVERRIDES booted, looked at once its first boot ended, and stopped."""
    host = env.cluster.add(name, overrides)
    try:
        host.boot()
        state = host.wait_first_boot(240)
        return Refused(
            state,
            host.out(f"journalctl -b --no-pager -o cat -u '{FIRSTBOOT_UNITS}'"),
            host.out("systemctl is-active nginx.service supervisor.service; supervisorctl status kiln-web 2>&1; true"),
            env.client.curl(f"https://{host.addr}/readyz", timeout=5),
            diag(env, name),
        )
    finally:
        host.stop()


def assert_serves_nothing(name: str, r: Refused) -> None:
    assert r.state.startswith("failed"), f"{name}'s first boot: {r.state}" + r.shown
    assert "active" not in r.services.split() and "RUNNING" not in r.services and r.https[0] != 200, (
        f"{name} serves anyway: nginx, supervisor, kiln-web {r.services.split()}, GET /readyz {r.https}"
    )


def test_a_web_host_refuses_a_data_host_it_cannot_authenticate_to(env: Env) -> None:
    env.need("data")
    wrong = f"wrong-{TOKEN}"
    overrides, n = re.subn(
        r"^(DATABASE_URL=mysql://[^:/@]+:)[^@]*@", rf"\g<1>{wrong}@", env.role_env["web"], flags=re.M
    )
    assert n == 1, f"no DATABASE_URL with a password in `kiln role-env web`: {sorted(keys(env.role_env['web']))}"
    r = boot_refused(env, "web3", overrides + WEB + MEDIA)
    said = [line for line in r.journal.splitlines() if re.search(rf"{re.escape(ADDR['data'])}(?![0-9])", line)]
    figure(f"web3 with a wrong database password: first boot {r.state}; said: {said[-1] if said else '-'}")
    assert_serves_nothing("web3", r)
    assert said, f"no first boot message names the data host {ADDR['data']}:\n{r.journal[-3000:]}"
    assert wrong not in r.journal, "the wrong password is shown in the journal (it must be redacted)"


def test_a_web_host_without_shared_media_refuses_to_start(env: Env) -> None:
    """A web host whose overrides do not put the app's uploads on S3 (the contract's shared-media key,
    AWS_STORAGE_BUCKET_NAME for the reference app): its first boot stops naming the key, and it serves nothing."""
    env.need("data")
    r = boot_refused(env, "web4", env.role_env["web"] + WEB)
    said = [line for line in r.journal.splitlines() if "AWS_STORAGE_BUCKET_NAME" in line]
    figure(f"web4 without shared media: first boot {r.state}; said: {said[-1][:300] if said else '-'}")
    assert_serves_nothing("web4", r)
    assert said, f"no first boot message names AWS_STORAGE_BUCKET_NAME (shared-media):\n{r.journal[-3000:]}"


def test_a_rolling_deploy_serves_the_changed_app_from_both_web_hosts_without_a_failed_request(
    env: Env, tmp_path: Path
) -> None:
    """A release artifact of a changed app (make release, its /healthz says this run's token) rolled across the
    cluster with tools/kiln-fleet (each web host drained at the lb, deployed, gated, put back; then the worker), the
    way an operator runs it over SSH (here --via host.sh sh: a shell in each container), under a load loop through the
    lb: no request fails, both web hosts serve the new release, the worker runs it."""
    env.need("web1", "web2", "worker", "lb")
    web1, web2, worker, lb = (env.host(n) for n in ("web1", "web2", "worker", "lb"))
    token = f"rolled-{TOKEN}"
    src = tmp_path / "app"
    shutil.copytree(REPO / "app", src, ignore=shutil.ignore_patterns(*SKIP_COPY))
    health = src / "kiln" / "health.py"
    text = health.read_text()
    changed = text.replace(
        'return JsonResponse({"ok": True})', f'return JsonResponse({{"ok": True, "deploy_test": "{token}"}})'
    )
    assert changed != text, f"cannot change the copy's /healthz ({health})"
    health.write_text(changed)
    made = run(
        [str(REPO / "packer/scripts/make-release.sh"), "debian-13", str(src), str(tmp_path / "release")], timeout=900
    )
    artifact = made.stdout.strip().splitlines()[-1]
    tag = f"roll{TOKEN}"
    loop = env.client.load(f"{LB}/api/records/?loop={tag}", concurrency=4, max_seconds=600)
    t0 = time.monotonic()
    try:
        fleet = run(
            [
                *(PYTHON, str(REPO / "tools/kiln-fleet"), "deploy", artifact, "--lb", str(lb.leader)),
                *("--web", f"web1={web1.leader}", "--web", f"web2={web2.leader}", "--worker", str(worker.leader)),
                *("--via", f"{HOST_SH} sh", "--sudo", ""),
            ],
            check=False,
            timeout=900,
        )
    finally:
        r = loop.finish()
    secs = time.monotonic() - t0
    served = {h.name: env.client.json(f"https://{h.addr}/healthz")[1] for h in (web1, web2)}
    current = {h.name: h.out("readlink /srv/kiln/current").strip() for h in (web1, web2, worker)}
    lines = {h.name: len(access_lines(h, tag)) for h in (web1, web2)}
    figure(f"rolling deploy with kiln-fleet ({secs:.0f}s) under load through the lb: {describe_load(r)}; {lines}")
    assert fleet.returncode == 0, f"kiln-fleet: rc {fleet.returncode}\n{fleet.stdout[-4000:]}{fleet.stderr[-2000:]}"
    assert all(isinstance(b, dict) and b.get("deploy_test") == token for b in served.values()), (
        f"/healthz after the rolling deploy: {served}"
    )
    assert len(set(current.values())) == 1, f"current releases: {current}"
    assert r.get("requests", 0) > 0 and r.get("errors", 1) == 0, f"during the rolling deploy: {describe_load(r)}"


def test_the_replica_has_every_committed_record(env: Env) -> None:
    """Records written through the lb (both web hosts), and everything the tests before wrote: once the replica has
    applied the data host's binary log position, every table of the app's database has the same checksum on both;
    the replica refuses the app's writes (read-only) to the web role's user, whom it lets in."""
    env.need("data", "replica", "lb")
    data, replica, web2 = env.host("data"), env.host("replica"), env.host("web2")
    written = []
    for n in range(20):
        body = json.dumps({"title": f"replicated {TOKEN} {n}", "body": "through the lb"})
        status, got = env.client.json(f"{LB}/api/records/", method="POST", auth=env.user, data=body)
        assert status == 201 and isinstance(got, dict), f"POST /api/records/ through the lb: {status} {got}"
        written.append(got["id"])
    pos, lag = caught_up(data, replica)
    want, have = table_checksums(data), table_checksums(replica)
    rows = sql(replica, f"SELECT COUNT(*) FROM {RECORDS}")
    figure(
        f"replica: {len(want)} tables, {rows} records, the same checksums as the data host's at GTID {pos} "
        f"(applied {lag:.2f}s after the last write); {replication(replica).get('Seconds_Behind_Master')} s behind"
    )
    assert want and have == want, f"checksums differ: data {want}, replica {have}"
    assert sql(replica, f"SELECT COUNT(*) FROM {RECORDS} WHERE id IN ({','.join(map(str, written))})") == "20"
    password = re.search(r"://kiln_web:([^@]+)@", env.role_env["web"])
    assert password, "no kiln_web password in `kiln role-env web`"
    probe = web2.exec(
        [
            "env",
            f"MYSQL_PWD={password[1]}",
            "mariadb",
            "--ssl",
            "--skip-ssl-verify-server-cert",
            "-h",
            ADDR["replica"],
            "-u",
            "kiln_web",
            "kiln",
            "-e",
            f"CREATE TABLE ro_probe_{TOKEN} (i INT)",
        ]
    )
    assert probe.returncode != 0 and "read-only" in probe.stderr, (
        f"the web role's user writing to the replica: rc {probe.returncode} {probe.stdout}{probe.stderr}"
    )


def kiln_status(host: Host) -> dict:
    """`kiln status --json` on HOST, with its exit status as "rc"."""
    res = host.exec(["/usr/local/sbin/kiln", "status", "--json"], timeout=120)
    try:
        return {**json.loads(res.stdout), "rc": res.returncode}
    except ValueError:
        raise AssertionError(
            f"kiln status --json on {host.name}: rc {res.returncode}\n{res.stdout}{res.stderr}"
        ) from None


def test_backups_run_from_the_replica_while_it_replicates(env: Env) -> None:
    """The replica backs up; the data host's run leaves it to the replica while one is connected. A replica that
    stopped replicating refuses to back up (naming it), and the data host then backs up itself; `kiln status` shows
    replication on both, and a stopped one as a problem (exit 3)."""
    env.need("data", "replica")
    data, replica = env.host("data"), env.host("replica")
    running, primary = kiln_status(replica), kiln_status(data)
    assert running["replication"].get("Slave_IO_Running") == "Yes" and running["problems"] == [], (
        f"kiln status on the replicating replica: {running}" + diag(env, "replica")
    )
    assert primary["replication"].get("replicas") == ADDR["replica"] and primary["problems"] == [], (
        f"kiln status on the data host: {primary}" + diag(env, "data")
    )
    on_replica = replica.exec(["/usr/local/sbin/kiln", "backup"], timeout=300)
    on_data = data.exec(["/usr/local/sbin/kiln-backup", "backup"], timeout=300)
    said = (on_replica.stdout + on_replica.stderr).strip().splitlines()
    figure(
        f"backup on the replica: rc {on_replica.returncode}, {said[-2:]}; on the data host: {on_data.stdout.strip()}"
    )
    assert on_replica.returncode == 0 and re.search(r"snapshot [0-9a-f]{8,}", on_replica.stdout), (
        f"kiln backup on the replica: rc {on_replica.returncode}\n{on_replica.stdout}{on_replica.stderr}"
    )
    assert on_data.returncode == 0 and f"replica ({ADDR['replica']}) takes the backups" in on_data.stdout, (
        f"kiln-backup on the data host with a replica: rc {on_data.returncode}\n{on_data.stdout}{on_data.stderr}"
    )
    sql(replica, "STOP SLAVE")
    try:
        wait_until("the data host sees no replica", lambda: not sql(data, "SHOW SLAVE HOSTS"), 60)
        stopped = replica.exec(["/usr/local/sbin/kiln-backup", "backup"], timeout=300)
        alone = data.exec(["/usr/local/sbin/kiln-backup", "backup"], timeout=300)
        halted = kiln_status(replica)
    finally:
        sql(replica, "START SLAVE")
    said = [p for p in halted["problems"] if p.startswith(f"replication from {ADDR['data']}")]
    figure(
        f"kiln status: the data host rc {primary['rc']} {primary['problems']}; the replica replicating rc "
        f"{running['rc']} {running['problems']}, stopped rc {halted['rc']}: {said}"
    )
    assert halted["rc"] == 3 and said, f"kiln status on a stopped replica: rc {halted['rc']}, {halted['problems']}"
    figure(f"replication stopped: the replica's backup rc {stopped.returncode}; the data host's rc {alone.returncode}")
    assert stopped.returncode != 0 and "does not replicate" in stopped.stdout + stopped.stderr, (
        f"a stopped replica's backup: rc {stopped.returncode}\n{stopped.stdout}{stopped.stderr}"
    )
    assert alone.returncode == 0 and re.search(r"snapshot [0-9a-f]{8,}", alone.stdout), (
        f"the data host's backup without a replica: rc {alone.returncode}\n{alone.stdout}{alone.stderr}"
    )
    wait_until("the replica replicates again", lambda: replicating(replica), 60)


def test_promoting_the_replica_makes_it_the_data_host(env: Env) -> None:
    """The data host gone (stopped), `kiln promote` on the replica: writable, the data role's units running, and a web
    host pointed at it (`kiln role-env web` there, `kiln reconfigure`) reads a record written before and writes."""
    env.need("data", "replica", "web2")
    data, replica, web2 = env.host("data"), env.host("replica"), env.host("web2")
    title = f"before the promotion {TOKEN}"
    status, got = env.client.json(
        f"https://{ADDR['web2']}/api/records/",
        method="POST",
        auth=env.user,
        data=json.dumps({"title": title, "body": "written through web2"}),
    )
    assert status == 201 and isinstance(got, dict), f"POST /api/records/ on web2: {status} {got}"
    caught_up(data, replica)
    data.stop()
    t0 = time.monotonic()
    promoted = replica.exec(["/usr/local/sbin/kiln", "promote"], timeout=600)
    promote_secs = time.monotonic() - t0
    assert promoted.returncode == 0, (
        f"kiln promote: rc {promoted.returncode}\n{promoted.stdout}{promoted.stderr}" + diag(env, "replica")
    )
    units = replica.out(f"systemctl is-active {' '.join(sorted(ROLE_UNITS['data']))}").split()
    assert (
        sql(replica, "SELECT @@read_only") == "0"
        and units == ["active"] * len(ROLE_UNITS["data"])
        and not replication(replica)
    ), (
        f"after kiln promote: read_only {sql(replica, 'SELECT @@read_only')}, units {units}, "
        f"replication {replication(replica)}"
    )
    new_env = role_env_of(replica, "web")
    assert keys(new_env)["SECRET_KEY"] == keys(env.role_env["web"])["SECRET_KEY"], "the promoted host's SECRET_KEY"
    assert f"@{ADDR['replica']}:3306/" in keys(new_env)["DATABASE_URL"], "role-env web names the promoted host"
    web2.exec(f"printf %s {shlex.quote(new_env + WEB + MEDIA)} > /etc/kiln/overrides.env", check=True)
    t0 = time.monotonic()
    reconf = web2.exec(["/usr/local/sbin/kiln", "reconfigure"], timeout=600)
    reconf_secs = time.monotonic() - t0
    assert reconf.returncode == 0, f"kiln reconfigure on web2: rc {reconf.returncode}\n{reconf.stdout}{reconf.stderr}"
    url = f"https://{ADDR['web2']}"
    wait_until("web2: /readyz 200 against the promoted host", lambda: env.client.curl(f"{url}/readyz")[0] == 200, 60)
    status, old = env.client.json(f"{url}/api/records/{got['id']}/")
    status_new, new = env.client.json(
        f"{url}/api/records/",
        method="POST",
        auth=env.user,
        data=json.dumps({"title": f"after the promotion {TOKEN}", "body": "written through web2"}),
    )
    figure(
        f"promotion: kiln promote {promote_secs:.1f}s (data host stopped), web2 reconfigured {reconf_secs:.1f}s; "
        f"a record from before: {status}, a new one: {status_new}"
    )
    assert status == 200 and isinstance(old, dict) and old.get("title") == title, f"record {got['id']}: {status} {old}"
    assert status_new == 201 and isinstance(new, dict), f"POST after the promotion: {status_new} {new}"
    assert sql(replica, f"SELECT COUNT(*) FROM {RECORDS} WHERE id = {int(new['id'])}") == "1"
