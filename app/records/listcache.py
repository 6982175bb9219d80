"""The paginated record list, cached in Redis.

Every page key embeds a version number; any write bumps the version, so all cached pages
become unreachable at once (and expire by TTL) without scanning Redis for keys.
"""

import time

from django.conf import settings
from django.core.cache import cache
from django.core.paginator import EmptyPage, PageNotAnInteger, Paginator
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.http import Http404

from records.models import Record

VERSION_KEY = "records:list:version"


def _version() -> int:
    version = cache.get(VERSION_KEY)
    if version is None:
        # Start from the clock, not 1: after an eviction old page keys must not become valid again.
        cache.add(VERSION_KEY, time.time_ns(), timeout=None)
        version = cache.get(VERSION_KEY)
    return int(version)


def invalidate() -> None:
    try:
        cache.incr(VERSION_KEY)
    except ValueError:  # key evicted/missing
        cache.set(VERSION_KEY, time.time_ns(), timeout=None)


def page_key(version: int, number: int) -> str:
    return f"records:list:v{version}:p{number}"


def get_page(number: object) -> dict[str, object]:
    """Page `number` of the list as plain data; raises Http404 for a bad or out-of-range page."""
    try:
        number = int(number or 1)
    except (TypeError, ValueError):
        raise Http404("Invalid page") from None
    key = page_key(_version(), number)
    data = cache.get(key)
    if data is None:
        paginator = Paginator(Record.objects.all(), settings.RECORDS_PAGE_SIZE)
        try:
            page = paginator.page(number)
        except (EmptyPage, PageNotAnInteger):
            raise Http404("No such page") from None
        data = {
            "results": [record.as_dict() for record in page.object_list],
            "page": page.number,
            "num_pages": paginator.num_pages,
            "count": paginator.count,
            "has_next": page.has_next(),
            "has_previous": page.has_previous(),
        }
        cache.set(key, data, timeout=settings.RECORDS_LIST_CACHE_TTL)
    return data


def _on_write(**kwargs: object) -> None:
    # Bump now (a failing cache aborts the surrounding transaction, so the DB never gets ahead of it)
    # and again after commit, so a reader that re-cached the pre-commit list is invalidated too.
    invalidate()
    transaction.on_commit(invalidate, robust=True)


def connect_signals() -> None:
    post_save.connect(_on_write, sender=Record, dispatch_uid="records-list-cache-save")
    post_delete.connect(_on_write, sender=Record, dispatch_uid="records-list-cache-delete")
