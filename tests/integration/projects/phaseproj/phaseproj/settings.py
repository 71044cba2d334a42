"""Settings of a test project: the database comes from the libpq environment variables.

``phases``: expand/contract migrations (a post-deploy RemoveField, a later migration that depends on it).
``indexed`` (only with PHASEPROJ_INDEXED=1): a non-atomic CREATE UNIQUE INDEX CONCURRENTLY, which leaves
an INVALID index behind when it fails.
"""

import os

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["phases"] + (["indexed"] if os.environ.get("PHASEPROJ_INDEXED") else [])
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", ""),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
        "NAME": os.environ.get("PGDATABASE", "phaseproj"),
    }
}
