"""`invoke bake --target cloud`: the golden image, built in every environment of the config.

In each environment a builder VM boots from the cloud's base image with user-data that runs the
image definition's elements (`builderdata`), reports one BAKERY-RESULT line on its console and
powers itself off. The bake then checks that result and its manifest against the definition,
snapshots the VM into an image tagged `bakery` with the build's properties, and deletes the VM.

Order of work, so that bad input changes nothing and nothing leaks:
1. every check that needs no cloud (definition, config, user-data size), then every lookup in
   every environment (authentication, base image, flavor, network, security groups, AZ), all
   problems reported together, before anything is created;
2. the environments build in parallel; a resource is registered for removal before the call
   that creates it, and found again by its unique name, so even a create call that fails
   half-way leaves nothing behind; the builder's port comes first and is tagged, so that what
   a bake killed outright leaves is found by tag (`rebuild` reports it);
3. an image is released (`bakery_status=released`, with `min_disk` and `min_ram`) only when
   every environment has built and verified its own: a bake lands everywhere or nowhere. On
   failure, Ctrl-C or SIGTERM the builder VMs, their ports and this bake's images are deleted,
   the environments in parallel; builder VMs and ports always are.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from ..cleanup import (
    Cleanup,
    ReleaseError,
    interrupt_on_sigterm,
    run_in_parallel,
    shielded_from_interrupts,
)
from ..config import Settings, builder_problems, first_az
from ..errors import BakeryError, ConfigError, Problem
from ..image.builderdata import BuilderUserData, builder_user_data
from ..image.definition import LoadedDefinition, load_definition
from ..image.manifest import last_result, manifest_problems
from .api import (
    BUILD_BACKOFF,
    COMPUTE_MICROVERSION,
    TAG,
    Cancelled,
    CloudError,
    PreflightError,
    all_images,
    check_compute_az,
    cloud_errors,
    connect,
    delete_port,
    flavor_named,
    image_property,
    in_parallel,
    network_named,
    security_groups_named,
    server_in,
    servers_named,
    wait_for,
    wait_until_gone,
)
from .generations import BUILDER_TAG
from .metadata import image_properties, release_fields

ARCH_OF_IMAGE = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
SNAPSHOT_TIMEOUT = 1800
CONSOLE_TAIL = 25  # console lines quoted in an error


@dataclass
class Target:
    """One environment, resolved: everything the builder VM needs, looked up before any create."""

    label: str
    conn: Any = field(repr=False)
    base_image: Any
    flavor: Any
    network: Any
    security_groups: list[Any]
    compute_az: str | None
    arch: str
    user_data: BuilderUserData | None = field(default=None, repr=False)


@dataclass(frozen=True)
class BakedImage:
    environment: str
    image_id: str
    name: str


@dataclass(frozen=True)
class BakeResult:
    build_id: str
    definition: str
    images: list[BakedImage]


def builder_name(build_id: str) -> str:
    """The builder server's and its port's name."""
    return f"bakery-builder-{build_id}"


def new_build_id(loaded: LoadedDefinition) -> str:
    """Unique per bake (its resources are found again by name): definition, UTC time, inputs
    hash, and a random part for two bakes started in the same second."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{loaded.name}-{stamp}-{loaded.inputs_hash()[:8]}-{secrets.token_hex(2)}"


def bake(
    settings: Settings,
    definition: str | None = None,
    environments: list[str] | None = None,
    log: Callable[[str], None] = print,
    seen: dict[str, Seen] | None = None,
) -> BakeResult:
    """Bake the definition in the chosen environments (default: all of them). `seen`: what
    the caller (`rebuild`) has read already, per environment, so that it is not asked again."""
    loaded = load_definition(definition or settings.image.definition)
    labels = _chosen(settings, environments)
    build_id = new_build_id(loaded)
    with interrupt_on_sigterm():
        targets = _preflight(settings, loaded, labels, build_id, log, seen or {})
        return _Bake(settings, loaded, build_id, log).run(targets)


