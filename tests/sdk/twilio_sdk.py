"""The official Twilio Python SDK (`twilio`, installed by ./dev setup) pointed at a
Switchboard listener instead of api.twilio.com: sends one SMS and prints, as one JSON line,
what the SDK returned or raised. Driven by tests/sdk.rs.

    python3 tests/sdk/twilio_sdk.py http://127.0.0.1:PORT
"""
import json
import sys

from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

base = sys.argv[1]
client = Client("AC" + "0" * 32, "sdk-test-token")
# Every Twilio domain the SDK would call goes to Switchboard instead.
client.api.base_url = base
try:
    m = client.messages.create(to="+15550100", from_="+15550199", body="hello")
    print(json.dumps({"ok": True, "sid": m.sid}))
except TwilioRestException as e:
    print(json.dumps({"ok": False, "type": type(e).__name__, "status": e.status, "code": e.code, "msg": e.msg}))
