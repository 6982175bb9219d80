"""What a client sees through nginx: probes, static files without gunicorn, the maintenance page, limits, headers."""

import json
import time

import pytest

from kilnlib import (
    WEB_LOG,
    all_running,
    app_user,
    http,
    out,
    post_record,
    supervisor_text,
    tail,
    wait_for,
    wait_http_ok,
    worker_names,
)

STATIC = "/static/admin/css/base.css"  # shipped by django.contrib.admin, collected by collectstatic


@pytest.fixture(scope="module")
def user(host):
    """Writes need a Django user of the app."""
    with app_user(host) as user:
        yield user


@pytest.fixture
def web_restored(host):
    """Whatever a test does to kiln-web, it is RUNNING and serving again afterwards."""
    yield
    host.run("supervisorctl start kiln-web")
    wait_http_ok(host, timeout=60)


def test_readyz_is_200_through_nginx_over_http(host):
    r = wait_http_ok(host, "/readyz", timeout=60, scheme="http")
    data = json.loads(r.body)
    for part in ("database", "cache", "queue"):
        assert data[part]["ok"] is True, r


def test_readyz_is_200_over_https(host):
    r = http(host, "/readyz")
    assert r.status == 200, r


def test_plain_http_redirects_to_https(host):
    r = http(host, "/records/", scheme="http")
    assert r.status in (301, 308) and r.headers.get("location", "").startswith("https://"), r


def test_records_page_is_served(host):
    r = http(host, "/records/")
    assert r.status == 200, r


def test_static_file_is_served_by_nginx_without_gunicorn(host, web_restored):
    before = out(host, f"wc -l < {WEB_LOG}")
    r = http(host, STATIC)
    assert r.status == 200 and "text/css" in r.headers.get("content-type", ""), r
    assert out(host, f"wc -l < {WEB_LOG}") == before, f"gunicorn logged the static request:\n{tail(host, WEB_LOG, 5)}"
    # and with gunicorn stopped
    out(host, "supervisorctl stop kiln-web")
    r = http(host, STATIC)
    assert r.status == 200, f"static file not served with kiln-web stopped:\n{r}"
    assert "immutable" in r.headers.get("cache-control", "") or "max-age" in r.headers.get("cache-control", ""), r


def test_custom_error_page_when_gunicorn_is_stopped(host, web_restored):
    out(host, "supervisorctl stop kiln-web")
    # a query of its own: the list nginx keeps for a few seconds (kiln-page-cache.conf) would come from its cache
    r = http(host, f"/records/?down-{time.time_ns()}")
    assert r.status in (502, 503), r
    assert "kiln-50x" in r.body, f"not the Kiln maintenance page:\n{r}"
    assert r.headers.get("content-type", "").startswith("text/html"), r
    assert "nginx/" not in r.body, r


def test_body_over_the_upload_limit_is_rejected_with_413(host):
    configured = out(host, "sed -n 's/^MAX_UPLOAD_BYTES=//p' /etc/kiln/kiln.env")
    limit = int(configured) if configured.isdigit() else 10485760
    r = http(
        host,
        "/api/records/",
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
        data_cmd=f"head -c {limit + 1024 * 1024} /dev/zero",
        timeout=60,
    )
    assert r.status == 413, r


def test_anonymous_write_is_refused_with_401(host):
    r = post_record(host, None, "anonymous")
    assert r.status == 401 and "Authentication required" in r.body, r


def test_body_under_the_limit_reaches_the_app(host, user):
    r = post_record(host, user, "infra http")
    assert r.status == 201, r


@pytest.mark.parametrize("path", ["/records/", STATIC, "/readyz"])
def test_security_headers_are_sent(host, path):
    r = http(host, path)
    h = r.headers
    assert h.get("x-content-type-options") == "nosniff", r
    assert h.get("x-frame-options", "").upper() in ("DENY", "SAMEORIGIN"), r
    assert "referrer-policy" in h, r
    assert h.get("strict-transport-security", "").startswith("max-age="), r
    assert "server" not in h or "/" not in h["server"], f"server version leaked: {h.get('server')}"


def test_security_headers_are_not_duplicated(host):
    r = http(host, "/records/")
    lines = [ln.split(":", 1)[0].lower() for ln in r.raw_headers.splitlines()[1:] if ":" in ln]
    dup = {k for k in lines if lines.count(k) > 1 and k not in ("set-cookie", "vary")}
    assert not dup, f"duplicated headers {dup}:\n{r}"


def test_all_programs_running_after_http_suite(host):
    wait_for(
        lambda: all_running(host, ["kiln-web", *worker_names(host)]),
        60,
        2,
        "programs RUNNING",
        evidence=lambda: supervisor_text(host),
    )
