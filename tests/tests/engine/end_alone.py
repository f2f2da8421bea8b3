"""Streams that fail end alone. argv: URL.

One stream plays on; one's input ends (synthetic chunks=20); one's
scheduler panics (the `panicky` fixture). Each ends with its reason and
the engine goes on answering.
"""
import json
import sys
import time
import xmlrpc.client

e = xmlrpc.client.ServerProxy(sys.argv[1])


def session(sid):
    return next(s for s in e.sessions() if s["id"] == sid)


def wait_state(sid, states, limit=30.0):
    end = time.time() + limit
    while time.time() < end:
        s = session(sid)
        if s["state"] in states:
            return s
        time.sleep(0.25)
    raise SystemExit(f"{sid} never reached {states}: {e.sessions()}")


good = e.publish({"title": "good", "input": "synthetic", "bitrate_kbps": 300})
short = e.publish({"title": "short", "input": "synthetic", "bitrate_kbps": 300,
                   "input_params": {"chunks": "20"}})
try:
    bad = e.publish({"title": "bad", "input": "synthetic", "bitrate_kbps": 300,
                     "scheduler": "panicky"})
    bad_end = wait_state(bad, ("failed",))
except xmlrpc.client.Fault as f:
    # A panic while the stream starts is refused there and then.
    bad_end = {"state": "failed", "reason": f.faultString}
assert "panic" in bad_end["reason"], bad_end

short_end = wait_state(short, ("ended", "failed"))
assert short_end["state"] == "ended" and "input ended" in short_end["reason"], short_end
time.sleep(1)
assert session(good)["state"] == "playing", e.sessions()
produced = e.stats(good)
assert e.servers(), "the engine still answers"
# A new stream still starts.
again = e.publish({"title": "again", "input": "synthetic", "bitrate_kbps": 300})
wait_state(again, ("playing",))
print(json.dumps({"bad": bad_end, "short": short_end, "good": produced}))
