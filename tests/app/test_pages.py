import pytest
from django.urls import reverse

from records.models import Record

pytestmark = pytest.mark.django_db


def test_record_created_through_form_redirects_to_its_detail_page(user_client):
    response = user_client.post("/records/new/", {"title": "Kiln log", "body": "First firing at 1240C"})
    record = Record.objects.get(title="Kiln log")
    assert response.status_code == 302
    assert response["Location"] == f"/records/{record.pk}/"

    detail = user_client.get(response["Location"])
    assert detail.status_code == 200
    assert b"First firing at 1240C" in detail.content


def test_list_page_shows_records_newest_first(client):
    Record.objects.create(title="older", body="a")
    Record.objects.create(title="newer", body="b")
    response = client.get("/records/")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.index("newer") < html.index("older")
    assert "Records (2)" in html


def test_list_page_is_paginated(client, settings):
    Record.objects.bulk_create(Record(title=f"r{i:02}", body="x") for i in range(settings.RECORDS_PAGE_SIZE + 3))
    first = client.get("/records/").content.decode()
    second = client.get("/records/?page=2").content.decode()
    assert "page 1 of 2" in first and "page 2 of 2" in second
    assert second.count("<li>") == 3
    assert client.get("/records/?page=3").status_code == 404


def test_list_page_is_public_for_a_few_seconds_to_visitors_without_an_account(client, settings):
    response = client.get("/records/")
    directives = {d.strip() for d in response["Cache-Control"].split(",")}
    assert directives == {"public", f"max-age={settings.RECORDS_LIST_PUBLIC_MAX_AGE}"}, response["Cache-Control"]
    assert not response.cookies, f"a public page sets cookies: {response.cookies}"


def test_list_page_of_a_logged_in_user_is_private(user_client):
    response = user_client.get("/records/")
    directives = {d.strip() for d in response["Cache-Control"].split(",")}
    assert "private" in directives and "public" not in directives, response["Cache-Control"]


def test_create_form_renders(user_client):
    response = user_client.get("/records/new/")
    assert response.status_code == 200
    assert b'name="title"' in response.content


def test_invalid_form_is_rerendered_with_field_errors_and_400(user_client):
    response = user_client.post("/records/new/", {"title": "", "body": ""})
    assert response.status_code == 400
    form = response.context["form"]
    assert set(form.errors) == {"title", "body"}
    assert b"This field is required." in response.content
    assert Record.objects.count() == 0


def test_unknown_record_page_is_404(client):
    response = client.get(reverse("records:detail", args=[999999]))
    assert response.status_code == 404
    assert b"Not found" in response.content


def test_oversized_form_post_is_413_not_500(client, settings):
    response = client.post("/records/new/", {"title": "big", "body": "x" * (settings.MAX_UPLOAD_BYTES + 1)})
    assert response.status_code == 413
    assert str(settings.MAX_UPLOAD_BYTES).encode() in response.content
    assert Record.objects.count() == 0


def test_admin_is_enabled_and_lists_records(admin_client):
    Record.objects.create(title="in admin", body="x")
    response = admin_client.get("/admin/records/record/")
    assert response.status_code == 200
    assert b"in admin" in response.content


def head_and_get(client, path):
    return client.head(path), client.get(path)


GET_PATHS = ["/records/", "/records/{pk}/", "/records/new/", "/api/records/", "/api/records/{pk}/"]
GET_PATHS += ["/healthz", "/readyz", "/accounts/login/"]


@pytest.mark.parametrize("path", GET_PATHS)
def test_head_answers_like_get_without_a_body(user_client, path):
    # Uptime monitors probe with HEAD; require_GET answered them 405.
    record = Record.objects.create(title="probed", body="x")
    head, get = head_and_get(user_client, path.format(pk=record.pk))
    assert get.status_code == 200
    assert head.status_code == get.status_code, head
    assert head.content == b""
    # never_cache's Expires is the time of the response; everything else must match
    assert {k: v for k, v in head.headers.items() if k != "Expires"} == {
        k: v for k, v in get.headers.items() if k != "Expires"
    }


def test_a_refused_host_is_400_and_logged_in_one_line_without_traceback(client, settings):
    import io
    import logging

    settings.ALLOWED_HOSTS = ["example.com"]
    handler = logging.getLogger("django.security.DisallowedHost").handlers[0]
    stream, handler.stream = handler.stream, io.StringIO()
    try:
        response = client.get("/records/", HTTP_HOST="evil.example")
        logged = handler.stream.getvalue()
    finally:
        handler.stream = stream
    assert response.status_code == 400
    assert "evil.example" in logged and "Traceback" not in logged and "exc_info" not in logged, logged
