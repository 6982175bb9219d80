"""Starts the real services before Django settings are imported, and stops them at the end."""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from kiln_services import Services

APP_DIR = Path(__file__).resolve().parents[2] / "app"
TEST_SECRET_KEY = "test-secret-key-not-for-production-0123456789-abcdefghijklmnopqrstuvwxyz"
# Not a name the test client sends as Host: links built from the Host header would show.
SITE_URL = "https://site.kiln.test"
USER_PASSWORD = "cone-6-oxidation-1240"

_services: Services | None = None
_tmp: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _services, _tmp
    if config.getoption("help", False) or config.getoption("collectonly", False):
        return
    _tmp = Path(tempfile.mkdtemp(prefix="kiln-tests-"))
    _services = Services(_tmp)
    atexit.register(_shutdown)  # belt and braces: pytest_unconfigure is the normal path
    _services.start()
    # Runs before pytest-django's (trylast) pytest_configure, which then imports these settings.
    os.environ.update(_services.env)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="kiln.settings",
        SECRET_KEY=TEST_SECRET_KEY,
        DEBUG="off",
        SECURE_SSL_REDIRECT="off",  # the test client speaks plain HTTP; the redirect has its own test
        ALLOWED_HOSTS="testserver,localhost,127.0.0.1",
        SITE_URL=SITE_URL,
        MEDIA_ROOT=str(_tmp / "media"),
        STATIC_ROOT=str(_tmp / "static"),
        MAX_UPLOAD_BYTES="65536",
        JOB_TIMEOUT="60",
        LOG_LEVEL="WARNING",
    )
    os.environ.pop("KILN_ENV_FILE", None)
    os.environ.pop("SENTRY_DSN", None)
    os.environ.pop("ANYMAIL_ESP", None)
    import django

    django.setup()


def pytest_unconfigure(config: pytest.Config) -> None:
    _shutdown()


def _shutdown() -> None:
    global _services, _tmp
    if _services is not None:
        _services.stop()
        _services = None
    if _tmp is not None:
        shutil.rmtree(_tmp, ignore_errors=True)
        _tmp = None


@pytest.fixture(scope="session")
def services() -> Services:
    assert _services is not None
    return _services


@pytest.fixture
def mailbox(services: Services):
    return services.mailbox


@pytest.fixture(autouse=True)
def _clear_cache(services: Services):
    # Tests must not see each other's cached list pages.
    services.redis("cache").flushdb()
    yield


@pytest.fixture(scope="session")
def password_hash() -> str:
    """USER_PASSWORD hashed as in production (PBKDF2, ~0.2 s): once per session, not once per test."""
    from django.contrib.auth.hashers import make_password

    return make_password(USER_PASSWORD)


@pytest.fixture
def user(django_user_model, password_hash):
    """A Django user with an e-mail address: writes and exports need one."""
    return django_user_model.objects.create(username="potter", email="potter@example.com", password=password_hash)


@pytest.fixture
def user_client(client, user):
    """The test client, logged in as `user` (session auth, as a browser)."""
    client.force_login(user)
    return client


def basic_auth(username: str, password: str = USER_PASSWORD) -> dict[str, str]:
    """Headers for HTTP Basic auth, the API's other way in (scripts, curl)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


@contextlib.contextmanager
def _stopped(services: Services, component: str):
    from django.db import connections

    proc = services.procs[component]
    proc.stop()
    try:
        yield
    finally:
        proc.start()
        if component == "database":
            # Connections opened before the restart are dead; let Django reconnect.
            for conn in connections.all():
                with contextlib.suppress(Exception):
                    conn.close()


@pytest.fixture
def stop_service(services: Services):
    """`with stop_service("cache"): ...` really stops that server and starts it again afterwards."""
    return lambda component: _stopped(services, component)


def run_manage(*args: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=APP_DIR,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
