"""A freshly booted Kiln server: packages, services, supervisor programs, sockets, file modes, users."""

import re

import pytest

from kilnlib import (
    DB_SERVER_PACKAGE,
    DB_SERVER_PROCESS,
    FIRSTBOOT_UNITS,
    GUNICORN_PID,
    SERVICES,
    SOCKET,
    app_processes,
    env_file,
    journal,
    out,
    supervisor_text,
    unit_evidence,
    unit_state,
    wait_for,
    worker_names,
)

PACKAGES = ["nginx", DB_SERVER_PACKAGE, "redis-server", "supervisor", "python3-venv", "openssl", "curl"]


@pytest.mark.parametrize("pkg", PACKAGES)
def test_package_is_installed(host, pkg):
    assert host.package(pkg).is_installed, host.run(f"dpkg -l {pkg} 2>&1").stdout


@pytest.mark.parametrize("unit", SERVICES)
def test_service_is_enabled_and_running(host, unit):
    # first boot (kiln-firstboot) may still be finishing right after `vagrant up`
    wait_for(
        lambda: host.run(f"systemctl is-active {unit}").stdout.strip() == "active",
        120,
        2,
        f"{unit} active",
        evidence=lambda: unit_evidence(host, unit),
    )
    enabled = host.run(f"systemctl is-enabled {unit}").stdout.strip()
    assert enabled in ("enabled", "enabled-runtime", "alias"), (
        f"{unit} is-enabled={enabled}\n{unit_evidence(host, unit)}"
    )


@pytest.mark.parametrize("unit", FIRSTBOOT_UNITS)
def test_firstboot_stage_has_completed(host, unit):
    res = host.run(f"systemctl show -p ActiveState,Result,ExecMainStatus {unit}.service")
    assert "Result=success" in res.stdout, res.stdout + unit_evidence(host, unit)
    assert host.file("/var/lib/kiln/firstboot.done").exists


def test_supervisor_programs_are_running(host):
    # kiln-web-next runs only during a deploy (kiln-release): stopped at rest
    def running():
        st = host.run("supervisorctl status").stdout
        lines = {ln.split()[0]: ln for ln in st.splitlines() if ln.strip()}
        return (
            st
            if "kiln-web" in lines
            and any(n.startswith("kiln-worker") for n in lines)
            and all(" RUNNING " in ln for n, ln in lines.items() if n != "kiln-web-next")
            and " STOPPED " in lines.get("kiln-web-next", "")
            else None
        )

    wait_for(running, 90, 2, "kiln-web and every kiln-worker RUNNING", evidence=lambda: supervisor_text(host))
    assert len(worker_names(host)) >= 1, supervisor_text(host)


def _listeners(host):
    return host.run("ss -Hltnp").stdout


@pytest.mark.parametrize("port", [80, 443])
def test_nginx_listens_on_all_addresses(host, port):
    ss = _listeners(host)
    addrs = {ln.split()[3].rsplit(":", 1)[0] for ln in ss.splitlines() if ln.split()[3].endswith(f":{port}")}
    assert addrs & {"0.0.0.0", "*"}, f"port {port} IPv4 wildcard missing; listeners: {addrs}\n{ss}"
    assert all("nginx" in ln for ln in ss.splitlines() if ln.split()[3].endswith(f":{port}")), ss


@pytest.mark.parametrize("port,name", [(3306, DB_SERVER_PROCESS), (6379, "redis-server"), (6380, "redis-server")])
def test_backend_listens_on_loopback_only(host, port, name):
    ss = _listeners(host)
    lines = [ln for ln in ss.splitlines() if ln.split()[3].rsplit(":", 1)[-1] == str(port)]
    addrs = {ln.split()[3].rsplit(":", 1)[0] for ln in lines}
    if port == 3306 and not lines:
        return  # skip-networking: socket only, even better
    assert lines, f"nothing listens on {port}\n{ss}"
    assert addrs <= {"127.0.0.1", "[::1]"}, f"port {port} listens beyond loopback: {addrs}\n{ss}"
    assert all(f'(("{name}",' in ln for ln in lines), f"not {name} on {port}:\n" + "\n".join(lines)


