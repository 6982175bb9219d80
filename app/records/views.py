from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_safe

from records import listcache
from records.forms import RecordForm
from records.models import Record


# require_safe, not require_GET: uptime monitors probe with HEAD.
@require_safe
def record_list(request: HttpRequest) -> HttpResponse:
    page = listcache.get_page(request.GET.get("page"))
    return render(request, "records/list.html", {"page": page})


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
