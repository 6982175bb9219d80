"""Writes and exports need a Django user: pages redirect to the login page, the API answers 401/403 JSON."""

import json
import logging

import pytest
from django.test import Client

from conftest import USER_PASSWORD, basic_auth
from records.models import Record

pytestmark = pytest.mark.django_db

RECORD = json.dumps({"title": "anonymous", "body": "spam"})


def test_anonymous_form_redirects_to_login_and_creates_nothing(client):
    page = client.get("/records/new/")
    assert page.status_code == 302
    assert page["Location"] == "/accounts/login/?next=/records/new/"
    post = client.post("/records/new/", {"title": "anonymous", "body": "spam"})
    assert post.status_code == 302 and post["Location"].startswith("/accounts/login/")
    assert Record.objects.count() == 0


def test_login_page_logs_in_and_returns_to_the_form(client, user):
    page = client.get("/accounts/login/?next=/records/new/")
    assert page.status_code == 200
    assert b'name="username"' in page.content and b'name="password"' in page.content
    wrong = client.post("/accounts/login/", {"username": user.username, "password": "wrong"})
    assert wrong.status_code == 200 and b"enter a correct username and password" in wrong.content
    response = client.post(
        "/accounts/login/", {"username": user.username, "password": USER_PASSWORD, "next": "/records/new/"}
    )
    assert response.status_code == 302 and response["Location"] == "/records/new/"
    assert client.get("/records/new/").status_code == 200


@pytest.mark.parametrize("path", ["/api/records/", "/api/exports/"])
def test_anonymous_api_write_is_401_json_and_does_nothing(client, mailbox, path):
    before = len(mailbox.messages)
    response = client.post(path, RECORD, content_type="application/json")
    assert response.status_code == 401
    assert "Authentication required" in response.json()["error"]
    assert response["WWW-Authenticate"].startswith("Basic ")
    assert Record.objects.count() == 0 and len(mailbox.messages) == before
    # reads stay public
    assert client.get("/api/records/").status_code == 200
    assert client.get("/records/").status_code == 200


def test_anonymous_export_status_is_401(client):
    assert client.get("/api/exports/some-job/").status_code == 401


def test_api_write_with_basic_auth_of_a_django_user(client, user):
    response = client.post("/api/records/", RECORD, content_type="application/json", headers=basic_auth(user.username))
    assert response.status_code == 201, response.content
    assert Record.objects.get().title == "anonymous"


@pytest.mark.parametrize(
    "authorization",
    [
        "wrong password",
        "unknown user",
        "inactive user",
        "Basic not-base64!",
        "Basic " + "bm8tY29sb24=",  # "no-colon"
        "Bearer abc",
    ],
)
def test_api_write_with_bad_credentials_is_401_and_logged(client, user, caplog, authorization):
    headers = {
        "wrong password": basic_auth(user.username, "wrong"),
        "unknown user": basic_auth("nobody"),
        "inactive user": basic_auth(user.username),
    }.get(authorization, {"Authorization": authorization})
    if authorization == "inactive user":
        user.is_active = False
        user.save()
    with caplog.at_level(logging.WARNING, logger="kiln.apiauth"):
        response = client.post("/api/records/", RECORD, content_type="application/json", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"].startswith(("Invalid HTTP Basic credentials", "Unsupported Authorization"))
    assert Record.objects.count() == 0
    if "Basic" in headers["Authorization"]:
        assert "API Basic authentication failed" in caplog.text


def test_session_api_write_needs_the_csrf_token(user):
    # A session cookie is sent by the browser on its own, so a session-authenticated write must prove its origin.
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    refused = browser.post("/api/records/", RECORD, content_type="application/json")
    assert refused.status_code == 403
    assert refused.json()["error"].startswith("CSRF check failed")
    assert Record.objects.count() == 0
    browser.get("/records/new/")  # the form page sets the CSRF cookie
    token = browser.cookies["csrftoken"].value
    accepted = browser.post("/api/records/", RECORD, content_type="application/json", headers={"X-CSRFToken": token})
    assert accepted.status_code == 201, accepted.content


def test_basic_auth_write_needs_no_csrf_token(user):
    scripted = Client(enforce_csrf_checks=True)
    response = scripted.post(
        "/api/records/", RECORD, content_type="application/json", headers=basic_auth(user.username)
    )
    assert response.status_code == 201, response.content


def test_logout_from_the_pages_nav(user_client):
    page = user_client.get("/records/").content.decode()
    assert 'action="/accounts/logout/"' in page and "potter" in page
    response = user_client.post("/accounts/logout/")
    assert response.status_code == 302 and response["Location"] == "/records/"
    assert user_client.get("/records/new/").status_code == 302  # logged out: back to the login page


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_basic_auth_from_another_sites_page_is_refused(client, user, site):
    # A browser that cached Basic credentials after a 401 prompt sends them unasked, even for another site's form.
    headers = {**basic_auth(user.username), "Sec-Fetch-Site": site}
    response = client.post("/api/records/", RECORD, content_type="application/json", headers=headers)
    assert response.status_code == 403
    assert "another site" in response.json()["error"]
    assert Record.objects.count() == 0
