"""CSV export of all records: enqueued on the `export` rq queue by a logged-in user, written to storage as the rows are
read, mailed to that user's own address (never one the request names: that made the server a mail relay) as a link
on SITE_URL that works for EXPORT_LINK_MAX_AGE seconds."""

import csv
import io
import logging
import math
import smtplib
import tempfile
import time
from collections.abc import Iterator

import django_rq
from anymail.exceptions import AnymailError, AnymailRecipientsRefused
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.files import File
from django.core.files.storage import FileSystemStorage, storages
from django.core.mail import send_mail
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.utils.crypto import salted_hmac
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job

from kiln.apiauth import api_login_required
from kiln.errors import error_response
from kiln.payload import BadPayload, request_data
from records.models import Record

logger = logging.getLogger(__name__)

QUEUE = "export"
RETRY_INTERVALS = [10, 60, 300]
FIELDS = ["id", "title", "body", "attachment", "created", "updated"]
# Records per query: a body can be as large as an upload (MAX_UPLOAD_BYTES), so few at a time.
CHUNK = 100
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
LINK_SALT = "records.exports.link"


class ExportMailError(Exception):
    """The mail provider did not take the export's mail (refused its sender, recipient or message, or unreachable)."""


def export_records_csv(user_id: int) -> dict[str, str]:
    """rq job: write every record to a CSV in the `exports` storage and mail the link to the user's address."""
    user = get_user_model().objects.get(pk=user_id)
    job = get_current_job()
    job_id = job.id if job else "manual"
    storage = storages["exports"]
    # On disk, not in memory: the table can be larger than the worker's RAM.
    with tempfile.TemporaryFile() as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = csv.writer(text)
        writer.writerow(FIELDS)
        writer.writerows(_rows())
        text.flush()
        text.detach()  # leaves `raw` open for the upload
        raw.seek(0)
        name = storage.save(export_name(job_id), File(raw))
    url = export_link(job_id)
    hours = round(settings.EXPORT_LINK_MAX_AGE / 3600, 1)
    try:
        send_mail(
            subject="Your Kiln records export is ready",
            message=f"Your CSV export of all records is ready (the link works for {hours:g} hours):\n\n{url}\n",
            from_email=None,
            recipient_list=[user.email],
        )
    except (OSError, AnymailError) as exc:  # smtplib's errors and a refused connection are OSErrors
        permanent = _refused_for_good(exc)
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line: the job status shows the last one
        logger.error(
            "Export mail not taken by the mail provider",
            extra={"job_id": job_id, "user_id": user_id, "permanent": permanent, "error": detail},
        )
        if permanent and job is not None:
            # rq would retry three times over six minutes only to be refused the same way: the job fails now.
            job.retries_left = 0
        raise ExportMailError(
            f"the mail provider did not take the mail from {settings.DEFAULT_FROM_EMAIL!r}: {detail}"
        ) from exc
    return {"name": name, "url": url}


