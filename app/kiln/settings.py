"""Kiln settings: everything that differs between machines comes from the environment.

If KILN_ENV_FILE names a file it is read first; real environment variables win over it.
"""

import importlib.util
import os
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if os.environ.get("KILN_ENV_FILE"):
    environ.Env.read_env(os.environ["KILN_ENV_FILE"], overwrite=False)

DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY environment variable is required when DEBUG is off "
            "(set it in the environment or in the file named by KILN_ENV_FILE)."
        )
    SECRET_KEY = "django-insecure-dev-only-key"  # noqa: S105 - DEBUG-only fallback

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# The site's origin for links in e-mail, which must never come from a request's Host header (the client picks it).
# Default: the first name in ALLOWED_HOSTS, where the operator configures the domain.
_named_hosts = [host.lstrip(".") for host in ALLOWED_HOSTS if host.lstrip(".") not in ("", "*")]
SITE_URL = env.str("SITE_URL", default="") or f"{'http' if DEBUG else 'https'}://{(_named_hosts or ['localhost'])[0]}"
_site = urlsplit(SITE_URL)
if _site.scheme not in ("http", "https") or not _site.hostname or _site.path.strip("/") or _site.query + _site.fragment:
    raise ImproperlyConfigured(f"SITE_URL must be the site's origin, like https://example.com (got {SITE_URL!r}).")
SITE_URL = f"{_site.scheme}://{_site.netloc}"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_rq",
    "anymail",
    "records",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Before anything reads the body, so oversized uploads are refused without being buffered.
    "kiln.middleware.UploadLimitMiddleware",
    # Before CommonMiddleware, whose Host header validation would refuse probes by IP address.
    "kiln.middleware.HealthProbeMiddleware",
    "kiln.middleware.ServiceUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "kiln.urls"
WSGI_APPLICATION = "kiln.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "kiln" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database (MySQL/MariaDB via mysqlclient) ---
# Not a setting (upper case): Django's error pages would show its password.
_database_url = env.str("DATABASE_URL", default="mysql://kiln@localhost/kiln?unix_socket=/run/mysqld/mysqld.sock")
DATABASES = {"default": env.db_url_config(_database_url)}
_db_options = DATABASES["default"].setdefault("OPTIONS", {})
# The URL's options as Kiln's own clients read them (kiln-ready, kiln-backup: database_url in kiln_ready.py; README,
# "Managed databases and Redis over TLS"; tests/tools/test_managed_tls.py keeps the two in step). django-environ hands
# every option it does not know to mysqlclient as it is: ?ssl-ca=FILE would fail at the first query ("an invalid
# keyword argument"), a misspelt one too. The TLS options are spelt as MySQL's and MariaDB's clients spell them.
_DB_URL_TLS = ("ssl-mode", "ssl-ca", "ssl-cert", "ssl-key")
_DB_URL_ENVIRON = ("conn_max_age", "conn_health_checks", "atomic_requests", "autocommit", "disable_server_side_cursors")
_DB_URL_OTHER = ("unix_socket", *_DB_URL_ENVIRON, "charset", "connect_timeout", "init_command", "isolation_level")
_DB_URL_OTHER += ("read_timeout", "write_timeout")
_db_tls: dict[str, str] = {}
_seen: set[str] = set()
for _name, _value in parse_qsl(urlsplit(_database_url).query, keep_blank_values=True):
    _key = _name.lower() if _name.lower() in _DB_URL_ENVIRON else _name  # django-environ's own: any case
    if _key not in _DB_URL_TLS + _DB_URL_OTHER:
        raise ImproperlyConfigured(
            f"DATABASE_URL option {_name!r} is not one Kiln knows "
            f"(TLS: {', '.join(_DB_URL_TLS)}; also: {', '.join(_DB_URL_OTHER)})."
        )
    if not _value or _key in _seen:
        raise ImproperlyConfigured(f"DATABASE_URL option {_name!r} {'is given twice' if _value else 'has no value'}.")
    _seen.add(_key)
    if _key in _DB_URL_TLS:
        _db_tls[_key] = _value
        _db_options.pop(_name, None)
