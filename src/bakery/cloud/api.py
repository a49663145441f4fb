"""Talking to the OpenStack environments: connections, waits that can be cancelled, and errors
that say which environment failed and why.

openstacksdk is imported here only when a connection is made, so `invoke --list` stays fast.
A `clouds.yaml` is found as openstacksdk finds it (OS_CLIENT_CONFIG_FILE, ./clouds.yaml,
~/.config/openstack/); credentials never pass through bakery's configuration.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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
    import openstack.config
    import openstack.connection
    import openstack.exceptions
    from keystoneauth1 import exceptions as ksa_exceptions

    where = f"environment {label} (clouds.yaml entry {environment.cloud!r})"
    try:
        config = openstack.config.OpenStackConfig()
        region = config.get_one(cloud=environment.cloud, region_name=environment.region)
        if _states_identity_v3(region.config):
            region = config.get_one(
                cloud=environment.cloud, region_name=environment.region, auth_type="v3password"
            )
        conn = openstack.connection.Connection(config=region)
        conn.authorize()  # connect() is lazy: fail here, before anything is looked up
    except openstack.exceptions.ConfigException as error:
        raise CloudError(f"{where}: {error}") from None
    except (openstack.exceptions.SDKException, ksa_exceptions.ClientException) as error:
        raise CloudError(f"{where}: cannot authenticate: {error}") from None
    _without_discovery(conn)
    return conn


def _states_identity_v3(config: dict) -> bool:
    """Keystone's generic `password` plugin first asks the auth URL which API versions it
    has; an auth URL that ends in /v3 has said so already: bakery authenticates with v3 at
    once (one request fewer on every run)."""
    from urllib.parse import urlsplit

    auth_url = str((config.get("auth") or {}).get("auth_url") or "")
    return config.get("auth_type") in (None, "password") and urlsplit(auth_url).path.rstrip(
        "/"
    ).endswith("/v3")


# The compute API version bakery asks for: tags given when a server is created (2.52).
COMPUTE_MICROVERSION = "2.52"


def _without_discovery(conn) -> None:
    """openstacksdk asks Glance and Nova which versions they have before the first call to
    each. Every Glance of the last decade has v2 under its catalog URL; a Nova catalog URL
    ending in /v2.1 is that API, and bakery names the microversion it needs. Knowing that
    saves two requests on every run (a no-op rebuild makes three per environment in all). A
    catalog of another shape, or an endpoint the user overrides, keeps the discovery."""
    from openstack.compute.v2 import _proxy as compute_v2
    from openstack.image.v2 import _proxy as image_v2

    image = _catalog_url(conn, "image")
    if image is not None and not re.search(r"/v\d[^/]*/?$", image):
        _use_proxy(conn, "image", image_v2.Proxy, image.rstrip("/") + "/v2")
    compute = _catalog_url(conn, "compute")
    if compute is not None and re.search(r"/v2\.1(/[0-9a-f]+)?/?$", compute):
        _use_proxy(conn, "compute", compute_v2.Proxy, compute, COMPUTE_MICROVERSION)


def _catalog_url(conn, service: str) -> str | None:
    if conn.config.get_endpoint(service) or service in conn._proxies:
        return None  # the user's own endpoint override: leave it alone
    try:
        return conn.session.auth.get_access(conn.session).service_catalog.url_for(
            service_type=service,
            interface=conn.config.get_interface(service),
            region_name=conn.config.get_region_name(service),
        )
    except Exception:  # noqa: BLE001 - no such entry: openstacksdk says so on first use
        return None


def _use_proxy(conn, service: str, proxy_class, url: str, microversion: str | None = None):
    proxy = proxy_class(
        session=conn.session,
        service_type=service,
        service_name=conn.config.get_service_name(service),
        interface=conn.config.get_interface(service),
        region_name=conn.config.get_region_name(service),
        endpoint_override=url,
        default_microversion=microversion,
    )
    proxy._connection = conn  # as openstacksdk's own proxies are wired
    conn._proxies[service] = proxy


def in_parallel(labels: list[str], work: Callable[[str], T]) -> list[T | BakeryError]:
    """`work(label)` for every environment at once (each talks to its own cloud: its waits
    overlap), in the order of `labels`; a BakeryError is returned in its place, so that every
    problem can be reported together."""
    from concurrent.futures import ThreadPoolExecutor

    def attempt(label: str) -> T | BakeryError:
        try:
            return work(label)
        except BakeryError as error:
            return error

    with ThreadPoolExecutor(max_workers=max(1, len(labels))) as pool:
        return list(pool.map(attempt, labels))


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


@dataclass(frozen=True)
class Backoff:
    """Pauses between the polls of a wait: `first`, then each `factor` times the last, never
    more than `cap`. A change that comes soon is seen soon (a deletion, a snapshot of a few
    bytes); one that takes long costs few requests (a build of many minutes polls every `cap`
    seconds, and is seen at most that late)."""

    first: float = 0.5
    factor: float = 1.5
    cap: float = 10.0

    def pauses(self) -> Iterator[float]:
        pause = self.first
        while True:
            yield pause
            pause = min(self.cap, pause * self.factor)

    def polls_within(self, seconds: float) -> int:
        """How many polls a wait of `seconds` makes, the one that sees the change included."""
        waited = 0.0
        for polls, pause in enumerate(self.pauses(), start=1):
            waited += pause
            if waited >= seconds:
                return polls
        raise AssertionError("unreachable")  # pauses() never ends


# A builder boots, builds and powers off: never within a second. After that its status is
# read at 3, 7, 15, then every 10 s: at most 10 s late, about 62 reads for a 10-minute build.
BUILD_BACKOFF = Backoff(first=1.0, factor=2.0, cap=10.0)
# Snapshots, deletions, a server becoming ACTIVE: often within a second, at most minutes.
SHORT_BACKOFF = Backoff(first=0.5, factor=2.0, cap=5.0)


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    cancel: threading.Event,
    backoff: Backoff = SHORT_BACKOFF,
) -> T:
    """Call `probe` until it returns something other than None, pausing as `backoff` says
    before each call (a wait begins right after the request that started the change, whose
    answer is known: nothing has happened yet); raise CloudError after `timeout` seconds,
    with a last call at the deadline, and Cancelled as soon as `cancel` is set."""
    deadline = time.monotonic() + timeout
    for pause in backoff.pauses():
        cancel.wait(max(0.0, min(pause, deadline - time.monotonic())))
        if cancel.is_set():
            raise Cancelled(f"stopped while waiting for {what}")
        found = probe()
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise CloudError(f"timed out after {timeout:.0f} s waiting for {what}")
    raise AssertionError("unreachable")  # pauses() never ends


_UUID = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.I)


def find_named(find: Callable[..., Any], name: str, kind: str, where: str) -> Any:
    """A resource by name or ID through an openstacksdk `find_*`, or a CloudError naming it."""
    found = find(name, ignore_missing=True)
    if found is None:
        raise CloudError(f"{where}: no {kind} {name!r}")
    return found


# Glance's largest page (api_limit_max); a list that fills it is read again, page by page.
IMAGE_PAGE = 1000


def all_images(conn) -> list[Any]:
    """Every image the project sees (its own of any status, shared and public ones), in one
    request where there are fewer than a page of them. openstacksdk asks for one more page
    whenever a limit is given, hence the explicit single page."""
    page = list(conn.image.images(limit=IMAGE_PAGE, paginated=False))
    return page if len(page) < IMAGE_PAGE else list(conn.image.images())


def one_named(resources: Iterable[Any], name: str, kind: str, where: str) -> Any:
    """The resource whose ID, else whose name, is `name`: out of a list read once (an
    openstacksdk `find_*` asks for the ID first, then lists: two requests)."""
    resources = list(resources)
    found = [r for r in resources if r.id == name] or [r for r in resources if r.name == name]
    if len(found) > 1:
        raise CloudError(f"{where}: {len(found)} {kind}s are named {name!r}; give the ID")
    if not found:
        raise CloudError(f"{where}: no {kind} {name!r}")
    return found[0]


def flavor_named(conn, name: str, where: str) -> Any:
    return one_named(conn.compute.flavors(is_public=None), name, "flavor", where)


def network_named(conn, name: str, where: str) -> Any:
    """One read: the network by ID when `name` is one, else the networks of that name."""
    import openstack.exceptions

    if _UUID.match(name):
        try:
            return conn.network.get_network(name)
        except openstack.exceptions.NotFoundException:
            raise CloudError(f"{where}: no network {name!r}") from None
    return one_named(conn.network.networks(name=name), name, "network", where)


def security_groups_named(conn, names: list[str], where: str) -> list[Any]:
    """The project's security groups of these names or IDs, out of one read."""
    if not names:
        return []
    groups = list(conn.network.security_groups(project_id=conn.current_project_id))
    return [one_named(groups, name, "security group", where) for name in names]


