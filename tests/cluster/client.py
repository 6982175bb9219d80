"""The cluster test's client: what runs in the `client` network namespace (10.77.0.100), started there by
tests/cluster/cluster.py through `nsenter --net=/run/netns/NS`. Standard library only but `bucket` (boto3).

  client.py load URL [--concurrency N] [--max-requests N] [--max-seconds S] [--timeout S] [--pause S]
      GETs URL from N threads (a new connection per request, TLS unverified), until N requests or S seconds or a
      SIGTERM, whichever first; SIGUSR1 records a mark: how many requests were in flight at that moment. Prints
      "started" once the signals are handled, and at the end one JSON object on stdout: requests, ok, errors by kind
      (http-STATUS, timeout, refused, reset, tls, ...), the marks, the errors' times (seconds since the start), the
      duration. A thread waits --pause S after each request, at least 0.1 s after an error.
  client.py scan ADDR PORT... [--timeout S]
      which ports accept a TCP connection: JSON {port: "open" | "refused" | "timeout" | "unreachable" | error}.
  client.py bucket ENDPOINT NAME
      creates the S3 bucket NAME on ENDPOINT (moto's server) with the test's keys, and says so.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import errno
import http.client
import json
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections import Counter
from typing import Any


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | http.client.RemoteDisconnected):
        return "reset"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return f"other:{type(exc).__name__}"


class Load:
    """A bounded closed-loop load: `concurrency` threads, each one request at a time."""

    def __init__(self, url: str, concurrency: int, max_requests: int, max_seconds: float, timeout: float, pause: float):
        parts = urllib.parse.urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.concurrency, self.max_requests, self.max_seconds = concurrency, max_requests, max_seconds
        self.timeout, self.pause = timeout, pause
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.started = 0
        self.in_flight = 0
        self.counts: Counter[str] = Counter()
        self.error_times: list[tuple[float, str]] = []
        self.marks: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    def mark(self, *_: object) -> None:
        with self.lock:
            self.marks.append(
                {"t": round(time.monotonic() - self.t0, 3), "in_flight": self.in_flight, "requests": self.started}
            )

    def one(self) -> str:
        conn: http.client.HTTPConnection
        if self.https:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.tls)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", self.path, headers={"Connection": "close", "User-Agent": "kiln-cluster-load"})
            resp = conn.getresponse()
            resp.read()
            return "ok" if 200 <= resp.status < 300 else f"http-{resp.status}"
        except (OSError, http.client.HTTPException) as exc:
            return error_kind(exc)
        finally:
            conn.close()

    def worker(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                if self.started >= self.max_requests or time.monotonic() - self.t0 >= self.max_seconds:
                    self.stop.set()
                    return
                self.started += 1
                self.in_flight += 1
            kind = self.one()
            with self.lock:
                self.in_flight -= 1
                self.counts[kind] += 1
                if kind != "ok":
                    self.error_times.append((round(time.monotonic() - self.t0, 3), kind))
            # An error comes at once (a refused connection): 0.1 s before the next, so a down server does not use up
            # the loop's requests in a moment.
            pause = self.pause if kind == "ok" else max(self.pause, 0.1)
            if pause:
                self.stop.wait(pause)

    def run(self) -> dict[str, Any]:
        threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(self.concurrency)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):  # the main thread stays free for the signal handlers
            time.sleep(0.05)
        errors = {k: v for k, v in self.counts.items() if k != "ok"}
        return {
            "url": f"{'https' if self.https else 'http'}://{self.host}:{self.port}{self.path}",
            "concurrency": self.concurrency,
            "requests": sum(self.counts.values()),
            "ok": self.counts["ok"],
            "errors": sum(errors.values()),
            "error_kinds": errors,
            "error_times": self.error_times[:200],
            "marks": self.marks,
            "seconds": round(time.monotonic() - self.t0, 2),
        }


def scan(addr: str, ports: list[int], timeout: float) -> dict[int, str]:
    def probe(port: int) -> str:
        try:
            with socket.create_connection((addr, port), timeout=timeout):
                return "open"
        except OSError as exc:
            return error_kind(exc)

    with concurrent.futures.ThreadPoolExecutor(len(ports)) as pool:
        return dict(zip(ports, pool.map(probe, ports), strict=True))


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=name)
    print(f"bucket {name} on {endpoint}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="client.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("load")
    lp.add_argument("url")
    lp.add_argument("--concurrency", type=int, default=4)
    lp.add_argument("--max-requests", type=int, default=20000)
    lp.add_argument("--max-seconds", type=float, default=120)
    lp.add_argument("--timeout", type=float, default=10)
    lp.add_argument("--pause", type=float, default=0.0)
    sp = sub.add_parser("scan")
    sp.add_argument("addr")
    sp.add_argument("ports", type=int, nargs="+")
    sp.add_argument("--timeout", type=float, default=2)
    bp = sub.add_parser("bucket")
    bp.add_argument("endpoint")
    bp.add_argument("name")
    a = p.parse_args(argv)
    if a.cmd == "load":
        load = Load(a.url, a.concurrency, a.max_requests, a.max_seconds, a.timeout, a.pause)
        signal.signal(signal.SIGUSR1, load.mark)
        signal.signal(signal.SIGTERM, lambda *_: load.stop.set())
        print("started", flush=True)  # the signals are handled from here on
        print(json.dumps(load.run()), flush=True)
    elif a.cmd == "scan":
        print(json.dumps(scan(a.addr, a.ports, a.timeout)))
    else:
        make_bucket(a.endpoint, a.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
