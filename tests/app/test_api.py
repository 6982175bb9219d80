import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from records.models import Record

pytestmark = pytest.mark.django_db


def post_json(client, url, payload):
    return client.post(url, data=json.dumps(payload), content_type="application/json")


def test_api_creates_record_from_json_and_serves_it(user_client):
    response = post_json(user_client, "/api/records/", {"title": "Glaze", "body": "celadon"})
    assert response.status_code == 201
    created = response.json()
    assert response["Location"] == f"/api/records/{created['id']}/"
    assert created["attachment"] is None

    detail = user_client.get(response["Location"])
    assert detail.status_code == 200
    assert detail.json()["title"] == "Glaze"
    assert Record.objects.get(pk=created["id"]).body == "celadon"


def test_api_list_is_paginated_with_links(client, settings):
    Record.objects.bulk_create(Record(title=f"r{i}", body="x") for i in range(settings.RECORDS_PAGE_SIZE + 1))
    first = client.get("/api/records/").json()
    assert first["count"] == settings.RECORDS_PAGE_SIZE + 1
    assert len(first["results"]) == settings.RECORDS_PAGE_SIZE
    assert first["next"] == "/api/records/?page=2" and first["previous"] is None
    second = client.get(first["next"]).json()
    assert len(second["results"]) == 1 and second["previous"] == "/api/records/?page=1"
    missing = client.get("/api/records/?page=9")
    assert missing.status_code == 404
    assert missing.json()["error"]


def test_api_validation_errors_are_400_with_field_messages(user_client):
    response = post_json(user_client, "/api/records/", {"title": "t" * 201})
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert set(errors) == {"title", "body"}
    assert "at most 200 characters" in errors["title"][0]
    assert errors["body"] == ["This field is required."]


def test_api_rejects_malformed_json_with_400(user_client):
    response = user_client.post("/api/records/", data="{nope", content_type="application/json")
    assert response.status_code == 400
    assert "Invalid JSON" in response.json()["errors"]["__all__"][0]


def test_unknown_record_is_404_json(client):
    response = client.get("/api/records/424242/")
    assert response.status_code == 404
    assert response.json() == {"error": "Record 424242 not found."}


def test_unknown_api_url_is_404_json(client):
    response = client.get("/api/nothing-here/")
    assert response.status_code == 404
    assert response.json()["error"] == "Not found."


def test_oversized_api_body_is_413_json(client, settings):
    response = post_json(client, "/api/records/", {"title": "x", "body": "y" * settings.MAX_UPLOAD_BYTES})
    assert response.status_code == 413
    body = response.json()
    assert body["max_upload_bytes"] == settings.MAX_UPLOAD_BYTES
    assert "too large" in body["error"]


def test_oversized_upload_is_413_json(user_client, settings):
    upload = SimpleUploadedFile("big.bin", b"\0" * (settings.MAX_UPLOAD_BYTES + 10))
    response = user_client.post("/api/records/", {"title": "x", "body": "y", "attachment": upload})
    assert response.status_code == 413
    assert Record.objects.count() == 0


def test_django_request_data_too_big_is_mapped_to_413(user_client, settings):
    # Below the Content-Length limit but above Django's in-memory form data limit.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post_json(user_client, "/api/records/", {"title": "x", "body": "y" * 2000})
    assert response.status_code == 413
    assert "too large" in response.json()["error"]


def test_attachment_is_stored_in_s3_and_served_from_cdn_domain(user_client, services):
    upload = SimpleUploadedFile("notes.txt", b"cone 6 oxidation", content_type="text/plain")
    response = user_client.post("/api/records/", {"title": "with file", "body": "b", "attachment": upload})
    assert response.status_code == 201, response.content
    url = response.json()["attachment"]
    assert url.startswith(f"https://{services.env['MEDIA_CDN_DOMAIN']}/attachments/")

    key = Record.objects.get().attachment.name
    assert url.endswith(key)
    stored = services.s3().get_object(Bucket=services.env["AWS_STORAGE_BUCKET_NAME"], Key=key)
    assert stored["Body"].read() == b"cone 6 oxidation"


def test_attachment_goes_to_local_media_root_without_bucket(user_client, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"}}
    upload = SimpleUploadedFile("local.txt", b"local bytes")
    response = user_client.post("/api/records/", {"title": "local", "body": "b", "attachment": upload})
    assert response.status_code == 201
    assert response.json()["attachment"].startswith("/media/attachments/")
    assert (tmp_path / Record.objects.get().attachment.name).read_bytes() == b"local bytes"


@pytest.mark.parametrize("path", ["/api/records/", "/api/exports/"])
def test_deeply_nested_json_is_400_not_500(user_client, mailbox, path):
    # json.loads recurses once per level: 5000 brackets (10 KB, far under the upload limit) exhaust the stack.
    before = len(mailbox.messages)
    response = user_client.post(path, data="[" * 5000 + "]" * 5000, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["errors"]["__all__"] == ["Invalid JSON: nested too deeply."]
    assert Record.objects.count() == 0 and len(mailbox.messages) == before


@pytest.mark.parametrize("depth", [1, 900])
def test_json_field_that_is_no_plain_value_is_400_naming_it(user_client, depth):
    # Before: a list was stored as its str() ("['x']" as the title), which recurses as deep as the list: a few levels
    # more than these 900, still parsed, were a 500 (RecursionError).
    title = "[" * depth + '"x"' + "]" * depth
    response = user_client.post(
        "/api/records/", data=f'{{"title": {title}, "body": "b"}}', content_type="application/json"
    )
    assert response.status_code == 400, response.content
    assert list(response.json()["errors"]) == ["title"]
    assert "not a JSON array or object" in response.json()["errors"]["title"][0]
    assert Record.objects.count() == 0
