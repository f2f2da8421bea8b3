"""Bad requests are refused, counted, and the engine keeps serving.

argv: URL (with the token), HOST, PORT.
"""
import base64
import http.client
import json
import sys
import xmlrpc.client

url, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
good = xmlrpc.client.ServerProxy(url)


def status_of(proxy_url):
    try:
        xmlrpc.client.ServerProxy(proxy_url).servers()
    except xmlrpc.client.ProtocolError as e:
        return e.errcode
    return 200


seen = {}
seen["wrong_token"] = status_of(f"http://p2ner:not-the-token@{host}:{port}/RPC2")
seen["no_token"] = status_of(f"http://{host}:{port}/RPC2")
assert seen["wrong_token"] == 401 and seen["no_token"] == 401, seen

token = url.split("@")[0].rsplit(":", 1)[1]
auth = "Basic " + base64.b64encode(f"p2ner:{token}".encode()).decode()


def post(body):
    c = http.client.HTTPConnection(host, port, timeout=20)
    try:
        c.request("POST", "/RPC2", body=body,
                  headers={"Content-Type": "text/xml", "Authorization": auth})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    except (BrokenPipeError, ConnectionResetError) as e:
        # The server may answer 413 and close before the body is all sent.
        return "closed", str(e)
    finally:
        c.close()


big = b"<?xml version='1.0'?><methodCall><methodName>servers</methodName><params><param><value><string>" \
      + b"x" * (10 * 1024 * 1024) + b"</string></value></param></params></methodCall>"
seen["big"] = post(big)[0]
assert seen["big"] in (413, "closed"), seen

status, text = post(b"<methodCall><methodName>servers</methodName><params>")
seen["malformed"] = (status, "faultCode" in text)
assert status == 200 and "faultCode" in text, (status, text)

status, text = post(b"\xff\xfe not even text")
assert status == 200 and "faultCode" in text, (status, text)

try:
    good.no_such_method()
    raise SystemExit("an unknown method was answered")
except xmlrpc.client.Fault as f:
    seen["unknown"] = f.faultCode

# system.* and multicall still work.
assert "stats" in good.system.listMethods()
assert "session id" in good.system.methodHelp("publish")
multi = xmlrpc.client.MultiCall(good)
multi.servers()
multi.sessions()
results = list(multi())
assert isinstance(results[0], list) and isinstance(results[1], list), results

counted = good.stats("")["engine"]["frontends"]["xmlrpc"]
assert counted.get("unauthorized", 0) >= 2, counted
assert counted.get("too_large", 0) >= 1, counted
assert counted.get("malformed", 0) >= 2, counted
assert counted.get("unknown_method", 0) >= 1, counted
assert good.servers(), "still serving"
print(json.dumps({"seen": seen, "counted": counted}))
