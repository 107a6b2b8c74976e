"""The official Telnyx Python SDK (`telnyx`, installed by ./dev setup) pointed at a
Switchboard listener instead of api.telnyx.com: sends one message and prints, as one JSON
line, what the SDK returned or raised. Driven by tests/sdk.rs.

    python3 tests/sdk/telnyx_sdk.py http://127.0.0.1:PORT
"""
import json
import sys

import telnyx

base = sys.argv[1]
# The SDK's own base is https://api.telnyx.com/v2, so Switchboard sees the path Telnyx would.
# max_retries=0: the SDK retries 429, 5xx and connection errors by default, which would hide
# what Switchboard answered the first time (and spend the test's rate limit).
client = telnyx.Telnyx(api_key="KEYsdk-test-key", base_url=base + "/v2", max_retries=0)


def codes(body):
    """Telnyx's error codes in a body of its shape ({"errors": [{"code": ...}]}), else []."""
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        return [e.get("code") for e in body["errors"] if isinstance(e, dict)]
    return []


try:
    m = client.messages.send(to="+15550100002", from_="+15550100001", text="hello")
    print(json.dumps({"ok": True, "id": m.data.id if m.data else None}))
except telnyx.APIStatusError as e:
    print(json.dumps({
        "ok": False,
        "type": type(e).__name__,
        # Whether the SDK's generic HTTP-error base class catches it, as an app would write it.
        "api_status_error": True,
        "rate_limit_error": isinstance(e, telnyx.RateLimitError),
        "status": e.status_code,
        "codes": codes(e.body),
        "body": e.body,
        "msg": e.message,
    }))
except telnyx.APIConnectionError as e:
    print(json.dumps({"ok": False, "type": type(e).__name__, "api_status_error": False, "msg": e.message}))