def test_mariadb_tls_uses_the_per_boot_ec_certificate(host):
    """MariaDB >= 11.4 makes an RSA certificate at every start when it has none (~12 s under TCG); the kiln-tls.conf
    drop-in gives it an EC one made once per boot in /run/mysqld, which the server loaded (the client session that
    reads this goes over the unix socket; no account may log in over TCP: the app's is kiln@localhost)."""
    version = host.run("mariadbd --version").stdout
    m = re.search(r"Ver (\d+)\.(\d+)", version)
    if not m or (int(m.group(1)), int(m.group(2))) < (11, 4):
        pytest.skip(f"not MariaDB >= 11.4 (no certificate made at start): {version.strip() or 'no mariadbd'}")
    cert = "/run/mysqld/kiln-tls.crt"
    query = "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('have_ssl', 'ssl_cert', 'ssl_key')"
    got = dict(line.split("\t", 1) for line in out(host, f'mariadb -N -B -e "{query}"').splitlines() if "\t" in line)
    assert got.get("have_ssl") == "YES" and got.get("ssl_cert") == cert, f"server TLS settings: {got}"
    key = host.file(got.get("ssl_key", ""))
    assert key.exists and key.user == "mysql" and key.mode == 0o600, f"{key.path}: {key.user} {oct(key.mode)}"
    pubkey = out(host, f"openssl x509 -in {cert} -noout -text | grep 'Public Key Algorithm'")
    assert "id-ecPublicKey" in pubkey, pubkey


def test_gunicorn_listens_on_its_unix_socket(host):
    sock = host.file(SOCKET)
    assert sock.exists and sock.is_socket, host.run("ls -la /run/kiln/ 2>&1").stdout
    ss = host.run(f"ss -Hlxp src {SOCKET}").stdout
    assert "gunicorn" in ss or "python" in ss, f"no gunicorn on {SOCKET}: {ss!r}"


@pytest.mark.parametrize(
    "path,owner,group,mode",
    [
        ("/etc/kiln/kiln.env", "root", "kiln", 0o640),
        ("/etc/kiln/secrets.env", "root", "root", 0o600),
        ("/etc/kiln", "root", "kiln", 0o750),
        ("/etc/kiln/release", "root", "root", 0o644),
        ("/etc/nginx/sites-available/kiln", "root", "root", 0o644),
        ("/etc/supervisor/conf.d/kiln.conf", "root", "root", 0o644),
        ("/etc/redis/redis-cache.conf", None, None, None),
        ("/etc/redis/redis-queue.conf", None, None, None),
        ("/etc/redis/kiln-cache.auth.conf", "redis", "redis", 0o640),
        ("/etc/redis/kiln-queue.auth.conf", "redis", "redis", 0o640),
    ],
)
def test_config_file_owner_and_mode(host, path, owner, group, mode):
    f = host.file(path)
    assert f.exists, f"{path} missing"
    seen = f"{path}: {f.user}:{f.group} {oct(f.mode)}"
    if owner:
        assert (f.user, f.group) == (owner, group), seen
    if mode is not None:
        assert f.mode == mode, seen
    assert not f.mode & 0o002, f"world-writable: {seen}"


def test_redis_configs_are_not_world_readable_with_passwords(host):
    for which in ("cache", "queue"):
        f = host.file(f"/etc/redis/kiln-{which}.auth.conf")
        assert not f.mode & 0o004, f"{f.path} world-readable {oct(f.mode)}"


def test_app_processes_do_not_run_as_root(host):
    app = app_processes(host)
    shown = "\n".join(f"{p.user} {p.pid} {p.ppid} {p.args}" for p in app)
    assert app, f"no app processes found:\n{host.run('ps -eo user:20,pid,ppid,args').stdout}"
    root = [p for p in app if p.user == "root"]
    assert not root, f"app processes running as root:\n{shown}"
    assert all(p.user == "kiln" for p in app), shown


def test_release_symlink_and_stamp(host):
    cur = host.file("/srv/kiln/current")
    assert cur.is_symlink and cur.linked_to.startswith("/srv/kiln/releases/"), out(host, "ls -la /srv/kiln/")
    stamp = out(host, "cat /etc/kiln/release")
    for key in ("KILN_VERSION", "KILN_COMMIT", "KILN_BUILD_DATE", "KILN_DISTRO"):
        assert f"{key}=" in stamp, stamp


