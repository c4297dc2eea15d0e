"""A fault-injecting HTTP proxy in front of the embedded S3, on 127.0.0.1.

moto answers like S3 but cannot be told to fail; S3 itself fails with 500s, 503s and 403s.
This proxy is the one place the fault catalogue stands in for a real part: it forwards every
request to the real moto server unchanged, except that requests matching a rule get the
rule's status (with an S3-style XML error body) for their first `times` matches.

    >>> with FaultyS3Proxy(upstream) as proxy:                                # doctest: +SKIP
    ...     proxy.fail("GET", "database/", status=500, times=2)
    ...     proxy.endpoint_url
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
CODES = {500: "InternalError", 503: "SlowDown", 403: "AccessDenied"}


@dataclass
class Rule:
    """Answer `status` to `method` requests whose path contains `fragment`, `times` times."""

    method: str
    fragment: str
    status: int
    times: int
    hits: int = 0


class FaultyS3Proxy:
    """Forward to `upstream` (an S3 endpoint URL), failing the requests that match rules."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        """The proxy's endpoint, to configure in place of the real one."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, method: str, fragment: str, status: int, times: int = 10**9) -> Rule:
        """Add a rule; returns it so a test can read how often it fired."""
        rule = Rule(method, fragment, status, times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def __enter__(self) -> FaultyS3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _match(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.method == method and rule.fragment in path and rule.hits < rule.times:
                    rule.hits += 1
                    return rule
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                rule = proxy._match(self.command, self.path)
                if rule is not None:
                    proxy.log.append((self.command, self.path, rule.status))
                    code = CODES.get(rule.status, "InternalError")
                    xml = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                        f"<Message>injected fault</Message></Error>"
                    ).encode()
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream = requests.request(
                    self.command,
                    proxy.upstream + self.path,
                    headers=headers,
                    data=body,
                    stream=True,
                    timeout=60,
                    allow_redirects=False,
                )
                proxy.log.append((self.command, self.path, upstream.status_code))
                content = upstream.raw.read(decode_content=False)
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

            def log_message(self, *args: object) -> None:
                pass

        return Handler