@dataclass
class Seen:
    """One environment as a run has read it: its connection and its image list."""

    conn: Any = field(repr=False)
    images: list[Any] | None = field(default=None, repr=False)


def _chosen(settings: Settings, environments: list[str] | None) -> list[str]:
    labels = list(dict.fromkeys(environments or settings.environments))
    unknown = [label for label in labels if label not in settings.environments]
    problems = [
        Problem(
            "--environment",
            f"{label!r} is not an environment; known: {', '.join(sorted(settings.environments))}",
        )
        for label in unknown
    ]
    chosen = settings.model_copy(
        update={"environments": {k: v for k, v in settings.environments.items() if k in labels}}
    )
    problems += builder_problems(chosen) if not unknown else []
    if problems:
        raise ConfigError(problems)
    return labels


# -- 1. preflight ---------------------------------------------------------------------------


def _preflight(
    settings: Settings,
    loaded: LoadedDefinition,
    labels: list[str],
    build_id: str,
    log: Callable[[str], None],
    seen: dict[str, Seen],
) -> list[Target]:
    """Resolve every environment; raise one error listing every problem found."""
    # What needs no cloud first: user-data for each architecture the definition builds.
    user_data = {
        arch: builder_user_data(loaded, build_id, arch, settings.template_overrides)
        for arch in loaded.definition.base.architectures
    }
    resolved = in_parallel(labels, lambda label: _resolve(settings, loaded, label, seen.get(label)))
    problems = [str(r) for r in resolved if isinstance(r, BakeryError)]
    if problems:
        raise PreflightError(problems)
    targets = [r for r in resolved if isinstance(r, Target)]
    for target in targets:
        target.user_data = user_data[target.arch]  # _resolve checked the architecture
        log(
            f"{target.label}: base image {target.base_image.name!r} ({target.base_image.id}), "
            f"flavor {target.flavor.name}, network {target.network.name}, {target.arch}"
        )
    return targets


def _resolve(settings: Settings, loaded: LoadedDefinition, label: str, seen: Seen | None) -> Target:
    environment = settings.environments[label]
    az = first_az(settings, label)
    builder = environment.builder

    def pick(key: str) -> Any:
        own = getattr(builder, key)
        return own if own is not None or az is None else getattr(az, key)

    conn = seen.conn if seen is not None else connect(label, environment)
    where = f"environment {label}"
    with cloud_errors(where):
        images = seen.images if seen is not None else None
        base = find_base_image(conn, settings, loaded, where, images)
        flavor = flavor_named(conn, pick("flavor"), where)
        if (flavor.disk or 0) < (base.min_disk or 0) or (flavor.ram or 0) < (base.min_ram or 0):
            raise CloudError(
                f"{where}: flavor {flavor.name} ({flavor.disk} GB, {flavor.ram} MiB) is below "
                f"the base image's minimum ({base.min_disk} GB, {base.min_ram} MiB)"
            )
        if not flavor.disk:
            raise CloudError(f"{where}: flavor {flavor.name} has no root disk to snapshot")
        network = network_named(conn, pick("network"), where)
        groups = security_groups_named(conn, list(pick("security_groups") or []), where)
        zone = pick("compute_az")
        if zone is not None:
            check_compute_az(conn, zone, where)
    arch = ARCH_OF_IMAGE.get(str(image_property(base, "architecture") or "x86_64"))
    if arch not in loaded.definition.base.architectures:
        raise CloudError(
            f"{where}: base image {base.name!r} is {image_property(base, 'architecture')}; image "
            f"definition {loaded.name} builds {', '.join(loaded.definition.base.architectures)}"
        )
    return Target(label, conn, base, flavor, network, groups, zone, arch)


