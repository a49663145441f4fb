"""Patroni's REST API over TLS, called from inside a namespace of the run.

The socket is opened with the calling thread switched into that namespace (netns.entered), so
the test process itself is the client: no helper process per request.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from netns import entered


class _Conn(http.client.HTTPSConnection):
    netns = ""

    def connect(self) -> None:
        with entered(self.netns):
            sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


@dataclass
class Response:
    status: int
    body: Any


@dataclass
class RestApi:
    netns: str  # where the client sits
    cafile: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # (certfile, keyfile): with verify_client optional, Patroni wants one for unsafe endpoints.
    client_cert: tuple[str, str] | None = None

    def call(
        self,
        address: str,
        method: str,
        path: str,
        body: Any = None,
        auth: bool = True,
        cert: bool = True,
        timeout: float = 5,
    ) -> Response:
        ctx = ssl.create_default_context(cafile=self.cafile)
        if cert and self.client_cert is not None:
            ctx.load_cert_chain(*self.client_cert)
        conn = _Conn(address, 8008, timeout=timeout, context=ctx)
        conn.netns = self.netns
        headers = {"Content-Type": "application/json"}
        if auth and self.username is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return Response(resp.status, parsed)

    def get(self, address: str, path: str, timeout: float = 5) -> Response:
        return self.call(address, "GET", path, timeout=timeout)

    def try_get(self, address: str, path: str, timeout: float = 3) -> Response | None:
        """None when the node does not answer (down, cut off, or not up yet)."""
        try:
            return self.get(address, path, timeout)
        except (OSError, http.client.HTTPException):
            return None
