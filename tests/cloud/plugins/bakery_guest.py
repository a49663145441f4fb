"""Nova virt driver for the test cloud that plays the guest of a builder server.

Nova loads virt drivers only from the `nova.virt` package, so tests/cloud/plugins.py copies
this file to `nova/virt/bakery_guest.py` in the Nova venv (`compute_driver =
bakery_guest.GuestPlayingDriver`).

A server is a *builder* when its metadata has `bakery_build_id` or `bakery_test_mode` (or its
base image has the property `bakery_test_mode`), or its user-data mentions `BAKERY-RESULT`. A
builder does, after `bakery_test_delay` seconds (metadata, else $BAKERY_GUEST_DELAY, else 1),
what `bakery_test_mode` says:
  ok (default)  prints `BAKERY-RESULT {"status": "ok", "build_id": ..., "manifest": {...}}`,
                powers off; the manifest is what a guest that installed exactly the pins of
                the user-data's build.env would report ({} without a build.env)
  drift         as ok, but the manifest's Patroni version differs from the pin
  fail          prints `BAKERY-RESULT {"status": "failed", ...}`, powers off
  hang          prints nothing, never powers off
  garbage       prints random text that is no result line, powers off
Other servers keep running. Snapshots upload a few bytes so that the image becomes active.
"""

import base64
import binascii
import gzip
import hashlib
import io
import json
import os
import random
import string
import threading
import time

import yaml
from nova import context as nova_context
from nova import exception, objects
from nova.compute import power_state, task_states, vm_states
from nova.image import glance
from nova.virt import event as virtevent
from nova.virt import fake
from oslo_log import log as logging

LOG = logging.getLogger(__name__)
RESULT = "BAKERY-RESULT"


def _build_env(user_data):
    """The build inputs a bake's user-data writes to /run/bakery/build.env, or {}."""
    if not user_data or not user_data.startswith(b"#cloud-config"):
        return {}
    try:
        config = yaml.safe_load(user_data)
    except yaml.YAMLError:
        return {}
    for entry in (config or {}).get("write_files") or []:
        if isinstance(entry, dict) and entry.get("path") == "/run/bakery/build.env":
            pairs = (line.split("=", 1) for line in str(entry.get("content", "")).splitlines())
            return {key: value for key, value in (p for p in pairs if len(p) == 2)}
    return {}


def _manifest(env, mode):
    """What run-elements would report after installing exactly what `env` pins."""
    if not env:
        return {}
    major = env.get("BAKERY_PG_MAJOR", "")
    components = {
        "postgresql": {"major": int(major) if major.isdigit() else major, "version": f"{major}.23"},
        "patroni": {"version": env.get("BAKERY_PATRONI_VERSION")},
        "psycopg2": {"version": env.get("BAKERY_PSYCOPG2_VERSION")},
    }
    if mode == "drift":
        components["patroni"]["version"] = "0.0.0+drift"
    if env.get("BAKERY_CONSUL_VERSION"):
        components["consul"] = {"version": env["BAKERY_CONSUL_VERSION"]}
    for name in ("pgbackrest", "nebula"):
        if f"BAKERY_{name.upper()}_VERSION" in env:
            components[name] = {"package": env[f"BAKERY_{name.upper()}_VERSION"] + "-fake1"}
    for name, variable in (
        ("prometheus-node-exporter", "BAKERY_NODE_EXPORTER_VERSION"),
        ("prometheus-postgres-exporter", "BAKERY_POSTGRES_EXPORTER_VERSION"),
    ):
        if variable in env:
            components[name] = {"package": env[variable] + "-fake1"}
    return {
        "schema": 1,
        "image": env.get("BAKERY_IMAGE_NAME"),
        "build_id": env.get("BAKERY_BUILD_ID"),
        "inputs_hash": env.get("BAKERY_INPUTS_HASH"),
        "components": components,
    }


def _user_data(instance):
    """Decoded user-data, or None when missing or not base64 (cloud-init would not run it)."""
    if not instance.user_data:
        return None
    try:
        raw = base64.b64decode(instance.user_data, validate=True)
    except (binascii.Error, ValueError):
        return None
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw


