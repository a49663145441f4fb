"""`invoke ca`: create what the config points to but does not exist yet, for a trial or a new
cluster: the cluster CA, the Nebula CA, and Consul trial keys. Never overwrites anything."""

from __future__ import annotations

import base64
import secrets
import uuid

from .config import SecretSource, Settings
from .files import write_private


def create_missing(settings: Settings) -> list[str]:
    """Returns one line per thing created (paths only, never a secret)."""
    from . import pki

    created = []
    if pki.create_ca(
        settings.pki.ca_cert, settings.pki.ca_key, f"bakery {settings.cluster.scope} CA"
    ):
        created.append(f"cluster CA: {settings.pki.ca_cert}")
    overlay = settings.overlay
    if overlay.type == "nebula" and pki.create_nebula_ca(
        overlay.ca_cert, overlay.ca_key, f"bakery {settings.cluster.scope} overlay"
    ):
        created.append(f"Nebula CA: {overlay.ca_cert}")
    consul = settings.cluster.dcs.consul
    if settings.cluster.dcs.type == "consul" and consul is not None:
        # A gossip key is 32 random bytes in base64 (what `consul keygen` prints); an ACL
        # token is a UUID. For a real cluster, point the config at the cluster's own.
        for source, make, what in (
            (
                consul.gossip_key,
                lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
                "gossip key",
            ),
            (consul.acl_token, lambda: str(uuid.uuid4()), "ACL token"),
        ):
            if _missing_file(source):
                write_private(source.file, make() + "\n")
                created.append(f"Consul trial {what}: {source.file}")
    return created


def _missing_file(source: SecretSource | None) -> bool:
    return source is not None and source.file is not None and not source.file.exists()
