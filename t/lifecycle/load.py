"""Bounded HTTP load on loopback: N threads, for S seconds, over a few paths.
Prints 'requests=N ok=N failed=N' and the first failures."""
import http.client
import sys
import threading
import time

port, seconds, nthreads = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
paths = sys.argv[4].split(",")
stop = time.time() + seconds
lock = threading.Lock()
counts = {"requests": 0, "ok": 0, "failed": 0}
failures = []


def worker(i):
    n = 0
    while time.time() < stop:
        path = paths[(i + n) % len(paths)]
        n += 1
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            c.close()
            good = r.status == 200
            why = f"{path}: {r.status} {body[:80]!r}"
        except Exception as e:  # a connection error is a failure too
            good, why = False, f"{path}: {e!r}"
        with lock:
            counts["requests"] += 1
            counts["ok" if good else "failed"] += 1
            if not good and len(failures) < 5:
                failures.append(why)


threads = [threading.Thread(target=worker, args=(i,)) for i in range(nthreads)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"requests={counts['requests']} ok={counts['ok']} failed={counts['failed']}")
for f in failures:
    print("  failure:", f)
sys.exit(0 if counts["failed"] == 0 and counts["ok"] > 0 else 1)