def find_base_image(
    conn, settings: Settings, loaded: LoadedDefinition, where: str, images: list | None = None
):
    """The image a bake starts from, out of `images` when the caller has read them already
    (every image the project sees), else out of one read."""
    wanted = settings.image.base_image
    if wanted.name is not None:
        named = conn.image.images(name=wanted.name) if images is None else images
        found = [i for i in named if i.name == wanted.name and i.status == "active"]
        if len(found) != 1:
            raise CloudError(
                f"{where}: image.base_image.name {wanted.name!r} matches {len(found)} active "
                "images; it must match exactly one"
            )
        return found[0]
    base = loaded.definition.base
    properties = wanted.properties or {"os_distro": base.distribution, "os_version": base.release}
    candidates = [
        image
        for image in (all_images(conn) if images is None else images)
        if image.status == "active"
        and all(str(image_property(image, k)) == v for k, v in properties.items())
        # Snapshots inherit the base's properties: never start from one (a golden image
        # included, which is one), only from an image as its provider uploaded it.
        and image_property(image, "image_type") != "snapshot"
        and image_property(image, TAG) is None
    ]
    if not candidates:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(properties.items()))
        raise CloudError(f"{where}: no active image with {shown} (set image.base_image)")
    return max(
        candidates, key=lambda i: (str(image_property(i, "image_build_date") or ""), i.created_at)
    )


# -- 2. build in parallel -------------------------------------------------------------------


