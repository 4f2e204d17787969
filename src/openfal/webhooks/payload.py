"""The JSON body a webhook delivers: the hosted platform's shape.

It is built from the stored result at each attempt rather than stored a second time (a
result may be large); the same stored result always gives the same bytes.
"""

from __future__ import annotations

import json
from typing import Any


def webhook_body(request_id: str, gateway_request_id: str, result_status: int,
                 result_body: bytes) -> bytes:
    """``{request_id, gateway_request_id, status, payload, error[, payload_error]}``.

    On success ``payload`` is the result; on failure it is the error body (the 422
    ``detail``, ``{"detail", "error_type"}``, ...), so a receiver sees why without fetching
    the result. ``payload_error`` appears only when the stored body is not JSON.
    """
    ok = 200 <= result_status < 300
    document: dict[str, Any] = {
        "request_id": request_id,
        "gateway_request_id": gateway_request_id,
        "status": "OK" if ok else "ERROR",
        "payload": None,
        "error": None if ok else f"Invalid status code: {result_status}",
    }
    try:
        document["payload"] = json.loads(result_body)
    except ValueError as exc:
        document["payload_error"] = f"The result is not valid JSON: {exc}"
    return json.dumps(document, separators=(",", ":")).encode()
