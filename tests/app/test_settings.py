import os

import pytest

from conftest import run_manage

PRODUCTION_ENV = {
    "DEBUG": "off",
    "SECRET_KEY": "Zq8-production-like-secret-key-4kT!pW2@vN7#xL5$mR9%bH3^cJ6&fD1*gS0",
    "ALLOWED_HOSTS": "kiln.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://kiln.example.com",
    "DATABASE_URL": "mysql://kiln:pw@127.0.0.1:3306/kiln",
    "CACHE_URL": "redis://:pw@127.0.0.1:6379/0",
    "QUEUE_URL": "redis://:pw@127.0.0.1:6380/0",
}


def clean_env(**overrides: str) -> dict[str, str]:
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(overrides)
    return env


def test_check_deploy_is_clean_with_production_env():
    env = clean_env(**PRODUCTION_ENV)
    env.pop("SECURE_SSL_REDIRECT", None)
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_settings_refuse_to_load_without_secret_key_when_debug_off():
    env = clean_env(**{k: v for k, v in PRODUCTION_ENV.items() if k != "SECRET_KEY"})
    result = run_manage("check", env=env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SECRET_KEY environment variable is required" in result.stderr


def test_env_file_is_read_and_real_env_wins(tmp_path):
    env_file = tmp_path / "kiln.env"
    env_file.write_text("SECRET_KEY=from-file-0123456789\nLOG_LEVEL=ERROR\nDEBUG=on\n")
    env = clean_env(KILN_ENV_FILE=str(env_file), LOG_LEVEL="DEBUG")
    code = "from django.conf import settings as s; print(s.SECRET_KEY, s.LOG_LEVEL, s.DEBUG)"
    result = run_manage("shell", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == ["from-file-0123456789", "DEBUG", "True"]


@pytest.mark.django_db
def test_plain_http_is_redirected_to_https_except_health_probes(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    response = client.get("/records/")
    assert response.status_code == 301
    assert response["Location"].startswith("https://")
    assert client.get("/healthz").status_code == 200
    assert client.get("/records/", headers={"X-Forwarded-Proto": "https"}).status_code != 301


def test_logs_are_json_lines():
    import json
    import logging

    from kiln.jsonlog import JsonFormatter

    record = logging.LogRecord("kiln.test", logging.ERROR, __file__, 1, "boom %s", ("x",), None)
    record.component = "cache"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "boom x" and line["level"] == "ERROR" and line["component"] == "cache"


def site_url(**env: str):
    return run_manage("shell", "-c", "from django.conf import settings; print(settings.SITE_URL)", env=clean_env(**env))


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SITE_URL": "https://kiln.example.com/"}, "https://kiln.example.com"),
        ({"SITE_URL": "http://10.0.0.5:8080"}, "http://10.0.0.5:8080"),
        ({"ALLOWED_HOSTS": ".example.com,10.0.0.5"}, "https://example.com"),
        ({"ALLOWED_HOSTS": "*"}, "https://localhost"),
    ],
)
def test_site_url_for_mail_links_is_configured_or_derived_from_allowed_hosts(env, expected):
    result = site_url(**{**PRODUCTION_ENV, **env})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == expected


@pytest.mark.parametrize(
    "bad", ["kiln.example.com", "ftp://kiln.example.com", "https://kiln.example.com/app", "https://"]
)
def test_site_url_that_is_no_origin_is_refused_naming_it(bad):
    result = site_url(**{**PRODUCTION_ENV, "SITE_URL": bad})
    assert result.returncode != 0
    assert "ImproperlyConfigured: SITE_URL must be the site's origin" in result.stderr
    assert repr(bad) in result.stderr


def test_esp_without_default_from_email_is_refused_naming_it():
    # An ESP sends only from a sender verified on its account: noreply@localhost had every mail rejected.
    esp = {**PRODUCTION_ENV, "ANYMAIL_ESP": "postmark", "ANYMAIL_API_KEY": "server-token"}
    refused = run_manage("check", env=clean_env(**esp))
    assert refused.returncode != 0
    assert "ImproperlyConfigured: DEFAULT_FROM_EMAIL" in refused.stderr
    code = "from django.conf import settings as s; print(s.EMAIL_BACKEND, s.DEFAULT_FROM_EMAIL)"
    accepted = run_manage("shell", "-c", code, env=clean_env(**esp, DEFAULT_FROM_EMAIL="shop@example.com"))
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.splitlines()[-1].split() == ["anymail.backends.postmark.EmailBackend", "shop@example.com"]


@pytest.mark.parametrize("bad", ["0", "604801", "a day"])
def test_export_link_lifetime_out_of_range_is_refused_naming_it(bad):
    # 7 days at most: the longest an S3 presigned URL (SigV4) lives.
    result = run_manage("check", env=clean_env(**PRODUCTION_ENV, EXPORT_LINK_MAX_AGE=bad))
    assert result.returncode != 0
    assert f"ImproperlyConfigured: EXPORT_LINK_MAX_AGE={bad!r}" in result.stderr


BENCH_STATIC_PROBE = (
    "from django.urls import Resolver404, resolve\n"
    "try:\n"
    "    print(resolve('/bench-static/admin/css/base.css').func.__module__)\n"
    "except Resolver404:\n"
    "    print('no route')\n"
)


@pytest.mark.parametrize(("value", "expected"), [(None, "no route"), ("0", "no route"), ("1", "django.views.static")])
def test_static_files_through_django_only_with_the_benchmark_setting(value, expected):
    # make bench compares nginx with Django serving the same static file: /bench-static/ exists only with
    # KILN_BENCH_STATIC set, never in production (its default).
    env = clean_env(**PRODUCTION_ENV, **({} if value is None else {"KILN_BENCH_STATIC": value}))
    result = run_manage("shell", "-c", BENCH_STATIC_PROBE, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == expected
