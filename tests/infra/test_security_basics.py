"""Basic exposure checks: SSH auth policy, backends demand credentials, the env file is not world-readable."""

import json

import pytest

from kilnlib import ENV_FILE, REBOOT_PENDING, env_file, redis_cli, redis_conn, sh


def _sshd(host) -> dict[str, str]:
    text = sh(host, "sshd -T -C user=nobody,host=localhost,addr=127.0.0.1 2>/dev/null || sshd -T").stdout
    return {ln.split(None, 1)[0].lower(): ln.split(None, 1)[1].strip() for ln in text.splitlines() if " " in ln}


def test_ssh_refuses_password_authentication(host):
    cfg = _sshd(host)
    assert cfg.get("passwordauthentication") == "no", (
        f"sshd -T: passwordauthentication={cfg.get('passwordauthentication')}"
    )
    assert cfg.get("kbdinteractiveauthentication", "no") == "no", cfg.get("kbdinteractiveauthentication")


def test_ssh_refuses_root_login(host):
    cfg = _sshd(host)
    assert cfg.get("permitrootlogin") == "no", f"sshd -T: permitrootlogin={cfg.get('permitrootlogin')}"


def test_ssh_server_offers_no_password_method(host):
    # What a client is actually offered (the effective config could be overridden by a Match block).
    res = host.run(
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        "-o PreferredAuthentications=password,keyboard-interactive -o ConnectTimeout=10 "
        "nobody@127.0.0.1 true 2>&1; echo ssh-rc=$?"  # testinfra treats rc 255 as its own connection failure
    )
    assert "ssh-rc=0" not in res.stdout, res.stdout
    assert "Permission denied" in res.stdout, res.stdout
    methods = res.stdout.rsplit("(", 1)[-1]
    assert "password" not in methods and "keyboard-interactive" not in methods, res.stdout


def test_database_refuses_a_client_without_password(host):
    # As an unprivileged OS user (root has unix_socket auth by design) and over TCP.
    for cmd in (
        "runuser -u nobody -- mariadb -u kiln -e 'SELECT 1'",
        "runuser -u nobody -- mariadb -u kiln -h 127.0.0.1 --protocol=TCP -e 'SELECT 1'",
        "runuser -u nobody -- mariadb -u root -h 127.0.0.1 --protocol=TCP -e 'SELECT 1'",
    ):
        res = host.run(cmd)
        text = res.stderr + res.stdout
        refused = "Access denied" in text or "is not allowed to connect" in text  # 1045 or 1130 (no such user@host)
        assert res.rc != 0 and refused, f"{cmd}: rc={res.rc} {text}"


def test_database_accepts_the_app_credentials(host):
    url = env_file(host)["DATABASE_URL"]
    pw = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    res = sh(host, f"MYSQL_PWD='{pw}' runuser -u nobody --preserve-environment -- mariadb -u kiln -N -e 'SELECT 1'")
    assert res.stdout.strip() == "1", res


@pytest.mark.parametrize("which", ["cache", "queue"])
def test_redis_refuses_a_client_without_password(host, which):
    res = redis_cli(host, which, "PING", auth=False, ok=None)
    text = res.stdout + res.stderr
    assert "NOAUTH" in text or "Authentication required" in text, f"redis {which} without password: {text!r}"
    res = redis_cli(host, which, "PING")
    assert "PONG" in res.stdout, res.stdout


@pytest.mark.parametrize("which", ["cache", "queue"])
def test_redis_rejects_a_wrong_password(host, which):
    # First: this instance is up and answers the right password, so a refusal below is Redis refusing.
    assert "PONG" in redis_cli(host, which, "PING").stdout
    h, p, _ = redis_conn(host, which)
    res = host.run(f"REDISCLI_AUTH=wrong-password redis-cli -h {h} -p {p} PING 2>&1")
    assert "PONG" not in res.stdout, res.stdout
    assert "WRONGPASS" in res.stdout or "invalid password" in res.stdout, (
        f"redis {which}, wrong password: {res.stdout!r}"
    )


