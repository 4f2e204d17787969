"""Where a request's webhook goes: the URL checks, and what a request's options say."""

from __future__ import annotations

from typing import Any

from openfal import fetch
from openfal.store.base import WebhookTarget

# The key of a queued request's options (``RequestRecord.options``) that holds its URL.
URL_OPTION = "webhook_url"
# The user id deliveries name for a request made without an API key.
ANONYMOUS_USER = "anonymous"
MAX_URL_LENGTH = 2048


class InvalidTarget(ValueError):
    """A webhook URL that must not be called; the message says why."""


def check_target(url: str, policy: fetch.NetworkPolicy) -> None:
    """Refuse a webhook URL that is malformed, not http(s), or points where the server may
    not send requests (``policy``: loopback and private networks unless allowed).

    This resolves the host name, so call it off the event loop. Deliveries check again,
    on the address they connect to (``fetch.pinned_request``).
    """
    if len(url) > MAX_URL_LENGTH:
        raise InvalidTarget(f"must be at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidTarget("is not a valid URL: it contains spaces or control characters")
    try:
        fetch.check_public_url(url, policy)
    except fetch.FetchError as exc:
        raise InvalidTarget(str(exc)) from None


def webhook_target(options: dict[str, Any], key_id: str | None) -> WebhookTarget | None:
    """The webhook a queued request asked for when it was submitted, if any; its user is
    the API key that submitted the request."""
    url = options.get(URL_OPTION)
    if url is None:
        return None
    return WebhookTarget(url=url, user_id=key_id or ANONYMOUS_USER)
