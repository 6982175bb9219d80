import logging
from collections.abc import Callable

import redis.exceptions
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django_redis import get_redis_connection
from django_redis.exceptions import ConnectionInterrupted

from kiln import health
from kiln.errors import error_response

logger = logging.getLogger(__name__)


class UploadLimitMiddleware:
    """Refuse bodies over MAX_UPLOAD_BYTES from Content-Length, before anything buffers them."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.MAX_UPLOAD_BYTES:
            return payload_too_large(request)
        return self.get_response(request)


def payload_too_large(request: HttpRequest) -> HttpResponse:
    limit = settings.MAX_UPLOAD_BYTES
    return error_response(
        request,
        413,
        f"Request body too large: the limit is {limit} bytes.",
        max_upload_bytes=limit,
    )


class HealthProbeMiddleware:
    """Serve /healthz and /readyz before CommonMiddleware validates the Host header.

    Load balancers and uptime monitors probe by IP address, which ALLOWED_HOSTS rightly does not list. The probes
    build nothing from the Host header, so they alone may skip that check; every other path keeps it.
    """

    PROBES: dict[str, Callable[[HttpRequest], HttpResponse]] = {"/healthz": health.healthz, "/readyz": health.readyz}

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = self.PROBES.get(request.path_info)
        return probe(request) if probe else self.get_response(request)


class ServiceUnavailableMiddleware:
    """Turn a down database or cache into a 503 naming the dependency instead of a 500 traceback."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        component = failing_component(exception)
        if component is None:
            return None
        logger.error("%s unavailable: %s", component, exception, extra={"component": component})
        return error_response(
            request, 503, f"Service unavailable: the {component} is not reachable.", component=component
        )


def failing_component(exception: BaseException) -> str | None:
    if isinstance(exception, ConnectionInterrupted):
        return "cache"
    if isinstance(exception, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        # Cache and queue are both Redis and django-redis does not wrap every error: ask the cache.
        try:
            get_redis_connection("default").ping()
        except Exception:  # noqa: BLE001
            return "cache"
        return "queue"
    if isinstance(exception, OperationalError | InterfaceError):
        return "database"
    if isinstance(exception, DatabaseError) and isinstance(exception.__cause__, OSError):
        return "database"
    return None
