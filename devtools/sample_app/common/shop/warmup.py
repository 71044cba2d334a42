"""POST /warmup: run the order path for real, then roll it back.

The deploy sends this straight to a freshly restarted host, several at once, before
the host goes back into the load balancer. Each gunicorn worker thread then opens its
database connection and runs its first INSERTs (Django's query compilation, psycopg's
first prepared types, the imports of every module the view touches) on requests no
customer waits for. Nothing is kept: the whole request runs in a transaction that is
rolled back (sequences still advance; ids are not promised to be gapless anyway).

Body: the same as POST /orders/. Answers 200 with what the order would have been, or
the error POST /orders/ would have given. The load balancer does not route it (see the
sandbox's nginx.conf): it is for the deploy only.
"""

import json

from django.db import transaction
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import views


@csrf_exempt
@require_POST
def warmup(request):
    with transaction.atomic():
        response = views.create_order(request)
        transaction.set_rollback(True)
    if response.status_code != 201:
        return response
    return JsonResponse({"rolled_back": True, "order": json.loads(response.content)})
