from django.conf import settings
from django.contrib import admin
from django.contrib.auth.views import LoginView, LogoutView
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.urls import include, path, re_path

from kiln.errors import error_response
from kiln.middleware import payload_too_large

# /healthz and /readyz: kiln.middleware.HealthProbeMiddleware, before Host header validation.
urlpatterns = [
    path("admin/", admin.site.urls),
    # Only these two of django.contrib.auth.urls: its password reset would mail links built from the Host header.
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", LogoutView.as_view(), name="logout"),
    path("", include("records.urls")),
]

if settings.DEBUG:
    from django.conf.urls.static import static

    urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)

if settings.KILN_BENCH_STATIC:  # benchmarks only (kiln.settings): the static files through Django, for comparison
    from django.views.static import serve

    urlpatterns += [re_path(r"^bench-static/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT})]


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    # Django reports RequestDataTooBig as a SuspiciousOperation (400); it is really a 413.
    if isinstance(exception, RequestDataTooBig):
        return payload_too_large(request)
    return error_response(request, 400, "Bad request.")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(request, 404, "Not found.")


def server_error(request: HttpRequest) -> HttpResponse:
    return error_response(request, 500, "Internal server error.")


handler400 = bad_request
handler404 = not_found
handler500 = server_error
