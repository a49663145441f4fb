"""Talking to the OpenStack environments: connections, waits that can be cancelled, and errors
that say which environment failed and why.

openstacksdk is imported here only when a connection is made, so `invoke --list` stays fast.
A `clouds.yaml` is found as openstacksdk finds it (OS_CLIENT_CONFIG_FILE, ./clouds.yaml,
~/.config/openstack/); credentials never pass through bakery's configuration.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import Environment
from ..errors import BakeryError

if TYPE_CHECKING:
    from openstack.connection import Connection

T = TypeVar("T")

# Every resource bakery creates carries this tag (servers: tag and metadata; images: tag and
# properties), so that nothing of it can hide among the user's own resources.
TAG = "bakery"


class CloudError(BakeryError):
    """A cloud call or a wait failed; the message names the environment."""


class PreflightError(BakeryError):
    """Checks before anything was created failed; every problem is listed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "nothing was created; fix these first:\n" + "\n".join(f"  {p}" for p in problems)
        )


class Cancelled(BakeryError):
    """The run is being stopped (Ctrl-C, or another environment failed)."""


def connect(label: str, environment: Environment) -> Connection:
    """An authenticated connection to one environment, or a CloudError saying what is wrong."""
    import openstack
    import openstack.exceptions
    from keystoneauth1 import exceptions as ksa_exceptions

    where = f"environment {label} (clouds.yaml entry {environment.cloud!r})"
    try:
        conn = openstack.connect(cloud=environment.cloud, region_name=environment.region)
        conn.authorize()  # connect() is lazy: fail here, before anything is looked up
    except openstack.exceptions.ConfigException as error:
        raise CloudError(f"{where}: {error}") from None
    except (openstack.exceptions.SDKException, ksa_exceptions.ClientException) as error:
        raise CloudError(f"{where}: cannot authenticate: {error}") from None
    return conn


@contextlib.contextmanager
def cloud_errors(where: str) -> Iterator[None]:
    """Turn openstacksdk's and keystoneauth's exceptions into a CloudError naming `where`."""
    import openstack.exceptions
    from keystoneauth1 import exceptions as ksa_exceptions

    try:
        yield
    except (openstack.exceptions.SDKException, ksa_exceptions.ClientException) as error:
        raise CloudError(f"{where}: {error}") from None


def image_property(image: Any, key: str) -> Any:
    """An image property, whether openstacksdk models it as an attribute or not."""
    value = getattr(image, key, None)
    return value if value is not None else (image.properties or {}).get(key)


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    cancel: threading.Event,
    interval: float = 2.0,
) -> T:
    """Call `probe` until it returns something other than None; raise CloudError after
    `timeout` seconds, Cancelled as soon as `cancel` is set."""
    deadline = time.monotonic() + timeout
    while True:
        if cancel.is_set():
            raise Cancelled(f"stopped while waiting for {what}")
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise CloudError(f"timed out after {timeout:.0f} s waiting for {what}")
        cancel.wait(interval)


def find_named(find: Callable[..., Any], name: str, kind: str, where: str) -> Any:
    """A resource by name or ID through an openstacksdk `find_*`, or a CloudError naming it."""
    found = find(name, ignore_missing=True)
    if found is None:
        raise CloudError(f"{where}: no {kind} {name!r}")
    return found


def servers_named(conn, name: str) -> list[Any]:
    """Servers of exactly this name (Nova's name filter is a regular expression)."""
    return list(conn.compute.servers(name=f"^{re.escape(name)}$"))


def delete_servers_named(conn, name: str, timeout: float = 300) -> None:
    """Delete every server of exactly this name and wait until they are gone (a server's
    port and address are only free once it is)."""
    servers = servers_named(conn, name)
    for server in servers:
        conn.compute.delete_server(server, ignore_missing=True)
    for server in servers:
        conn.compute.wait_for_delete(server, interval=2, wait=timeout)


def check_compute_az(conn, zone: str, where: str) -> None:
    zones = {z.name for z in conn.compute.availability_zones() if z.state["available"]}
    if zone not in zones:
        raise CloudError(
            f"{where}: compute AZ {zone!r} is not available; available: "
            f"{', '.join(sorted(zones)) or 'none'}"
        )


def server_in(conn, server_id: str, status: str, where: str):
    """A probe for `wait_for`: the server once its status is `status`, else None. A server in
    ERROR ends the wait with Nova's fault message."""
    with cloud_errors(f"{where}: watching server {server_id}"):
        server = conn.compute.get_server(server_id)
    if server.status == "ERROR":
        fault = (server.fault or {}).get("message", "no fault message")
        raise CloudError(f"{where}: server {server.name} went to ERROR: {fault}")
    return server if server.status == status else None