def test_sizes_follow_the_instance_memory_and_cpus(host):
    # kiln-firstboot sizes the server from its memory at first boot (a 1 GB VPS must not OOM): what runs is what it
    # chose, and what it chose follows its rule for this instance (the rule is in kiln-firstboot's sizing block).
    mem_kb = int(out(host, "sed -n 's/^MemTotal: *\\([0-9]*\\) kB$/\\1/p' /proc/meminfo"))
    mem_mb = (mem_kb // 1024 + 511) // 512 * 512  # the nominal size: the kernel keeps some
    cpus = int(out(host, "nproc"))
    env = env_file(host)
    workers = int(env["KILN_WEB_WORKERS"])
    assert workers == max(2, min(2 * cpus + 1, mem_mb // 256)), f"{mem_mb} MB, {cpus} CPUs: {workers} web workers"
    gunicorn = app_processes(host)
    running = [p for p in gunicorn if "gunicorn" in p.args and p.ppid == int(out(host, f"cat {GUNICORN_PID}"))]
    assert len(running) == workers, f"gunicorn workers running: {len(running)}, KILN_WEB_WORKERS={workers}"
    pool_mb = int(out(host, "mariadb -N -e 'SELECT @@innodb_buffer_pool_size'")) // (1024 * 1024)
    assert pool_mb == min(2048, max(128, mem_mb // 8 // 128 * 128)), f"{mem_mb} MB: InnoDB buffer pool {pool_mb} MB"
    swaps = out(host, "cat /proc/swaps")
    if mem_mb < 2048:
        assert "/swapfile.kiln" in swaps, f"{mem_mb} MB of memory and no swap:\n{swaps}"
    else:
        assert "/swapfile.kiln" not in swaps, swaps
    print(f"{mem_mb} MB, {cpus} CPUs: {workers} web workers, buffer pool {pool_mb} MB, swaps:\n{swaps}")


def test_the_boot_gives_the_app_the_cpu_until_it_answers_then_starts_the_rest(host):
    # kiln-web-ready.service: from cloud-init's network stage until the app answers through nginx, supervisor (the
    # app's start) has a large CPU weight and cloud-init the idle one; then both are back to the default, and only then
    # do fail2ban and unattended-upgrades start (70-firstboot.sh). A server left with the boot weights would give the
    # app 10x the CPU of MariaDB for good; services started beside the app's import delay the first served request.
    wait_for(
        lambda: unit_state(host, "kiln-web-ready.service") != "activating",
        180,
        2,
        "kiln-web-ready done",
        evidence=lambda: unit_evidence(host, "kiln-web-ready.service"),
    )
    props = out(host, "systemctl show -p Result,ActiveState,ActiveEnterTimestampMonotonic kiln-web-ready")
    ready = dict(line.split("=", 1) for line in props.splitlines())
    log = journal(host, "kiln-web-ready.service")
    assert ready["Result"] == "success" and "the app answers through nginx after" in log, f"{ready}\n{log}"
    weights = {u: out(host, f"systemctl show -p CPUWeight --value {u}") for u in ("supervisor", "cloud-init-main")}
    assert weights["supervisor"] in ("100", "[not set]"), f"CPU weights after the boot: {weights}\n{log}"
    assert weights["cloud-init-main"] in ("100", "[not set]", ""), f"CPU weights after the boot: {weights}\n{log}"
    for unit in ("fail2ban", "unattended-upgrades"):
        started = int(out(host, f"systemctl show -p InactiveExitTimestampMonotonic --value {unit}"))
        assert started >= int(ready["ActiveEnterTimestampMonotonic"]), (
            f"{unit} started at {started / 1e6:.2f} s, before the app answered "
            f"({int(ready['ActiveEnterTimestampMonotonic']) / 1e6:.2f} s)\n{log}"
        )
    said = [line for line in log.splitlines() if "the app answers through nginx after" in line]
    print(f"{said[-1]}; weights now {weights}")


# What a VPS's kernel keeps time with: KVM's clock, the CPU's TSC, or a hypervisor's page. A kernel that fell back to
# an emulated timer chip (hpet, acpi_pm) makes every clock read a system call and a device access: Python, the
# journal, MariaDB and nginx read the clock all the time. Under TCG that is what a guest of more than one socket gets
# (its TSCs count as unsynchronized): the Vagrantfile and Packer give their VMs one socket.
FAST_CLOCKSOURCES = {"kvm-clock", "tsc", "hyperv_clocksource_tsc_page", "xen", "arch_sys_counter"}


def test_the_kernel_keeps_time_with_a_fast_clocksource(host):
    base = "/sys/devices/system/clocksource/clocksource0"
    current = out(host, f"cat {base}/current_clocksource")
    seen = out(host, f"cat {base}/available_clocksource; lscpu | grep -E '^(Socket|Core|Thread)'")
    kernel = out(host, "journalctl -k -b --no-pager -o cat | grep -iE 'tsc|clocksource' | tail -8")
    assert current in FAST_CLOCKSOURCES, f"clocksource {current}; available and CPUs:\n{seen}\nkernel:\n{kernel}"
    print(f"clocksource {current}; available and CPUs:\n{seen}")