if _db_tls:
    _mode = _db_tls.pop("ssl-mode", "").upper()
    if _mode not in ("", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY"):
        raise ImproperlyConfigured(f"DATABASE_URL: ssl-mode={_mode} is not REQUIRED, VERIFY_CA or VERIFY_IDENTITY.")
    if ("ssl-cert" in _db_tls) != ("ssl-key" in _db_tls):
        raise ImproperlyConfigured("DATABASE_URL: a client certificate needs both ssl-cert and ssl-key.")
    # A CA is given to check the server against (MySQL's client does so with REQUIRED too). VERIFY_IDENTITY in any
    # case: mysqlclient on libmariadb checks the host name with either, on libmysqlclient only with this one.
    _verify = "ssl-ca" in _db_tls or _mode.startswith("VERIFY_")
    _db_options["ssl_mode"] = "VERIFY_IDENTITY" if _verify else "REQUIRED"
    if _db_tls:
        _db_options["ssl"] = {k.removeprefix("ssl-"): v for k, v in _db_tls.items()}
_db_options.setdefault("charset", "utf8mb4")
# Fail fast (readyz, 503 pages) instead of hanging a worker when the DB host is unreachable.
_db_options.setdefault("connect_timeout", 5)
DATABASES["default"].setdefault("CONN_MAX_AGE", 60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"].setdefault("TEST", {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache and queue are separate servers with different eviction policies ---
CACHE_URL = env.str("CACHE_URL", default="redis://127.0.0.1:6379/0")
QUEUE_URL = env.str("QUEUE_URL", default="redis://127.0.0.1:6380/0")

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": CACHE_URL,
        "KEY_PREFIX": "kiln",
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 2,
        },
    }
}

# The longest an rq job may run, in seconds: Kiln gives the app JOB_TIMEOUT (the operator's, else job-timeout of the
# contract in pyproject.toml), and every stop of the workers waits that long for a running job.
JOB_TIMEOUT = env.int("JOB_TIMEOUT", default=300)
# How long the link to a CSV export (mailed, and in the job's status) works, in seconds. At most 7 days: the longest an
# S3 presigned URL lives. The file itself stays until kiln-retention (local media) or the bucket's lifecycle removes it.
_link_max_age = env.str("EXPORT_LINK_MAX_AGE", default="86400")
EXPORT_LINK_MAX_AGE = int(_link_max_age) if _link_max_age.strip().isdigit() else 0
if not 1 <= EXPORT_LINK_MAX_AGE <= 7 * 24 * 3600:
    raise ImproperlyConfigured(
        f"EXPORT_LINK_MAX_AGE={_link_max_age!r}: must be a number of seconds from 1 to 604800 (7 days)."
    )
# Enqueue at once (django-rq's default waits for the DB commit): the job id is the API response.
RQ = {"COMMIT_MODE": "auto"}
RQ_QUEUES = {
    "default": {"URL": QUEUE_URL, "DEFAULT_TIMEOUT": JOB_TIMEOUT},
    "export": {"URL": QUEUE_URL, "DEFAULT_TIMEOUT": JOB_TIMEOUT},
}

# --- Static and media ---
STATIC_URL = "/static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))
MEDIA_URL = "/media/"
MEDIA_ROOT = env.path("MEDIA_ROOT", default=str(BASE_DIR / "media"))

# Benchmarks only (`make bench`, bench/run.sh): the static files also through Django, at /bench-static/ (Django's own
# django.views.static.serve), to compare with nginx serving the same files. Off unless KILN_BENCH_STATIC is set:
# never on a production server.
KILN_BENCH_STATIC = env.bool("KILN_BENCH_STATIC", default=False)

MAX_UPLOAD_BYTES = env.int("MAX_UPLOAD_BYTES", default=10 * 1024 * 1024)
# Same limit for in-memory form/JSON data so Django's own check agrees with nginx and the middleware.
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_UPLOAD_BYTES
FILE_UPLOAD_PERMISSIONS = 0o640

