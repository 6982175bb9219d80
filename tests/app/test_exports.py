import csv
import io
import json
import os
from urllib.parse import urlparse

import pytest
from django.db import connection

from conftest import run_manage
from records.models import Record


def enqueue(client, email):
    return client.post("/api/exports/", json.dumps({"email": email}), content_type="application/json")


@pytest.mark.django_db(transaction=True)  # the worker is another process: it must see committed rows
def test_export_job_runs_in_worker_writes_csv_to_storage_and_mails_link(client, services, mailbox):
    Record.objects.create(title="bisque", body="first firing")
    Record.objects.create(title="glaze", body='with "quotes", commas')

    response = enqueue(client, "potter@example.com")
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    status_url = response.json()["status_url"]
    assert status_url == f"/api/exports/{job_id}/"
    assert client.get(status_url).json()["status"] == "queued"

    env = dict(os.environ)
    env["DATABASE_URL"] = services.env["DATABASE_URL"].rsplit("/", 1)[0] + "/" + connection.settings_dict["NAME"]
    worker = run_manage("rqworker", "export", "--burst", env=env)
    assert worker.returncode == 0, worker.stdout + worker.stderr

    status = client.get(status_url).json()
    assert status["status"] == "finished", status
    url = status["result_url"]
    assert url.startswith(f"https://{services.env['MEDIA_CDN_DOMAIN']}/exports/")

    key = urlparse(url).path.lstrip("/")
    body = services.s3().get_object(Bucket=services.env["AWS_STORAGE_BUCKET_NAME"], Key=key)["Body"].read()
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [r["title"] for r in rows] == ["bisque", "glaze"]
    assert rows[1]["body"] == 'with "quotes", commas'

    (mail,) = mailbox.to("potter@example.com")
    assert url in mail.get_body().get_content()


def test_export_with_invalid_email_is_400(client):
    response = enqueue(client, "not-an-address")
    assert response.status_code == 400
    assert "email" in response.json()["errors"]


def test_export_job_is_enqueued_with_timeout_and_retry(client, settings):
    import django_rq
    from rq.job import Job

    job_id = enqueue(client, "a@example.com").json()["job_id"]
    job = Job.fetch(job_id, connection=django_rq.get_connection("export"))
    assert job.origin == "export"
    assert job.timeout == settings.EXPORT_JOB_TIMEOUT
    assert job.retries_left == 3
    job.delete()


def test_unknown_export_job_is_404(client):
    response = client.get("/api/exports/does-not-exist/")
    assert response.status_code == 404
    assert "not found" in response.json()["error"]
