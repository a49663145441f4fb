"""A reverse proxy in front of the stack's APIs that counts every request a client makes.

A client-side HTTP proxy would be bypassed for loopback addresses, so this one stands in for
the services instead: one listener per API (Keystone, Glance, Nova, Neutron) on a free
loopback port, each forwarding to its service. Response bodies and `Location` headers name
the services' own URLs (Keystone's catalog, version documents, links): those are rewritten to
the proxy's, so a client that starts at the proxied Keystone stays behind the proxy for every
call. The services' calls among themselves do not pass through it and are not counted.

    with CountingProxy() as proxy:
        proxy.write_clouds_yaml(stack_clouds_yaml, my_clouds_yaml); run the client with it
        proxy.requests  # [Request(service, method, path, status), ...]
"""

from __future__ import annotations

import http.client
import re
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from .layout import HOST, PORTS, write_private

SERVICES = ("keystone", "glance", "nova", "neutron")
# Hop-by-hop headers are the proxy's own business (RFC 9110, 7.6.1).
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Request:
    service: str
    method: str
    path: str  # without the query
    query: str
    status: int

    @property
    def kind(self) -> str:
        """The request with IDs replaced by `{id}`: 'GET nova /v2.1/servers/{id}'."""
        return f"{self.method} {self.service} {_UUID.sub('{id}', self.path)}"

    @property
    def is_read(self) -> bool:
        return self.method in ("GET", "HEAD")

    @property
    def is_authentication(self) -> bool:
        return self.service == "keystone" and self.method == "POST" and "auth/tokens" in self.path


class CountingProxy:
    def __init__(self):
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._servers: dict[str, ThreadingHTTPServer] = {}
        self._threads: list[threading.Thread] = []

    # -- what clients use -------------------------------------------------------------------
    def url(self, service: str) -> str:
        return f"http://{HOST}:{self._servers[service].server_address[1]}"

    def auth_url(self) -> str:
        return self.url("keystone") + "/v3"

    def write_clouds_yaml(self, source: Path, target: Path) -> Path:
        """A copy of the stack's clouds.yaml whose clouds authenticate through the proxy."""
        clouds = yaml.safe_load(source.read_text())
        for cloud in clouds["clouds"].values():
            cloud["auth"]["auth_url"] = self.auth_url()
        write_private(target, yaml.safe_dump(clouds, sort_keys=False))
        return target

    def take(self) -> list[Request]:
        """The requests counted since the last call, and start counting afresh."""
        with self._lock:
            taken, self.requests = self.requests, []
        return taken

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> CountingProxy:
        for service in SERVICES:
            server = ThreadingHTTPServer((HOST, 0), self._handler(service))
            server.daemon_threads = True
            self._servers[service] = server
        # Every listener knows every rewrite: a catalog names all the services.
        self._rewrites = [
            (f"http://{HOST}:{PORTS[s]}".encode(), self.url(s).encode()) for s in SERVICES
        ]
        for server in self._servers.values():
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)

    # -- forwarding -------------------------------------------------------------------------
    def _rewrite(self, data: bytes) -> bytes:
        for upstream, ours in self._rewrites:
            data = data.replace(upstream, ours)
        return data

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler(self, service: str):
        proxy = self
        upstream_port = PORTS[service]

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the services offer it

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Host"] = f"{HOST}:{upstream_port}"
                upstream = http.client.HTTPConnection(HOST, upstream_port, timeout=300)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = proxy._rewrite(response.read())
                    status, reason = response.status, response.reason
                    reply = [
                        (k, proxy._rewrite(v.encode()).decode() if k.lower() == "location" else v)
                        for k, v in response.getheaders()
                        if k.lower() not in HOP_BY_HOP
                    ]
                finally:
                    upstream.close()
                parsed = urllib.parse.urlsplit(self.path)
                proxy._record(Request(service, self.command, parsed.path, parsed.query, status))
                self.send_response_only(status, reason)
                for key, value in reply:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

            def log_message(self, format, *args):  # noqa: A002 - the base class's name
                pass

        return Handler


def summary(requests: list[Request]) -> str:
    """'14 requests (1 authentication, 6 reads): 3 GET nova /v2.1/servers/{id}, ...'"""
    counts: dict[str, int] = {}
    for request in requests:
        counts[request.kind] = counts.get(request.kind, 0) + 1
    reads = sum(r.is_read for r in requests)
    auth = sum(r.is_authentication for r in requests)
    parts = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"{len(requests)} requests ({auth} authentication, {reads} reads): {parts}"
