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
   half-way leaves nothing behind;
3. an image is released (`bakery_status=released`) only when every environment has built and
   verified its own: a bake lands everywhere or nowhere. On failure, Ctrl-C or SIGTERM the
   builder VMs and this bake's images are deleted; builder VMs always are.
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

from ..cleanup import Cleanup, ReleaseError, interrupt_on_sigterm, shielded_from_interrupts
from ..config import Settings, builder_problems, first_az
from ..errors import BakeryError, ConfigError, Problem
from ..image.builderdata import BuilderUserData, builder_user_data
from ..image.definition import LoadedDefinition, load_definition
from ..image.manifest import last_result, manifest_problems
from .api import (
    TAG,
    Cancelled,
    CloudError,
    PreflightError,
    check_compute_az,
    cloud_errors,
    connect,
    delete_servers_named,
    find_named,
    image_property,
    server_in,
    wait_for,
)

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
    security_groups: list[str]
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
) -> BakeResult:
    """Bake the definition in the chosen environments (default: all of them)."""
    loaded = load_definition(definition or settings.image.definition)
    labels = _chosen(settings, environments)
    build_id = new_build_id(loaded)
    with interrupt_on_sigterm():
        targets = _preflight(settings, loaded, labels, build_id, log)
        return _Bake(settings, loaded, build_id, log).run(targets)


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
) -> list[Target]:
    """Resolve every environment; raise one error listing every problem found."""
    # What needs no cloud first: user-data for each architecture the definition builds.
    user_data = {
        arch: builder_user_data(loaded, build_id, arch, settings.template_overrides)
        for arch in loaded.definition.base.architectures
    }
    targets, problems = [], []
    for label in labels:
        try:
            target = _resolve(settings, loaded, label)
            target.user_data = user_data[target.arch]  # _resolve checked the architecture
            targets.append(target)
            log(
                f"{label}: base image {target.base_image.name!r} ({target.base_image.id}), "
                f"flavor {target.flavor.name}, network {target.network.name}, {target.arch}"
            )
        except BakeryError as error:
            problems.append(str(error))
    if problems:
        raise PreflightError(problems)
    return targets


def _resolve(settings: Settings, loaded: LoadedDefinition, label: str) -> Target:
    environment = settings.environments[label]
    az = first_az(settings, label)
    builder = environment.builder

    def pick(key: str) -> Any:
        own = getattr(builder, key)
        return own if own is not None or az is None else getattr(az, key)

    conn = connect(label, environment)
    where = f"environment {label}"
    with cloud_errors(where):
        base = find_base_image(conn, settings, loaded, where)
        flavor = find_named(conn.compute.find_flavor, pick("flavor"), "flavor", where)
        if (flavor.disk or 0) < (base.min_disk or 0) or (flavor.ram or 0) < (base.min_ram or 0):
            raise CloudError(
                f"{where}: flavor {flavor.name} ({flavor.disk} GB, {flavor.ram} MiB) is below "
                f"the base image's minimum ({base.min_disk} GB, {base.min_ram} MiB)"
            )
        if not flavor.disk:
            raise CloudError(f"{where}: flavor {flavor.name} has no root disk to snapshot")
        network = find_named(conn.network.find_network, pick("network"), "network", where)
        groups = list(pick("security_groups") or [])
        for group in groups:
            find_named(conn.network.find_security_group, group, "security group", where)
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


