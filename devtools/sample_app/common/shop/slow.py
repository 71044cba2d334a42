"""GET /slow/?ms=N: a request that takes N milliseconds (at most 10 s).

Stands in for a long page or report so that graceful restarts can be watched:
a request in flight when gunicorn is told to stop must still get its answer.
"""

import time

from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.http import require_GET

MAX_MS = 10_000


@require_GET
def slow(request):
    try:
        ms = max(0, min(int(request.GET.get("ms", "1000")), MAX_MS))
    except ValueError:
        return JsonResponse({"error": "ms must be an integer number of milliseconds"}, status=400)
    time.sleep(ms / 1000)
    return JsonResponse({"slept_ms": ms, "version": settings.RELEASE_VERSION})
