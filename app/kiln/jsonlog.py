"""One JSON object per log line, so journald/supervisor logs stay machine-parseable."""

import json
import logging
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else was passed via `extra=` and is worth keeping.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            if key == "request":  # Django passes the HttpRequest itself; keep it small.
                value = {"method": getattr(value, "method", None), "path": getattr(value, "path", None)}
            entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class WithoutTraceback(logging.Filter):
    """For records about a client's bad request (Django's refused Host header): the line says what was refused; a
    traceback of Django's own validation would only look like a server fault in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True
