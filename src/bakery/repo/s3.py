"""Reading one object from S3-compatible storage: GET with AWS Signature Version 4.

Enough for bakery's own checks of a pgBackRest repository before a launch (the standard
library only, no SDK): path- or host-style URIs, TLS verified against the system store or a CA
file, keys given as Secrets (never in a message). `connect_to` sends the TCP connection to
another address while TLS still checks the endpoint's name (the tests' S3 server lives in a
network namespace).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import socket
import ssl
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..secrets import Secret

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class S3Error(Exception):
    """A request that did not return the object; `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class S3Location:
    endpoint: str
    port: int
    region: str
    bucket: str
    uri_style: str  # "host" or "path"
    key: Secret = field(repr=False)
    key_secret: Secret = field(repr=False)
    ca_file: Path | None = None
    verify_tls: bool = True
    connect_to: tuple[str, int] | None = None

    @property
    def host(self) -> str:
        name = f"{self.bucket}.{self.endpoint}" if self.uri_style == "host" else self.endpoint
        return name if self.port == 443 else f"{name}:{self.port}"

    def path_of(self, key: str) -> str:
        quoted = urllib.parse.quote(key.lstrip("/"), safe="/~")
        return f"/{quoted}" if self.uri_style == "host" else f"/{self.bucket}/{quoted}"


def signed_headers(
    method: str,
    host: str,
    path: str,
    region: str,
    key: str,
    secret: str,
    now: datetime,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The headers of a SigV4-signed request without a body (`Authorization` included)."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    headers = {"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": amz_date}
    headers |= {k.lower(): v.strip() for k, v in (extra or {}).items()}
    names = sorted(headers)
    canonical = "\n".join(
        [
            method,
            path,
            "",  # no query
            *(f"{name}:{headers[name]}" for name in names),
            "",
            ";".join(names),
            EMPTY_SHA256,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    signing_key = f"AWS4{secret}".encode()
    for part in (day, region, "s3", "aws4_request"):
        signing_key = hmac.new(signing_key, part.encode(), "sha256").digest()
    signature = hmac.new(signing_key, to_sign.encode(), "sha256").hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={';'.join(names)}, "
        f"Signature={signature}"
    )
    return headers


class _Connection(http.client.HTTPSConnection):
    """HTTPS to the endpoint's name, over a TCP connection to `connect_to` if given."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, connect_to, timeout):
        super().__init__(host, port, context=context, timeout=timeout)
        self._connect_to = connect_to

    def connect(self) -> None:
        if self._connect_to is None:
            super().connect()
            return
        raw = socket.create_connection(self._connect_to, self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


def get_object(location: S3Location, key: str, timeout: float = 20) -> bytes | None:
    """The object's bytes; None when it does not exist (404)."""
    context = ssl.create_default_context(cafile=str(location.ca_file) if location.ca_file else None)
    if not location.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    host = location.host.rsplit(":", 1)[0] if location.port != 443 else location.host
    path = location.path_of(key)
    headers = signed_headers(
        "GET",
        location.host,
        path,
        location.region,
        location.key.value,
        location.key_secret.value,
        datetime.now(UTC),
    )
    connection = _Connection(host, location.port, context, location.connect_to, timeout)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
    except ssl.SSLCertVerificationError as error:
        raise S3Error(f"certificate of {host} not trusted: {error.verify_message}") from None
    except (OSError, http.client.HTTPException) as error:
        raise S3Error(f"no answer from {host}:{location.port}: {error}") from None
    finally:
        connection.close()
    if response.status == 404:
        return None
    if response.status != 200:
        raise S3Error(f"{response.status} {response.reason} for {path}", response.status)
    return body
