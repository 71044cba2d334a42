"""Tag every response with the release that produced it.

The load generator counts versions from this header, which shows a rolling
deploy moving through the fleet request by request.
"""

from django.conf import settings


def release_header(get_response):
    def middleware(request):
        response = get_response(request)
        response["X-Release"] = settings.RELEASE_VERSION
        return response

    return middleware
