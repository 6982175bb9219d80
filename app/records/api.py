from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_safe

from kiln.apiauth import api_login_required
from kiln.payload import BadPayload, request_data
from records import listcache
from records.forms import RecordForm, errors_as_dict
from records.models import Record


def _page_url(request: HttpRequest, number: int) -> str:
    query = request.GET.copy()
    query["page"] = str(number)
    return f"{request.path}?{query.urlencode()}"


# Reads are public; a write is checked by api_login_required on _create, CSRF included for session users (the
# middleware only sees this outer view).
@csrf_exempt
@require_http_methods(["GET", "HEAD", "POST"])
def records(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _create(request)
    page = listcache.get_page(request.GET.get("page"))
    number = int(page["page"])
    return JsonResponse(
        {
            **page,
            "next": _page_url(request, number + 1) if page["has_next"] else None,
            "previous": _page_url(request, number - 1) if page["has_previous"] else None,
        }
    )


@api_login_required
def _create(request: HttpRequest) -> JsonResponse:
    try:
        data, files = request_data(request)
    except BadPayload as exc:
        return exc.response()
    form = RecordForm(data, files)
    if not form.is_valid():
        return JsonResponse({"errors": errors_as_dict(form)}, status=400)
    with transaction.atomic():
        record = form.save()
    body = record.as_dict()
    response = JsonResponse(body, status=201)
    response["Location"] = str(body["url"])
    return response


@require_safe
def record_detail(request: HttpRequest, pk: int) -> JsonResponse:
    record = Record.objects.filter(pk=pk).first()
    if record is None:
        return JsonResponse({"error": f"Record {pk} not found."}, status=404)
    return JsonResponse(record.as_dict())
