"""Clients that give up: connect, send a request, close after a short while.
Usage: aborts.py PORT SECONDS THREADS PATH. Prints the number of aborts."""
import random
import socket
import sys
import threading
import time

port, seconds, nthreads, path = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
stop = time.time() + seconds
count = [0]
lock = threading.Lock()


def worker():
    while time.time() < stop:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            time.sleep(random.uniform(0.01, 0.2))
            s.close()
            with lock:
                count[0] += 1
        except OSError:
            time.sleep(0.01)


threads = [threading.Thread(target=worker) for _ in range(nthreads)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"aborts={count[0]}")