def find_base_image(conn, settings: Settings, loaded: LoadedDefinition, where: str):
    wanted = settings.image.base_image
    if wanted.name is not None:
        found = [i for i in conn.image.images(name=wanted.name) if i.status == "active"]
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
        for image in conn.image.images(status="active")
        if all(str(image_property(image, k)) == v for k, v in properties.items())
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
    """One bake's run: the environments' threads share its cleanups and its cancel flag."""

    def __init__(self, settings, loaded, build_id, log):
        self.settings = settings
        self.loaded: LoadedDefinition = loaded
        self.build_id: str = build_id
        self.log: Callable[[str], None] = log
        self.always = Cleanup(log)  # builder VMs: removed whatever happens
        self.on_failure = Cleanup(log)  # this bake's images: kept only if all environments succeed
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self.inputs_hash = loaded.inputs_hash()  # reads every element file: once per bake

    def register(self, cleanup: Cleanup, what: str, action: Callable[[], None]) -> None:
        with self._lock:
            cleanup.push(what, action)

    def run(self, targets: list[Target]) -> BakeResult:
        try:
            images = self._build_all(targets)
            for target, image in zip(targets, images, strict=True):
                with cloud_errors(f"environment {target.label}: releasing {image.name}"):
                    target.conn.image.update_image(image.image_id, bakery_status="released")
                self.log(f"{target.label}: released image {image.name} ({image.image_id})")
        except BaseException:
            with shielded_from_interrupts():
                self.on_failure.run()
                self.always.run()
            left = self.on_failure.leftovers + self.always.leftovers
            if left:
                self.log("left behind, remove by hand (all tagged 'bakery'): " + "; ".join(left))
            raise
        with shielded_from_interrupts():
            self.always.run()
        if self.always.leftovers:
            raise ReleaseError(
                "images released, but not removed: " + "; ".join(self.always.leftovers)
            )
        return BakeResult(self.build_id, self.loaded.name, images)

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
        self.register(
            self.always, f"{where}: server {name}", lambda: delete_servers_named(conn, name)
        )
        assert target.user_data is not None
        placement: dict[str, Any] = {}
        if target.security_groups:
            placement["security_groups"] = [{"name": g} for g in target.security_groups]
        if target.compute_az is not None:
            placement["availability_zone"] = target.compute_az
        self._stop_if_cancelled(f"creating builder {name}")
        with cloud_errors(f"{where}: creating builder {name}"):
            server = conn.compute.create_server(
                name=name,
                image_id=target.base_image.id,
                flavor_id=target.flavor.id,
                networks=[{"uuid": target.network.id}],
                **placement,
                user_data=base64.b64encode(target.user_data.text.encode()).decode(),
                metadata={
                    TAG: "builder",
                    "bakery_build_id": build_id,
                    "bakery_definition": self.loaded.name,
                    "bakery_inputs_hash": self.inputs_hash,
                },
                tags=[TAG],
            )
        self.log(f"{label}: builder {server.id} started; waiting until it powers off")
        try:
            server = wait_for(
                f"{where}: builder {name} to power off",
                lambda: server_in(conn, server.id, "SHUTOFF", where),
                self.settings.image.build_timeout,
                self.cancel,
                interval=5,
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
                delete_servers_named(conn, name)
        except CloudError as error:  # the image is good; the final cleanup tries again
            self.log(f"{error} (tried again at the end)")
        return BakedImage(label, image.id, image.name)

    def _snapshot(self, target: Target, server_id: str):
        conn, build_id = target.conn, self.build_id
        where = f"environment {target.label}"
        self.register(
            self.on_failure, f"{where}: image {build_id}", lambda: _delete_images(conn, build_id)
        )
        self._stop_if_cancelled(f"snapshotting {build_id}")
        with cloud_errors(f"{where}: snapshotting the builder"):
            image = conn.compute.create_server_image(
                server_id,
                name=build_id,
                metadata=_image_properties(build_id, self.loaded, self.inputs_hash, target),
            )
            # Tagged at once: should this image ever be left behind, `rebuild` finds it.
            conn.image.add_tag(image, TAG)
        return wait_for(
            f"{where}: image {build_id} to become active",
            lambda: _active(conn, image.id, where),
            SNAPSHOT_TIMEOUT,
            self.cancel,
        )


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


def _active(conn, image_id: str, where: str):
    with cloud_errors(f"{where}: watching image {image_id}"):
        image = conn.image.get_image(image_id)
    if image.status in ("killed", "deleted", "deactivated"):
        raise CloudError(f"{where}: image {image_id} is {image.status}")
    return image if image.status == "active" else None


def _image_properties(
    build_id: str, loaded: LoadedDefinition, inputs_hash: str, target: Target
) -> dict[str, str]:
    """What the image says about itself. Nova copies the base image's properties (SCS
    metadata, hw_*) into the snapshot; these are added or replace them."""
    base = target.base_image
    now = dt.datetime.now(dt.UTC)
    properties = {
        TAG: "image",
        "bakery_status": "candidate",
        "bakery_definition": loaded.name,
        "bakery_build_id": build_id,
        "bakery_inputs_hash": inputs_hash,
        "bakery_base_image_id": base.id,
        "bakery_base_build_date": str(image_property(base, "image_build_date") or base.created_at),
        "image_build_date": now.strftime("%Y-%m-%d %H:%M"),
        "image_description": f"bakery golden image {loaded.name} ({build_id})"[:255],
    }
    versions = _component_versions(loaded)
    properties.update({f"bakery_{name}": value for name, value in versions.items()})
    return properties


def _component_versions(loaded: LoadedDefinition) -> dict[str, str]:
    c = loaded.definition.components
    versions = {
        "postgresql_major": str(c.postgresql.major),
        "patroni": c.patroni.version,
        "psycopg2": c.psycopg2.version,
    }
    if c.consul is not None:
        versions["consul"] = c.consul.version
    return versions


def _delete_images(conn, name: str) -> None:
    for image in conn.image.images(name=name):
        conn.image.delete_image(image, ignore_missing=True)
