"""The fields of an API write: a JSON object of plain values, or form data. Anything else is a 400 saying why."""

import json
from collections.abc import Mapping

from django.http import HttpRequest, JsonResponse
from django.utils.datastructures import MultiValueDict


class BadPayload(Exception):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors

    def response(self) -> JsonResponse:
        return JsonResponse({"errors": self.errors}, status=400)


def request_data(request: HttpRequest) -> tuple[Mapping[str, object], MultiValueDict]:
    """(fields, files) of a POST: its JSON object when it says application/json, else its form data and files."""
    if request.content_type != "application/json":
        return request.POST, request.FILES
    try:
        data = json.loads(request.body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadPayload({"__all__": [f"Invalid JSON: {exc}"]}) from None
    except RecursionError:
        # json's decoder recurses once per nesting level: a few KB of "[" exhaust the stack.
        raise BadPayload({"__all__": ["Invalid JSON: nested too deeply."]}) from None
    if not isinstance(data, dict):
        raise BadPayload({"__all__": ["Expected a JSON object."]})
    # Form fields take plain values; a list or object would be stored as its str(), which recurses as deep as it is.
    nested = {
        field: ["Expected a string, number, boolean or null, not a JSON array or object."]
        for field, value in data.items()
        if isinstance(value, list | dict)
    }
    if nested:
        raise BadPayload(nested)
    return data, MultiValueDict()