class _Bake:
    """One bake's run: the environments' threads share its cancel flag; each environment has
    its own cleanups, so that they run in parallel after a failure, Ctrl-C or SIGTERM."""

    def __init__(self, settings, loaded, build_id, log):
        self.settings = settings
        self.loaded: LoadedDefinition = loaded
        self.build_id: str = build_id
        self.log: Callable[[str], None] = log
        self.always: dict[str, Cleanup] = {}  # builder VMs and ports: removed whatever happens
        self.on_failure: dict[str, Cleanup] = {}  # images: kept only if all environments succeed
        self.cancel = threading.Event()
        self.inputs_hash = loaded.inputs_hash()  # reads every element file: once per bake
        # The builders start now and upgrade every package: the image has every update
        # published before this moment (SCS-0102's image_build_date).
        self.started = dt.datetime.now(dt.UTC)

    def run(self, targets: list[Target]) -> BakeResult:
        for target in targets:
            self.always[target.label] = Cleanup(self.log)
            self.on_failure[target.label] = Cleanup(self.log)
        labels = [target.label for target in targets]
        try:
            images = self._build_all(targets)
            for target, image in zip(targets, images, strict=True):
                with cloud_errors(f"environment {target.label}: releasing {image.name}"):
                    target.conn.image.update_image(
                        image.image_id,
                        bakery_status="released",
                        **release_fields(self.loaded, target.flavor, target.base_image),
                    )
                self.log(f"{target.label}: released image {image.name} ({image.image_id})")
        except BaseException:
            with shielded_from_interrupts():
                # Each environment's images first, then its builder: all environments at once.
                run_in_parallel([(self.on_failure[x], self.always[x]) for x in labels])
            left = [item for x in labels for item in self._leftovers(x)]
            if left:
                self.log("left behind, remove by hand (all tagged 'bakery'): " + "; ".join(left))
            raise
        with shielded_from_interrupts():
            run_in_parallel([(self.always[x],) for x in labels])
        left = [item for x in labels for item in self.always[x].leftovers]
        if left:
            raise ReleaseError("images released, but not removed: " + "; ".join(left))
        return BakeResult(self.build_id, self.loaded.name, images)

    def _leftovers(self, label: str) -> list[str]:
        return self.on_failure[label].leftovers + self.always[label].leftovers

    def _build_all(self, targets: list[Target]) -> list[BakedImage]:
        """Build everywhere at once; the first failure stops the others at their next wait.

        Ctrl-C reaches only this thread: it sets `cancel`, and the workers are joined before
        anything is cleaned up, so no create call lands after the cleanup looked for it."""
        pool = ThreadPoolExecutor(max_workers=len(targets))
        futures = []
        try:
            futures = [pool.submit(self._build_in, target) for target in targets]
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            if not all(f.done() and f.exception() is None for f in futures):
                self.cancel.set()  # an error, or Ctrl-C in this thread
            with shielded_from_interrupts():
                pool.shutdown(wait=True)
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            # The environment that failed, not one that was stopped because of it.
            raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
        return [f.result() for f in futures]

    def _stop_if_cancelled(self, what: str) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"stopped before {what}")

    def _build_in(self, target: Target) -> BakedImage:
        conn, label, build_id = target.conn, target.label, self.build_id
        where = f"environment {label}"
        name = builder_name(build_id)
        builder = _Builder(conn, name)
        self.always[label].push(f"{where}: server and port {name}", builder.remove)
        self._stop_if_cancelled(f"creating builder {name}")
        builder.port = self._builder_port(target, name)
        self._stop_if_cancelled(f"creating builder {name}")
        server = self._builder_server(target, name, builder.port)
        builder.server_id = server.id
        self.log(f"{label}: builder {server.id} started; waiting until it powers off")
        try:
            server = wait_for(
                f"{where}: builder {name} to power off",
                lambda: server_in(conn, server.id, "SHUTOFF", where),
                self.settings.image.build_timeout,
                self.cancel,
                BUILD_BACKOFF,
            )
        except CloudError as error:  # timed out or ERROR: what the console says helps most
            raise CloudError(f"{error}; console:\n{_console_tail(conn, server.id)}") from None
        with cloud_errors(f"{where}: reading the console of {name}"):
            console = conn.compute.get_server_console_output(server.id)["output"] or ""
        _check_result(self.loaded, build_id, console, where)
        image = self._snapshot(target, server.id)
        self.log(f"{label}: image {image.name} ({image.id}) active; removing the builder")
        try:
            with cloud_errors(f"{where}: removing builder {name}"):
                builder.remove()
        except CloudError as error:  # the image is good; the final cleanup tries again
            self.log(f"{error} (tried again at the end)")
        return BakedImage(label, image.id, image.name)

    def _builder_port(self, target: Target, name: str):
        """The builder's port, created before the server and tagged, as launch's are: what a
        bake killed outright (SIGKILL, a lost CI runner) leaves is found by tag."""
        conn = target.conn
        groups: dict[str, Any] = {}  # none given: Neutron's default group of the project
        if target.security_groups:
            groups["security_group_ids"] = [group.id for group in target.security_groups]
        tags = [TAG, BUILDER_TAG]
        with cloud_errors(f"environment {target.label}: creating the port of builder {name}"):
            port = conn.network.create_port(
                name=name,
                network_id=target.network.id,
                description=f"bakery builder of {self.build_id}",
                tags=tags,  # taken at once where Neutron has tag-creation for ports
                **groups,
            )
            if not set(tags) <= set(port.tags or []):
                conn.network.set_tags(port, tags)
        return port

    def _builder_server(self, target: Target, name: str, port):
        conn = target.conn
        assert target.user_data is not None
        placement: dict[str, Any] = {}
        if target.compute_az is not None:
            placement["availability_zone"] = target.compute_az
        with cloud_errors(f"environment {target.label}: creating builder {name}"):
            return conn.compute.create_server(
                name=name,
                image_id=target.base_image.id,
                flavor_id=target.flavor.id,
                networks=[{"port": port.id}],
                **placement,
                user_data=base64.b64encode(target.user_data.text.encode()).decode(),
                metadata={
                    TAG: "builder",
                    "bakery_build_id": self.build_id,
                    "bakery_definition": self.loaded.name,
                    "bakery_inputs_hash": self.inputs_hash,
                },
                tags=[TAG],
            )

    def _snapshot(self, target: Target, server_id: str):
        conn, build_id = target.conn, self.build_id
        where = f"environment {target.label}"
        self.on_failure[target.label].push(
            f"{where}: image {build_id}", lambda: _delete_images(conn, build_id)
        )
        self._stop_if_cancelled(f"snapshotting {build_id}")
        with cloud_errors(f"{where}: snapshotting the builder"):
            metadata = image_properties(
                self.settings, self.loaded, build_id, self.inputs_hash, target, self.started
            )
            image_id = _create_image(conn, server_id, build_id, metadata)
            # Tagged at once, so that `rebuild` finds it should it ever be left behind; the
            # answer is the image's first look at its status too.
            image = conn.image.update_image(image_id, tags=[TAG])
        return _active(image, where) or wait_for(
            f"{where}: image {build_id} to become active",
            lambda: _watch_image(conn, image_id, where),
            SNAPSHOT_TIMEOUT,
            self.cancel,
        )


