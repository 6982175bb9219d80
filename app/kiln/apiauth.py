"""Who may write through the API: a Django user, from the session (a browser) or from HTTP Basic (scripts, curl).

Reads stay public; each view that writes, and the export views, are wrapped in `api_login_required`. Anonymous
requests get a 401 JSON error instead of the HTML login redirect of the pages.
"""

import base64
import binascii
import logging
from collections.abc import Callable
from functools import wraps

from django.contrib.auth import authenticate
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

logger = logging.getLogger(__name__)

View = Callable[..., HttpResponse]


def api_login_required(view: View) -> View:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        return _refusal(request) or view(request, *args, **kwargs)

    # The middleware's CSRF check would refuse an anonymous or Basic-auth client before it learns what is missing;
    # _refusal applies it to session users, whose cookie a browser sends unasked.
    return csrf_exempt(wrapper)


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the request may go on (request.user is then a user); else the 401/403 response saying why."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        # A browser that cached Basic credentials (after a 401 prompt) sends them unasked too, even for another
        # site's form: what it marks as coming from elsewhere writes nothing. Scripts send no Sec-Fetch-Site.
        if request.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
            message = "HTTP Basic credentials are not accepted from another site's page."
            return JsonResponse({"error": message}, status=403)
        user = _basic_user(request, credentials.strip())
        if user is None:
            return _unauthorized("Invalid HTTP Basic credentials: unknown user, wrong password or inactive account.")
        request.user = user
        return None
    if scheme:
        return _unauthorized(f"Unsupported Authorization scheme {scheme!r}: use HTTP Basic or log in.")
    if not request.user.is_authenticated:
        return _unauthorized(
            f"Authentication required: log in ({reverse('login')}) or send HTTP Basic credentials of a user."
        )
    reason = _csrf_failure(request)
    if reason:
        return JsonResponse({"error": f"CSRF check failed: {reason}"}, status=403)
    return None


def _unauthorized(message: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=401)
    response["WWW-Authenticate"] = 'Basic realm="Kiln API", charset="UTF-8"'
    return response


def _basic_user(request: HttpRequest, credentials: str) -> AbstractBaseUser | None:
    try:
        username, sep, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        username, sep, password = "", "", ""
    # authenticate() refuses inactive users and hashes even for unknown names, so timing tells nothing.
    user = authenticate(request, username=username, password=password) if sep else None
    if user is None:
        # nginx's access log has the client's address; this names the account tried.
        logger.warning("API Basic authentication failed", extra={"username": username, "path": request.path})
    return user


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request: HttpRequest, reason: str) -> str:
        return reason  # the reason, for a JSON error, instead of Django's HTML 403 page


def _csrf_failure(request: HttpRequest) -> str | None:
    check = _CsrfCheck(lambda _request: HttpResponse())
    check.process_request(request)
    return check.process_view(request, None, (), {})