class GuestPlayingDriver(fake.FakeDriverWithoutFakeNodes):
    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only)
        self._consoles = {}

    def _print(self, instance, line):
        self._consoles.setdefault(instance.uuid, []).append(line)

    def spawn(
        self,
        context,
        instance,
        image_meta,
        injected_files,
        admin_password,
        allocations,
        network_info=None,
        block_device_info=None,
        power_on=True,
        accel_info=None,
    ):
        super().spawn(
            context,
            instance,
            image_meta,
            injected_files,
            admin_password,
            allocations,
            network_info,
            block_device_info,
            power_on,
            accel_info,
        )
        meta = dict(instance.metadata or {})
        user_data = _user_data(instance)
        # The mode comes from the server's metadata, or from its base image's properties, which
        # Nova copies into system metadata as image_<key> (a test selects a failing guest for
        # one environment through the base image it bakes from).
        system = dict(instance.system_metadata or {})
        mode = meta.get("bakery_test_mode") or system.get("image_bakery_test_mode") or "ok"
        builder = (
            "bakery_build_id" in meta
            or "bakery_test_mode" in meta
            or "image_bakery_test_mode" in system
            or (user_data is not None and RESULT.encode() in user_data)
        )
        if mode != "hang":
            self._print(instance, f"bakery-guest: booted {instance.uuid} on {self._host}")
            if user_data is None:
                self._print(instance, "bakery-guest: no usable user-data")
            else:
                digest = hashlib.sha256(user_data).hexdigest()
                self._print(
                    instance, f"bakery-guest: user-data {len(user_data)} bytes sha256={digest}"
                )
        if not builder or mode == "hang":
            return
        delay = float(meta.get("bakery_test_delay", os.environ.get("BAKERY_GUEST_DELAY", 1)))
        build_id = meta.get("bakery_build_id", "test")
        manifest = _manifest(_build_env(user_data), mode)
        timer = threading.Timer(delay, self._finish, (instance.uuid, mode, build_id, manifest))
        timer.daemon = True
        timer.start()

    def _finish(self, uuid, mode, build_id, manifest):
        if uuid not in self.instances:
            return
        ctx = nova_context.get_admin_context()
        instance = objects.Instance.get_by_uuid(ctx, uuid)
        if mode == "garbage":
            for _ in range(3):
                text = "".join(random.choices(string.ascii_letters + string.punctuation, k=60))
                self._print(instance, text.replace("BAKERY", "bakery"))
        else:
            status = "failed" if mode == "fail" else "ok"
            result = {"status": status, "build_id": build_id, "manifest": manifest}
            if mode == "fail":
                result["error"] = "bakery_test_mode=fail"
            self._print(instance, f"{RESULT} {json.dumps(result)}")
        self._print(instance, "bakery-guest: powering off")
        self.instances[uuid].state = power_state.SHUTDOWN
        # Nova ignores the event while a task (e.g. the end of spawn) is still running: repeat it
        # until the server is recorded as stopped.
        for _ in range(120):
            self.emit_event(virtevent.LifecycleEvent(uuid, virtevent.EVENT_LIFECYCLE_STOPPED))
            time.sleep(1)
            try:
                instance.refresh()
            except exception.InstanceNotFound:
                return
            if instance.vm_state != vm_states.ACTIVE or instance.deleted:
                return
        LOG.warning("bakery-guest: %s still ACTIVE after poweroff", uuid)

    def power_on(
        self,
        context,
        instance,
        network_info,
        block_device_info=None,
        accel_info=None,
        share_info=None,
    ):
        super().power_on(context, instance, network_info, block_device_info, accel_info, share_info)
        self._print(instance, "bakery-guest: powered on")

    def get_console_output(self, context, instance):
        lines = self._consoles.get(instance.uuid, [])
        return "".join(line + "\n" for line in lines)

    def destroy(
        self,
        context,
        instance,
        network_info,
        block_device_info=None,
        destroy_disks=True,
        destroy_secrets=True,
    ):
        self._consoles.pop(instance.uuid, None)
        super().destroy(
            context, instance, network_info, block_device_info, destroy_disks, destroy_secrets
        )

    def snapshot(self, context, instance, image_id, update_task_state):
        if instance.uuid not in self.instances:
            raise exception.InstanceNotRunning(instance_id=instance.uuid)
        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        update_task_state(
            task_state=task_states.IMAGE_UPLOADING, expected_state=task_states.IMAGE_PENDING_UPLOAD
        )
        data = io.BytesIO(b"bakery fake disk of " + instance.uuid.encode() + b"\n")
        meta = {"disk_format": "raw", "container_format": "bare"}
        # purge_props=False keeps the properties Nova copied from the base image.
        glance.API().update(context, image_id, meta, data, purge_props=False)