def servers_named(conn, name: str) -> list[Any]:
    """Servers of exactly this name (Nova's name filter is a regular expression)."""
    return list(conn.compute.servers(name=f"^{re.escape(name)}$"))


def server_gone(conn, server_id: str) -> bool | None:
    """A probe for `wait_for`: True once the server is deleted."""
    import openstack.exceptions

    try:
        server = conn.compute.get_server(server_id)
    except openstack.exceptions.NotFoundException:
        return True
    return True if server.status == "DELETED" else None


def delete_servers(conn, server_ids: list[str], timeout: float = 300) -> None:
    """Delete these servers and wait until they are gone (a server's port and address are
    only free once it is). Cleanup runs even while the run is being cancelled: the wait has
    a cancel flag of its own."""
    for server_id in server_ids:
        conn.compute.delete_server(server_id, ignore_missing=True)
    wait_until_gone(conn, server_ids, timeout)


def wait_until_gone(conn, server_ids: list[str], timeout: float = 300) -> None:
    """Wait until servers whose deletion was asked for are gone."""
    for server_id in server_ids:
        wait_for(
            f"server {server_id} to be deleted",
            functools.partial(server_gone, conn, server_id),
            timeout,
            threading.Event(),
        )


def delete_port(conn, port_id: str, timeout: float = 300) -> None:
    """Delete a port that a deleted server used. A server interrupted while it was still being
    built may be gone from the API while its host binds the port one last time: Neutron then
    refuses (409, or 403 for a bound port) until Nova has let go of it."""
    import openstack.exceptions

    def deleted() -> bool | None:
        try:
            conn.network.delete_port(port_id, ignore_missing=True)
        except (openstack.exceptions.ConflictException, openstack.exceptions.ForbiddenException):
            return None
        return True

    if not deleted():
        wait_for(f"port {port_id} to be released", deleted, timeout, threading.Event())


def delete_servers_named(conn, name: str, timeout: float = 300) -> None:
    """Delete every server of exactly this name (for a create call whose answer may never
    have arrived) and wait until they are gone."""
    delete_servers(conn, [server.id for server in servers_named(conn, name)], timeout)


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
