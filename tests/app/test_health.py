import pytest

from records.models import Record


def test_healthz_needs_no_dependencies(client, stop_service):
    # No django_db mark: pytest-django turns any database access into an error (500) here.
    with stop_service("cache"), stop_service("queue"):
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


@pytest.mark.django_db
def test_readyz_is_200_when_everything_is_up(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    for component in ("database", "cache", "queue"):
        assert body[component]["ok"] is True
        assert body[component]["error"] is None
        assert isinstance(body[component]["latency_ms"], float | int)


@pytest.mark.django_db
def test_readyz_is_503_naming_the_cache_when_cache_redis_is_stopped(client, stop_service):
    with stop_service("cache"):
        response = client.get("/readyz")
        page = client.get("/records/")
    assert response.status_code == 503
    body = response.json()
    assert body["cache"]["ok"] is False and body["cache"]["error"]
    assert body["database"]["ok"] is True and body["queue"]["ok"] is True
    assert page.status_code == 503
    assert b"cache" in page.content
    assert client.get("/readyz").status_code == 200


@pytest.mark.django_db
def test_readyz_is_503_naming_the_queue_when_queue_redis_is_stopped(user_client, stop_service):
    with stop_service("queue"):
        response = user_client.get("/readyz")
        export = user_client.post("/api/exports/")
    assert response.status_code == 503
    body = response.json()
    assert body["queue"]["ok"] is False and body["queue"]["error"]
    assert body["database"]["ok"] is True and body["cache"]["ok"] is True
    assert export.status_code == 503
    assert export.json()["component"] == "queue"
    assert user_client.get("/readyz").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_readyz_and_pages_are_503_not_500_when_database_is_stopped(client, user, stop_service):
    record = Record.objects.create(title="warm", body="x")
    client.get("/records/")  # warm the list cache: it must not hide the dead database from readyz
    client.force_login(user)  # the form needs a user; its session is in the database too
    with stop_service("database"):
        ready = client.get("/readyz")
        detail = client.get(f"/records/{record.pk}/")
        api = client.get(f"/api/records/{record.pk}/")
        create = client.post("/records/new/", {"title": "t", "body": "b"})
    assert ready.status_code == 503
    body = ready.json()
    assert body["database"]["ok"] is False and body["database"]["error"]
    assert body["cache"]["ok"] is True and body["queue"]["ok"] is True
    for response in (detail, create):
        assert response.status_code == 503
        assert b"database" in response.content
    assert api.status_code == 503
    assert api.json()["component"] == "database"
    assert client.get("/readyz").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_answer_any_host_header_other_paths_keep_host_validation(client, settings, path):
    # Load balancers probe by IP; ALLOWED_HOSTS lists the site's names (the measured case of issue 11).
    settings.ALLOWED_HOSTS = ["example.com", "localhost", "127.0.0.1"]
    probe = client.get(path, headers={"Host": "203.0.113.5"})
    assert probe.status_code == 200, probe.content
    assert probe.json()["ok"] is True
    assert client.get("/records/", headers={"Host": "203.0.113.5"}).status_code == 400
    assert client.get("/api/records/", headers={"Host": "203.0.113.5"}).status_code == 400
    assert client.get(path + "/", headers={"Host": "203.0.113.5"}).status_code == 400


@pytest.fixture
def full_queue(services):
    """The queue Redis really refusing writes: its memory limit under its use, with the server's noeviction policy."""
    queue = services.redis("queue")
    queue.config_set("maxmemory-policy", "noeviction")
    queue.config_set("maxmemory", 1)
    try:
        yield queue
    finally:
        queue.config_set("maxmemory", 0)


@pytest.mark.django_db
def test_full_queue_redis_is_503_for_exports_and_not_ready(user_client, full_queue):
    export = user_client.post("/api/exports/")
    assert export.status_code == 503, export.content
    assert export.json()["component"] == "queue"
    assert "refuses writes" in export.json()["error"]
    ready = user_client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["queue"]["ok"] is False and body["queue"]["error"].startswith("OutOfMemoryError")
    assert body["database"]["ok"] is True and body["cache"]["ok"] is True
    full_queue.config_set("maxmemory", 0)
    assert user_client.get("/readyz").status_code == 200
    assert user_client.post("/api/exports/").status_code == 202
