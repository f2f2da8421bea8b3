"""Two engines driven by Python's standard xmlrpc.client alone.

argv: URL_A URL_B. Engine A publishes two synthetic streams, engine B
subscribes to both; both must play with continuity >= 0.99. Then A stops
one: B's session for it must end while the other plays on. Prints one JSON
object with what it saw (the Rust test checks the UDP sockets itself).
"""
import json
import sys
import time
import xmlrpc.client

a = xmlrpc.client.ServerProxy(sys.argv[1])
b = xmlrpc.client.ServerProxy(sys.argv[2])


def wait(what, pred, limit=30.0):
    end = time.time() + limit
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.25)
    raise SystemExit(f"timed out waiting for {what}")


def session(proxy, sid):
    return next(s for s in proxy.sessions() if s["id"] == sid)


p1 = a.publish({"title": "first", "input": "synthetic", "bitrate_kbps": 300})
p2 = a.publish({"title": "second", "input": "synthetic", "bitrate_kbps": 300})
streams = {sid: session(a, sid)["stream"] for sid in (p1, p2)}
assert all(streams.values()), streams
s1 = b.subscribe({"stream": streams[p1]})
s2 = b.subscribe({"stream": streams[p2]})

# Both play for a while.
for sid in (s1, s2):
    wait(f"{sid} playing 8 s", lambda: b.stats(sid).get("chunks_played", 0) >= 80)
lines = {sid: b.stats(sid) for sid in (s1, s2)}
for sid, line in lines.items():
    assert line["continuity"] >= 0.99, (sid, line)
    for key in ("t_ms", "stream", "continuity", "buffer_ms", "neighbours", "down_kbps", "up_kbps"):
        assert key in line, (key, line)
totals = a.stats("")
assert totals["engine"]["udp_sockets"] == 1, totals
assert set(totals["sessions"]) == {p1, p2}, totals

# Stop the first at the publisher: it ends at the subscriber, the other goes on.
assert a.stop(p1) is True
ended = wait("the stopped stream to end at the subscriber",
             lambda: session(b, s1) if session(b, s1)["state"] == "ended" else None)
before = b.stats(s2)["chunks_played"]
time.sleep(3)
after = b.stats(s2)
assert session(b, s2)["state"] == "playing", b.sessions()
assert after["chunks_played"] >= before + 25, (before, after)
assert after["continuity"] >= 0.99, after
assert session(a, p1)["state"] == "ended" and session(a, p2)["state"] == "playing", a.sessions()

print(json.dumps({
    "continuity": {k: v["continuity"] for k, v in lines.items()},
    "ended": ended,
    "second_after_stop": after,
    "publisher_sessions": a.sessions(),
}))
