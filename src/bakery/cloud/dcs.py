"""The cluster's keys in the DCS, where this machine reaches it (`lifecycle.dcs_url`).

Patroni keeps a cluster under `/<namespace>/<scope>/` (`initialize` holds the system id,
`leader`, `members/<name>`, `config`, `history`, ...). A cluster destroyed without clearing them
leaves `initialize` behind, and the next cluster of the same scope never bootstraps ("waiting
for leader to bootstrap", or a system ID mismatch). `destroy` clears them here when it can and
says how otherwise; `launch` of a new cluster refuses when it sees them.

etcd3 through its JSON gateway (`POST /v3/kv/range`, `/v3/kv/deleterange`), Consul through its
KV API (`/v1/kv/<prefix>?recurse`) with the configured ACL token. Over https the DCS is
verified against the cluster CA and, for etcd, this machine presents a client certificate the
cluster CA signs (`<state_dir>/operator/`).
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..errors import BakeryError

TIMEOUT = 10


class DcsError(BakeryError):
    """The DCS could not be read or changed; the message names it (never a credential)."""


@dataclass(frozen=True)
class ScopeKeys:
    prefix: str  # as the DCS names it: "/service/pg/" (etcd3) or "service/pg/" (Consul)
    keys: list[str]

    @property
    def initialized(self) -> bool:
        return any(k.endswith("/initialize") for k in self.keys)


def scope_prefix(settings: Settings) -> str:
    """Patroni's base path for the cluster, with the trailing slash."""
    cluster = settings.cluster
    return f"/{cluster.namespace}/{cluster.scope}/"


def by_hand(settings: Settings) -> str:
    """How to clear the scope's keys without bakery."""
    prefix = scope_prefix(settings)
    if settings.cluster.dcs.type == "etcd3":
        return f"etcdctl del --prefix {prefix}"
    return f"consul kv delete -recurse {prefix.lstrip('/')}"


class Dcs:
    def __init__(self, settings: Settings):
        url = settings.lifecycle.dcs_url
        if url is None:
            raise DcsError("lifecycle.dcs_url is not set: this machine does not reach the DCS")
        self.settings = settings
        self.url = url.rstrip("/")
        self.type = settings.cluster.dcs.type
        self.context = self._tls() if self.url.startswith("https://") else None

    def _tls(self) -> ssl.SSLContext:
        from .. import pki

        settings = self.settings
        context = ssl.create_default_context(cafile=str(settings.pki.ca_cert))
        if self.type == "etcd3":  # etcd over https authenticates clients by certificate
            ca = pki.load_ca(settings.pki.ca_cert, settings.pki.ca_key, "bakery.pki")
            spec = pki.LeafSpec("bakery-operator", ("bakery-operator",), (), 30, server=False)
            pki.issue_cached(settings.state_dir / "operator", "client", ca, spec)
            directory = settings.state_dir / "operator"
            context.load_cert_chain(directory / "client.pem", directory / "client.key")
        return context

    def keys(self) -> ScopeKeys:
        prefix = scope_prefix(self.settings)
        if self.type == "etcd3":
            answer = self._etcd("range", prefix, keys_only=True)
            found = [base64.b64decode(kv["key"]).decode() for kv in answer.get("kvs", [])]
            return ScopeKeys(prefix, sorted(found))
        path = urllib.parse.quote(prefix.lstrip("/"))
        found = self._consul("GET", f"/v1/kv/{path}?keys")
        return ScopeKeys(prefix.lstrip("/"), sorted(found or []))

    def clear(self) -> ScopeKeys:
        """Delete every key of the scope; returns what was there."""
        present = self.keys()
        if self.type == "etcd3":
            self._etcd("deleterange", scope_prefix(self.settings))
        else:
            path = urllib.parse.quote(present.prefix)
            self._consul("DELETE", f"/v1/kv/{path}?recurse")
        return present

    # -- transport ------------------------------------------------------------------------

    def _etcd(self, call: str, prefix: str, **extra: Any) -> dict:
        start = prefix.encode()
        end = start[:-1] + bytes([start[-1] + 1])  # every key that starts with prefix
        body = {
            "key": base64.b64encode(start).decode(),
            "range_end": base64.b64encode(end).decode(),
            **extra,
        }
        return self._request("POST", f"/v3/kv/{call}", json.dumps(body).encode(), {}) or {}

    def _consul(self, method: str, path: str) -> Any:
        headers = {}
        consul = self.settings.cluster.dcs.consul
        if consul is not None and consul.acl_token is not None:
            from ..secrets import SecretStore

            token = SecretStore(self.settings.state_dir).resolve(
                consul.acl_token, "bakery.cluster.dcs.consul.acl_token"
            )
            headers["X-Consul-Token"] = token.value
        try:
            return self._request(method, path, None, headers)
        except DcsError as error:
            if "HTTP 404" in str(error):  # Consul's answer for "no such keys"
                return None
            raise

    def _request(self, method: str, path: str, data: bytes | None, headers: dict) -> Any:
        request = urllib.request.Request(  # noqa: S310 - http(s) only (config pattern)
            self.url + path, data=data, headers=headers, method=method
        )
        where = f"DCS at {self.url}"
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=TIMEOUT, context=self.context
            ) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as error:
            raise DcsError(f"{where}: {method} {path.split('?')[0]}: HTTP {error.code}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise DcsError(f"{where}: not reachable ({reason})") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise DcsError(f"{where}: {path}: the answer is not JSON") from None
