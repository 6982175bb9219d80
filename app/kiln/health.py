import contextlib
import time
from collections.abc import Callable

import django_rq
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from django_redis import get_redis_connection


def _probe(check: Callable[[], object]) -> dict[str, object]:
    start = time.perf_counter()
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", and we report it
        error: str | None = f"{type(exc).__name__}: {exc}"
    else:
        error = None
    return {"ok": error is None, "latency_ms": round((time.perf_counter() - start) * 1000, 2), "error": error}


def _check_database() -> None:
    connection = connections["default"]
    try:
        # Straight to the DB, never through the cache, so a warm cache cannot mask a dead database.
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception:
        # Drop the broken connection so the next probe reconnects once the DB is back.
        with contextlib.suppress(Exception):
            connection.close()
        raise


def _check_cache() -> None:
    get_redis_connection("default").ping()


def _check_queue() -> None:
    # A write, not a PING: a full queue Redis (noeviction) still answers PING but refuses every enqueue. SET NX of a
    # key that exists changes nothing (no AOF append per probe), yet a Redis out of memory refuses it like any write.
    django_rq.get_connection("default").set("kiln:readyz", 1, nx=True)


@require_safe
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


@require_safe
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {
        "database": _probe(_check_database),
        "cache": _probe(_check_cache),
        "queue": _probe(_check_queue),
    }
    ok = all(c["ok"] for c in checks.values())
    return JsonResponse({"ok": ok, **checks}, status=200 if ok else 503)