def _refused_for_good(exc: Exception) -> bool:
    """A refusal that a retry gets again: an SMTP 5xx reply, or an ESP's 4xx answer but 408 and 429."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _reply in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code >= 500
    if isinstance(exc, AnymailRecipientsRefused):
        return True
    status = exc.status_code if isinstance(exc, AnymailError) else None
    return status is not None and 400 <= status < 500 and status not in (408, 429)


def export_name(job_id: str) -> str:
    """The export's file in the `exports` storage. Its secret part is not in the link, whose signed payload anyone
    holding it can read: nginx serves local media without asking the app, and an expired link must lead nowhere."""
    return f"exports/records-{job_id}-{salted_hmac('records.exports.file', job_id).hexdigest()[:32]}.csv"


def export_link(job_id: str) -> str:
    """The download link: on SITE_URL (never a request's Host header), signed, expiring EXPORT_LINK_MAX_AGE from now."""
    token = signing.dumps({"job": job_id, "exp": int(time.time()) + settings.EXPORT_LINK_MAX_AGE}, salt=LINK_SALT)
    return settings.SITE_URL + reverse("records:export-download", args=[token])


@require_safe
@never_cache
def export_download(request: HttpRequest, token: str) -> HttpResponse:
    """The file behind an export link, until the link expires. No login: the signed link is the permission."""
    try:
        link = signing.loads(token, salt=LINK_SALT)
    except signing.BadSignature:
        return error_response(request, 404, "Not found.")
    seconds_left = link["exp"] - time.time()
    if seconds_left <= 0:
        return error_response(request, 410, "This export link has expired: ask for a new export.")
    storage = storages["exports"]
    name = export_name(link["job"])
    if isinstance(storage, FileSystemStorage):
        try:
            return FileResponse(storage.open(name), as_attachment=True, filename="records.csv")
        except FileNotFoundError:
            return error_response(request, 404, "This export has been removed: ask for a new export.")
    # S3: a presigned URL that expires with the link, so the bytes come from the bucket, not through a web worker.
    return HttpResponseRedirect(storage.url(name, expire=math.ceil(seconds_left)))


def _rows() -> Iterator[list[object]]:
    """Every record as a CSV row (the API's values: Record.as_dict), in id order, read CHUNK at a time by primary key.

    By key, because iterator() alone still has mysqlclient hold the whole result set; as values, because a model
    instance that touched its FileField is in a reference cycle with it and outlives its chunk until a full gc.
    """
    storage = Record.attachment.field.storage
    last = 0
    while True:
        chunk = list(Record.objects.filter(pk__gt=last).order_by("pk").values_list(*FIELDS)[:CHUNK])
        for pk, title, body, attachment, created, updated in chunk:
            url = storage.url(attachment) if attachment else None
            yield [_cell(value) for value in (pk, title, body, url, created.isoformat(), updated.isoformat())]
        if len(chunk) < CHUNK:
            return
        last = chunk[-1][0]


def _cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value


def _queue_unavailable(exc: Exception) -> JsonResponse:
    if isinstance(exc, OutOfMemoryError):
        # noeviction: the queue keeps its jobs and refuses new ones until workers drain it or memory is raised.
        reason = "the queue is full (its Redis refuses writes: out of memory); try again later"
    else:
        reason = "the queue is not reachable"
    return JsonResponse(
        {"error": f"Service unavailable: {reason}.", "component": "queue", "detail": str(exc)},
        status=503,
    )


@require_POST
@api_login_required
def create_export(request: HttpRequest) -> JsonResponse:
    try:
        data, files = request_data(request)
    except BadPayload as exc:
        return exc.response()
    # A browser's form post carries its CSRF token as a field.
    supplied = sorted((set(data) | set(files)) - {"csrfmiddlewaretoken"})
    if supplied:
        message = "Not accepted: an export takes no parameters and goes to your account's e-mail address."
        return JsonResponse({"errors": {field: [message] for field in supplied}}, status=400)
    if not request.user.email:
        return JsonResponse({"error": "Your account has no e-mail address to send the export to."}, status=400)
    try:
        job = django_rq.get_queue(QUEUE).enqueue(
            export_records_csv,
            request.user.pk,
            meta={"user_id": request.user.pk},
            job_timeout=settings.JOB_TIMEOUT,
            retry=Retry(max=3, interval=RETRY_INTERVALS),
            result_ttl=7 * 24 * 3600,
            failure_ttl=7 * 24 * 3600,
        )
    except (RedisConnectionError, RedisTimeoutError, OutOfMemoryError) as exc:
        return _queue_unavailable(exc)
    status_url = reverse("records:export-status", args=[job.id])
    response = JsonResponse({"job_id": job.id, "status": _status(job), "status_url": status_url}, status=202)
    response["Location"] = status_url
    return response


def _status(job: Job) -> str:
    status = job.get_status(refresh=False)
    return str(getattr(status, "value", status))


@require_safe
@api_login_required
def export_status(request: HttpRequest, job_id: str) -> HttpResponse:
    queue = django_rq.get_queue(QUEUE)
    try:
        job = Job.fetch(job_id, connection=queue.connection)
    except NoSuchJobError:
        job = None
    except (RedisConnectionError, RedisTimeoutError) as exc:
        return _queue_unavailable(exc)
    # Another user's job is "not found" too: its existence is none of this user's business.
    if job is None or job.meta.get("user_id") != request.user.pk:
        return JsonResponse({"error": f"Export job {job_id} not found."}, status=404)
    status = _status(job)
    body: dict[str, object] = {"job_id": job.id, "status": status, "result_url": None, "error": None}
    if status == "finished":
        result = job.return_value() or {}
        body["result_url"] = result.get("url")
    elif status == "failed":
        failure = job.latest_result()
        lines = ((failure.exc_string if failure else None) or "").strip().splitlines()
        body["error"] = lines[-1] if lines else "failed"
    return JsonResponse(body)
