"""A stand-in agent process for fairness tests: THREADS keep-alive connections, each sending
Messages requests in a loop for SECONDS, no agent name. Prints one JSON line of counts."""

import http.client
import json
import sys
import threading
import time

host, port, threads, seconds, cost = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
until = time.monotonic() + seconds
body = json.dumps({
    "model": "claude-sonnet-4-5",
    "max_tokens": 16,
    "stream": True,
    "messages": [{"role": "user", "content": "hello"}],
})
counts = {}
lock = threading.Lock()


def loop():
    conn = http.client.HTTPConnection(host, port, timeout=60)
    while time.monotonic() < until:
        conn.request("POST", "/v1/messages", body, {
            "content-type": "application/json",
            "anthropic-version": "2023-06-01",
            "x-api-key": "sk-ant-test-processes",
            "x-mock-input-tokens": cost,
        })
        response = conn.getresponse()
        response.read()
        if time.monotonic() > until:
            break
        with lock:
            counts[response.status] = counts.get(response.status, 0) + 1


workers = [threading.Thread(target=loop) for _ in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps({str(k): v for k, v in counts.items()}), flush=True)