AWS_STORAGE_BUCKET_NAME = env.str("AWS_STORAGE_BUCKET_NAME", default="")
if AWS_STORAGE_BUCKET_NAME:
    _s3_options = {
        "bucket_name": AWS_STORAGE_BUCKET_NAME,
        "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default="") or None,
        "region_name": env.str("AWS_S3_REGION_NAME", default="") or None,
        # Unset keys fall through to boto3's own chain (instance role, ~/.aws).
        "access_key": env.str("AWS_ACCESS_KEY_ID", default="") or None,
        "secret_key": env.str("AWS_SECRET_ACCESS_KEY", default="") or None,
        "custom_domain": env.str("MEDIA_CDN_DOMAIN", default="") or None,
        "file_overwrite": False,
        "default_acl": None,
    }
    _media_storage = {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": _s3_options}
    # Links to exports are presigned URLs through the S3 endpoint, which expire (a CDN domain would serve the file
    # unsigned, for good), signed with SigV4 (boto's default for presigning is SigV2, which AWS is retiring); a retry
    # of the job overwrites its own file, whose name the link derives.
    _s3_exports = {
        **_s3_options,
        "custom_domain": None,
        "querystring_auth": True,
        "signature_version": "s3v4",
        "file_overwrite": True,
    }
    _export_storage = {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": _s3_exports}
else:
    _media_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    _export_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"allow_overwrite": True}}
STORAGES = {
    "default": _media_storage,
    # CSV exports (records/exports.py): exports/ in the media storage, handed out through expiring links.
    "exports": _export_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- E-mail ---
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
ANYMAIL_ESP = env.str("ANYMAIL_ESP", default="").strip().lower()
ANYMAIL_API_KEY = env.str("ANYMAIL_API_KEY", default="")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="")
if ANYMAIL_ESP and not DEFAULT_FROM_EMAIL:
    # The fallback below is no address an ESP has verified: it would refuse every mail, at send time, in the worker.
    raise ImproperlyConfigured(
        f"DEFAULT_FROM_EMAIL is required with ANYMAIL_ESP={ANYMAIL_ESP!r}: set it to a sender address verified "
        "with that provider."
    )
DEFAULT_FROM_EMAIL = DEFAULT_FROM_EMAIL or "Kiln <noreply@localhost>"
SERVER_EMAIL = DEFAULT_FROM_EMAIL
if ANYMAIL_ESP and ANYMAIL_API_KEY:
    if importlib.util.find_spec(f"anymail.backends.{ANYMAIL_ESP}") is None:
        raise ImproperlyConfigured(f"ANYMAIL_ESP={ANYMAIL_ESP!r} is not an ESP known to django-anymail")
    EMAIL_BACKEND = f"anymail.backends.{ANYMAIL_ESP}.EmailBackend"
    # Most ESPs call their credential API_KEY; the odd ones out are mapped here.
    _key_name = {"postmark": "SERVER_TOKEN", "mailersend": "API_TOKEN"}.get(ANYMAIL_ESP, "API_KEY")
    ANYMAIL = {f"{ANYMAIL_ESP.upper()}_{_key_name}": ANYMAIL_API_KEY}

# --- HTTPS (TLS ends at nginx) ---
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# Load balancer / supervisor probes speak plain HTTP and must not be redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# Writes and exports need a Django user (create one with `manage.py createsuperuser`); reads are public.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "records:list"
LOGOUT_REDIRECT_URL = "records:list"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Logging: JSON lines on stdout ---
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "kiln.jsonlog.JsonFormatter"}},
    "filters": {"without_traceback": {"()": "kiln.jsonlog.WithoutTraceback"}},
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "json"},
        "stdout_client_error": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "json",
            "filters": ["without_traceback"],
        },
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        # Replace Django's default handlers (console only when DEBUG, mail_admins) with the root's.
        "django": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "django.server": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "rq.worker": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        # A request with a Host header ALLOWED_HOSTS refuses is the client's error (a 400): one line, no traceback.
        "django.security.DisallowedHost": {"handlers": ["stdout_client_error"], "level": LOG_LEVEL, "propagate": False},
    },
}

SENTRY_DSN = env.str("SENTRY_DSN", default="")
if SENTRY_DSN:
    import sentry_sdk

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        environment=env.str("SENTRY_ENVIRONMENT", default="production"),
        release=env.str("KILN_VERSION", default="") or None,
        traces_sample_rate=env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0),
        send_default_pii=False,
    )
    from sentry_sdk.integrations.logging import ignore_logger

    ignore_logger("django.security.DisallowedHost")  # bots' Host headers are no errors to report

RECORDS_PAGE_SIZE = 20
RECORDS_LIST_CACHE_TTL = 300
# Seconds a shared cache may serve the list to visitors without an account (records/views.py): a new record shows
# there within this long; a logged-in user and the API always see it at once.
RECORDS_LIST_PUBLIC_MAX_AGE = 5