class _Builder:
    """A builder server and its port, as far as they exist: removed once, by ID where the
    create call answered, else found by name (a call whose answer never came may still have
    created it)."""

    def __init__(self, conn, name: str):
        self.conn = conn
        self.name = name
        self.port: Any = None
        self.server_id: str | None = None
        self.removed = False

    def remove(self) -> None:
        if self.removed:
            return  # the answer is known: nothing to ask the cloud again
        if self.server_id is not None:
            server_ids = [self.server_id]
        else:
            server_ids = [server.id for server in servers_named(self.conn, self.name)]
        for server_id in server_ids:
            self.conn.compute.delete_server(server_id, ignore_missing=True)
        # The port goes while Nova deletes the server, not after it: Neutron lets the port of
        # a server go, and Nova's unbinding of a deleted server's ports tolerates a missing
        # one. Where a Neutron refuses a bound port, delete_port waits until it is let go.
        ports = [self.port] if self.port is not None else self.conn.network.ports(name=self.name)
        for port in ports:
            delete_port(self.conn, port.id)
        wait_until_gone(self.conn, server_ids)
        self.removed = True


def _console_tail(conn, server_id: str) -> str:
    try:
        console = conn.compute.get_server_console_output(server_id)["output"] or ""
    except Exception as error:  # noqa: BLE001 - only for an error message
        return f"    (console unreadable: {error})"
    return "\n".join("    " + line for line in console.splitlines()[-CONSOLE_TAIL:])


def _check_result(loaded: LoadedDefinition, build_id: str, console: str, where: str) -> None:
    result = last_result(console)
    tail = "\n".join("    " + line for line in console.splitlines()[-CONSOLE_TAIL:])
    if result is None:
        raise CloudError(f"{where}: the builder stopped without a result line; console:\n{tail}")
    if result.get("status") != "ok":
        failed_at = "/".join(str(result[k]) for k in ("element", "script") if k in result)
        detail = result.get("error") or failed_at or "no detail"
        raise CloudError(f"{where}: the build failed ({detail}); console:\n{tail}")
    if result.get("build_id") != build_id:
        raise CloudError(
            f"{where}: the result is of build {result.get('build_id')!r}, not {build_id!r}"
        )
    if problems := manifest_problems(loaded, build_id, result.get("manifest")):
        raise CloudError(f"{where}: the image's manifest does not match: " + "; ".join(problems))


def _create_image(conn, server_id: str, name: str, metadata: dict[str, str]) -> str:
    """Nova's createImage; the image's ID comes in the answer (microversion 2.45 and later:
    openstacksdk would first ask Nova which microversions it has)."""
    import openstack.exceptions

    response = conn.compute.post(
        f"/servers/{server_id}/action",
        json={"createImage": {"name": name, "metadata": metadata}},
        microversion=COMPUTE_MICROVERSION,
    )
    openstack.exceptions.raise_from_response(response)
    return response.json()["image_id"]


def _watch_image(conn, image_id: str, where: str):
    with cloud_errors(f"{where}: watching image {image_id}"):
        return _active(conn.image.get_image(image_id), where)


def _active(image, where: str):
    """The image once it is active, else None; a failed one is an error."""
    if image.status in ("killed", "deleted", "deactivated"):
        raise CloudError(f"{where}: image {image.id} is {image.status}")
    return image if image.status == "active" else None


def _delete_images(conn, name: str) -> None:
    for image in conn.image.images(name=name):
        conn.image.delete_image(image, ignore_missing=True)
