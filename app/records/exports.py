"""CSV export of all records: enqueued on the `export` rq queue, result e-mailed as a link."""

import csv
import io
import json
from urllib.parse import urljoin

import django_rq
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.mail import send_mail
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job

from records.forms import ExportForm, errors_as_dict
from records.models import Record

QUEUE = "export"
RETRY_INTERVALS = [10, 60, 300]
FIELDS = ["id", "title", "body", "attachment", "created", "updated"]


def export_records_csv(email: str, base_url: str) -> dict[str, str]:
    """rq job: write every record to a CSV in media storage and mail the link to `email`."""
    job = get_current_job()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(FIELDS)
    for record in Record.objects.order_by("id").iterator(chunk_size=500):
        row = record.as_dict()
        writer.writerow([row[field] or "" for field in FIELDS])
    name = default_storage.save(
        f"exports/records-{job.id if job else 'manual'}.csv",
        ContentFile(buffer.getvalue().encode("utf-8")),
    )
    # Local storage yields a path; S3/CDN yields an absolute URL that urljoin keeps as is.
    url = urljoin(base_url, default_storage.url(name))
    send_mail(
        subject="Your Kiln records export is ready",
        message=f"Your CSV export of all records is ready:\n\n{url}\n",
        from_email=None,
        recipient_list=[email],
    )
    return {"name": name, "url": url}


def _queue_unavailable(exc: Exception) -> JsonResponse:
    return JsonResponse(
        {"error": "Service unavailable: the queue is not reachable.", "component": "queue", "detail": str(exc)},
        status=503,
    )


@csrf_exempt
@require_POST
def create_export(request: HttpRequest) -> JsonResponse:
    form = ExportForm(request.POST if request.content_type != "application/json" else _json(request))
    if not form.is_valid():
        return JsonResponse({"errors": errors_as_dict(form)}, status=400)
    try:
        job = django_rq.get_queue(QUEUE).enqueue(
            export_records_csv,
            form.cleaned_data["email"],
            request.build_absolute_uri("/"),
            job_timeout=settings.EXPORT_JOB_TIMEOUT,
            retry=Retry(max=3, interval=RETRY_INTERVALS),
            result_ttl=7 * 24 * 3600,
            failure_ttl=7 * 24 * 3600,
        )
    except (RedisConnectionError, RedisTimeoutError) as exc:
        return _queue_unavailable(exc)
    status_url = reverse("records:export-status", args=[job.id])
    response = JsonResponse({"job_id": job.id, "status": _status(job), "status_url": status_url}, status=202)
    response["Location"] = status_url
    return response


def _json(request: HttpRequest) -> dict[str, object]:
    try:
        data = json.loads(request.body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _status(job: Job) -> str:
    status = job.get_status(refresh=False)
    return str(getattr(status, "value", status))


@require_safe
def export_status(request: HttpRequest, job_id: str) -> JsonResponse:
    queue = django_rq.get_queue(QUEUE)
    try:
        job = Job.fetch(job_id, connection=queue.connection)
    except NoSuchJobError:
        return JsonResponse({"error": f"Export job {job_id} not found."}, status=404)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        return _queue_unavailable(exc)
    status = _status(job)
    body: dict[str, object] = {"job_id": job.id, "status": status, "result_url": None, "error": None}
    if status == "finished":
        result = job.return_value() or {}
        body["result_url"] = result.get("url")
    elif status == "failed":
        lines = (job.exc_info or "").strip().splitlines()
        body["error"] = lines[-1] if lines else "failed"
    return JsonResponse(body)
