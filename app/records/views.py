from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_http_methods, require_safe

from records import listcache
from records.forms import RecordForm
from records.models import Record


# require_safe, not require_GET: uptime monitors probe with HEAD.
@require_safe
def record_list(request: HttpRequest) -> HttpResponse:
    page = listcache.get_page(request.GET.get("page"))
    response = render(request, "records/list.html", {"page": page})
    # The list is the same for every visitor without an account: public for a few seconds, so a shared cache (Kiln's
    # nginx: its snippets/kiln-page-cache.conf) answers the crowd and the app renders it once per lifetime. A logged-in
    # user's page names the user: private.
    if request.user.is_authenticated:
        patch_cache_control(response, private=True)
    else:
        patch_cache_control(response, public=True, max_age=settings.RECORDS_LIST_PUBLIC_MAX_AGE)
    return response


@require_safe
def record_detail(request: HttpRequest, pk: int) -> HttpResponse:
    record = get_object_or_404(Record, pk=pk)
    return render(request, "records/detail.html", {"record": record})


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def record_create(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = RecordForm(request.POST, request.FILES)
        if form.is_valid():
            with transaction.atomic():
                record = form.save()
            return redirect(record)
        return render(request, "records/form.html", {"form": form}, status=400)
    return render(request, "records/form.html", {"form": RecordForm()})
