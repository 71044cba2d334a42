"""Settings of the sample shop.

Everything that differs between hosts comes from the environment: the database
from the libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE) and
the secret key from DJANGO_SECRET_KEY. The release version is the RELEASE
file beside manage.py, written by devtools/build_release.py.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

try:
    RELEASE_VERSION = (BASE_DIR / "RELEASE").read_text().strip() or "unknown"
except OSError:
    RELEASE_VERSION = "unknown"

# The fallback only lets management commands (makemigrations --check,
# collectstatic) run on a build machine; every host gets a real key.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "insecure-build-only-key-set-DJANGO_SECRET_KEY"
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.staticfiles",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "shopsite.middleware.release_header",
]

ROOT_URLCONF = "shopsite.urls"
WSGI_APPLICATION = "shopsite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PGDATABASE", "shop"),
        "USER": os.environ.get("PGUSER", ""),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
        "HOST": os.environ.get("PGHOST", ""),
        "PORT": os.environ.get("PGPORT", ""),
        # keep a connection per worker thread between requests, but check it
        # before reuse so a restarted database does not fail the next request
        "CONN_MAX_AGE": int(os.environ.get("DJANGO_CONN_MAX_AGE", "60")),
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {
            # shows up in pg_stat_activity: which release holds a connection
            "application_name": f"shopsite {RELEASE_VERSION}",
            "connect_timeout": 5,
        },
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "static"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "WARNING")},
}
