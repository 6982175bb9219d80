import json

import pytest

from conftest import basic_auth
from records.models import Record

pytestmark = pytest.mark.django_db


def cached_page_keys(services):
    return [k.decode() for k in services.redis("cache").keys("*records:list:v*:p*")]


def test_list_is_served_from_cache_after_first_read(client, services, django_assert_num_queries):
    Record.objects.create(title="cached one", body="x")
    assert cached_page_keys(services) == []

    first = client.get("/records/")
    assert first.status_code == 200
    assert len(cached_page_keys(services)) == 1

    with django_assert_num_queries(0):
        second = client.get("/records/")
    assert second.status_code == 200
    assert b"cached one" in second.content


def test_cached_list_is_really_read_from_redis(client, services, django_assert_num_queries):
    Record.objects.create(title="original", body="x")
    client.get("/records/")
    # Tamper with the cached entry behind Django's back; the page must reflect Redis, not the DB.
    redis = services.redis("cache")
    (key,) = redis.keys("*records:list:v*:p1")
    from django.core.cache import cache

    raw_key = key.decode().split(":", 2)[2]  # strip "kiln:1:" (KEY_PREFIX and version)
    data = cache.get(raw_key)
    data["results"][0]["title"] = "from-redis"
    cache.set(raw_key, data)
    with django_assert_num_queries(0):
        assert b"from-redis" in client.get("/records/").content


def test_write_through_api_invalidates_cached_list(client, user, services, django_assert_num_queries):
    Record.objects.create(title="before", body="x")
    client.get("/records/")
    with django_assert_num_queries(0):
        client.get("/records/")

    # Basic auth, not a session: the page reads below stay anonymous, and their query count with them.
    response = client.post(
        "/api/records/",
        json.dumps({"title": "after", "body": "y"}),
        content_type="application/json",
        headers=basic_auth(user.username),
    )
    assert response.status_code == 201

    with django_assert_num_queries(2):  # count + page: the old cache entry is no longer used
        page = client.get("/records/")
    assert b"after" in page.content and b"before" in page.content


def test_update_and_delete_invalidate_cached_list(client):
    record = Record.objects.create(title="first title", body="x")
    assert b"first title" in client.get("/records/").content

    record.title = "renamed"
    record.save()
    assert b"renamed" in client.get("/records/").content

    record.delete()
    assert b"renamed" not in client.get("/records/").content


def test_api_list_uses_the_same_cache(client, django_assert_num_queries):
    Record.objects.create(title="api", body="x")
    client.get("/api/records/")
    with django_assert_num_queries(0):
        assert client.get("/api/records/").json()["results"][0]["title"] == "api"