# The commands 86-datastores.sh renames away (kiln-hardening.inc); Lynis' DBS-1886 looks only at the removed stock
# redis.conf, so this is the check its waiver cites.
@pytest.mark.parametrize("which", ["cache", "queue"])
@pytest.mark.parametrize("command", ["CONFIG GET maxmemory", "FLUSHALL", "DEBUG SLEEP 0", "SHUTDOWN NOSAVE"])
def test_redis_refuses_dangerous_commands_even_with_the_password(host, which, command):
    assert "PONG" in redis_cli(host, which, "PING").stdout
    res = redis_cli(host, which, command, ok=None)
    text = res.stdout + res.stderr
    assert "unknown command" in text, f"redis {which} `{command}` with the app's password: {text!r}"
    assert "PONG" in redis_cli(host, which, "PING").stdout, f"redis {which} is down after `{command}`"


def test_fail2ban_watches_sshd(host):
    # The jail Lynis' TOOL-5104 waiver and the SSH-7408/AUTH-9408 waivers rely on: running, reading sshd's journal.
    res = sh(host, "fail2ban-client status sshd")
    assert "Status for the jail: sshd" in res.stdout, res.stdout
    jail = sh(host, "fail2ban-client get sshd journalmatch").stdout
    assert "sshd" in jail or "ssh.service" in jail, f"sshd jail journalmatch: {jail!r}\n{res.stdout}"


def test_no_reboot_is_pending(host):
    # The running kernel is the newest installed one and nothing asks for a reboot (the KRNL-5830 and DEB-0831
    # waivers cite this): an image that booted an older kernel than it carries would run without its fixes. The
    # server's own check (the one the login message uses; test_updates.py shows it does see a pending reboot).
    res = sh(host, REBOOT_PENDING, ok=None)
    kernels = sh(host, "uname -r; ls /boot").stdout
    assert res.rc == 1, f"reboot pending (rc={res.rc}): {res.stdout}{res.stderr}\n--- uname -r; ls /boot ---\n{kernels}"


def test_no_kvm_module_is_loaded_where_the_cpu_offers_virtualisation(host):
    # A web server runs no VMs: modprobe.d/kiln-hardening.conf blacklists kvm_intel/kvm_amd, which udev would load by
    # CPU alias where the vCPU offers VT-x/AMD-V (nested virtualisation; QEMU's -cpu max, as in these tests).
    flags = set(sh(host, "grep -m1 '^flags' /proc/cpuinfo").stdout.split())
    if not flags & {"vmx", "svm"}:
        pytest.skip("this vCPU offers no VT-x/AMD-V: nothing would load kvm anyway")
    loaded = [line.split()[0] for line in sh(host, "cat /proc/modules").stdout.splitlines()]
    kvm = [m for m in loaded if m == "kvm" or m.startswith("kvm_")]
    assert not kvm, f"loaded: {kvm}; /dev/kvm: {sh(host, 'ls -l /dev/kvm', ok=None).stdout.strip()}"


def test_apparmor_enforces_its_profiles_and_loads_none_that_confine_nothing(host):
    # 84-services drops the distro's "unconfined" desktop profiles (boot time); the confining ones must stay loaded.
    status = json.loads(sh(host, "aa-status --json").stdout)
    modes = status.get("profiles", {})
    enforced = sorted(name for name, mode in modes.items() if mode == "enforce")
    unconfined = sorted(name for name, mode in modes.items() if mode == "unconfined")
    assert "lsb_release" in enforced, f"enforced profiles: {enforced}; all: {modes}"
    assert not unconfined, f"profiles loaded in unconfined mode: {unconfined}"


def test_env_file_is_0640_root_kiln(host):
    f = host.file(ENV_FILE)
    assert (f.user, f.group, f.mode) == ("root", "kiln", 0o640), f"{ENV_FILE}: {f.user}:{f.group} {oct(f.mode)}"
    res = host.run(f"runuser -u nobody -- cat {ENV_FILE}")
    assert res.rc != 0, "an unprivileged user can read the env file"
