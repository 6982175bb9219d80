"""Error responses that never need the database or cache: JSON for API clients, tiny HTML otherwise."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string


def wants_json(request: HttpRequest) -> bool:
    if request.path.startswith(("/api/", "/healthz", "/readyz")):
        return True
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def error_response(request: HttpRequest, status: int, message: str, **extra: object) -> HttpResponse:
    if wants_json(request):
        return JsonResponse({"error": message, **extra}, status=status)
    # No request passed to the template on purpose: context processors could touch session/DB.
    html = render_to_string("error.html", {"status": status, "message": message})
    return HttpResponse(html, status=status)
