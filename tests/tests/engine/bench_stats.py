"""XML-RPC throughput and latency of stats(ID) on one engine, from Python's
standard client. argv: URL SESSION SECONDS THREADS. Prints JSON."""
import json
import sys
import threading
import time
import xmlrpc.client

url, sid, secs, threads = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
lat = []
lock = threading.Lock()


def worker():
    proxy = xmlrpc.client.ServerProxy(url)
    mine = []
    end = time.time() + secs
    while time.time() < end:
        t = time.perf_counter()
        proxy.stats(sid)
        mine.append(time.perf_counter() - t)
    with lock:
        lat.extend(mine)


start = time.time()
ts = [threading.Thread(target=worker) for _ in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
elapsed = time.time() - start
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
print(json.dumps({"threads": threads, "calls": len(lat), "calls_per_s": len(lat) / elapsed,
                  "p50_ms": p(0.50), "p99_ms": p(0.99)}))
