"""Nova virt driver for the test cloud: plays the guest of a builder server, and runs every
other server as a real guest (tests/cloud/guest.py: a node runner process per server).

Nova loads virt drivers only from the `nova.virt` package, so tests/cloud/plugins.py puts a
shim at `nova/virt/bakery_guest.py` in the shared Nova venv (`compute_driver =
bakery_guest.GuestPlayingDriver`) that loads this file from the stack's own checkout
($BAKERY_CLOUD_PLUGINS).

Every server has a disk directory `<instances_path>/<uuid>/` whose `console.log` is its
console (it survives a restart of nova-compute). A server that is no builder is a guest: spawn
writes `guest.json` and `user-data` there and starts its VM process with the project's Python
($BAKERY_GUEST_PYTHON in $BAKERY_GUEST_REPO, set by the stack); stop is an ACPI shutdown
(`guest poweroff --timeout`, hard at the timeout), start boots the same disk again, a soft reboot
is both, a hard reboot a power cut and a boot, delete a power cut and the disk removed. Pause and
suspend are not supported, as on some hypervisors.

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
Snapshots upload a few bytes so that the image becomes active.
"""

import base64
import binascii
import gzip
import hashlib
import io
import json
import os
import random
import secrets
import shutil
import string
import subprocess
import threading
import time

import nova.conf
import yaml
from nova import context as nova_context
from nova import exception, objects
from nova.compute import power_state, task_states, vm_states
from nova.image import glance
from nova.virt import event as virtevent
from nova.virt import fake
from oslo_log import log as logging

LOG = logging.getLogger(__name__)
CONF = nova.conf.CONF
RESULT = "BAKERY-RESULT"
# Nova's libvirt driver returns at most the last 100 KiB of a console log.
MAX_CONSOLE_BYTES = 100 * 1024
GUEST_PYTHON = os.environ.get("BAKERY_GUEST_PYTHON")
GUEST_REPO = os.environ.get("BAKERY_GUEST_REPO")
GUEST_NET = os.environ.get("BAKERY_GUEST_NET")


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


def _start_time(pid):
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[19])


def _port(network_info):
    """The first port's network, MAC, IPv4 address, prefix and gateway, or None."""
    for vif in network_info or []:
        for subnet in vif["network"]["subnets"]:
            if subnet["version"] == 4 and subnet["ips"]:
                gateway = subnet["gateway"]["address"] if subnet["gateway"] else None
                return {
                    "id": vif["network"]["id"],
                    "mac": vif["address"],
                    "address": subnet["ips"][0]["address"],
                    "prefix": int(subnet["cidr"].split("/")[1]),
                    "gateway": gateway,
                }
    return None


class GuestPlayingDriver(fake.FakeDriverWithoutFakeNodes):
    def __init__(self, virtapi, read_only=False):
        # A stack of an older checkout copies its driver over the shim: refuse to run another
        # checkout's code rather than play its guests.
        here = os.path.realpath(__file__)
        if GUEST_REPO and not here.startswith(os.path.realpath(GUEST_REPO) + os.sep):
            raise exception.NovaException(
                f"bakery-guest: {here} is not the driver of {GUEST_REPO}: the shared Nova venv "
                "holds another checkout's copy instead of the shim (tests/cloud/plugins.py)"
            )
        super().__init__(virtapi, read_only)
        self._vms = {}  # uuid -> Popen of the guest's VM process

    def _disk(self, uuid):
        return os.path.join(CONF.instances_path, uuid)

    def _print(self, instance, line):
        disk = self._disk(instance.uuid)
        os.makedirs(disk, mode=0o700, exist_ok=True)
        with open(os.path.join(disk, "console.log"), "a") as console:
            console.write(line + "\n")

    def _is_guest(self, uuid):
        return os.path.exists(os.path.join(self._disk(uuid), "guest.json"))

    def _guest(self, command, uuid, *args, timeout=120):
        """Run `python -m tests.cloud.guest COMMAND --disk DIR ARGS` and wait for it."""
        argv = [GUEST_PYTHON, "-m", "tests.cloud.guest", command, "--disk", self._disk(uuid)]
        result = subprocess.run(
            argv + list(args),
            cwd=GUEST_REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self._reap()
        if result.returncode != 0:
            LOG.error("bakery-guest: %s %s failed: %s", command, uuid, result.stderr.strip())
            raise exception.NovaException(f"guest {command} failed: {result.stderr.strip()}")

    def _reap(self):
        for uuid, vm in list(self._vms.items()):
            if vm.poll() is not None:
                self._vms.pop(uuid, None)  # Nova calls drivers from several threads

    def _vm_running(self, uuid):
        self._reap()
        return uuid in self._vms

    def _write_guest(self, instance, image_meta, user_data, network_info):
        disk = self._disk(instance.uuid)
        os.makedirs(disk, mode=0o700, exist_ok=True)
        system = dict(instance.system_metadata or {})
        spec = {
            "uuid": instance.uuid,
            "hostname": instance.hostname or instance.uuid[:8],
            "host": self._host,
            "network": _port(network_info),
            "image": {
                "id": instance.image_ref,
                "name": getattr(image_meta, "name", None),
                "properties": {k[6:]: v for k, v in system.items() if k.startswith("image_")},
            },
            "net_json": GUEST_NET,
        }
        with open(os.path.join(disk, "guest.json.new"), "w") as out:
            json.dump(spec, out, indent=2)
        os.rename(os.path.join(disk, "guest.json.new"), os.path.join(disk, "guest.json"))
        fd = os.open(os.path.join(disk, "user-data"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(user_data or b"")

    def _boot(self, uuid):
        """Start the guest's VM process: this nova-compute owns it and its namespace, whose
        name (bkg-<owner>-<6 hex>) says so; a new name at every boot."""
        if not (GUEST_PYTHON and GUEST_REPO and GUEST_NET):
            raise exception.NovaException("bakery-guest: the stack did not set BAKERY_GUEST_*")
        path = os.path.join(self._disk(uuid), "guest.json")
        with open(path) as spec_file:
            spec = json.load(spec_file)
        owner, token = os.getpid(), secrets.token_hex(3)
        spec |= {
            "owner": owner,
            "owner_started": _start_time(owner),
            "netns": f"bkg-{owner}-{token}",
            "veth": f"g{owner}-{token}",
        }
        with open(path + ".new", "w") as out:
            json.dump(spec, out, indent=2)
        os.rename(path + ".new", path)
        os.makedirs(os.path.join(self._disk(uuid), "journal"), exist_ok=True)
        with open(os.path.join(self._disk(uuid), "journal", "vm.log"), "ab") as log:
            # Not a session of its own: the stack's stop follows nova-compute's sessions.
            self._vms[uuid] = subprocess.Popen(
                [GUEST_PYTHON, "-m", "tests.cloud.guest", "boot", "--disk", self._disk(uuid)],
                cwd=GUEST_REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

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
        if not builder:
            self._write_guest(instance, image_meta, user_data, network_info)
            self._boot(instance.uuid)
            return
        if mode == "hang":
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
        if self._is_guest(instance.uuid) and not self._vm_running(instance.uuid):
            self._boot(instance.uuid)

    def power_off(self, instance, timeout=0, retry_interval=0):
        """ACPI shutdown for `timeout` seconds (Nova's shutdown_timeout for a stop), then a
        power cut; timeout 0 is a power cut at once."""
        super().power_off(instance, timeout, retry_interval)
        if self._is_guest(instance.uuid):
            self._guest("poweroff", instance.uuid, "--timeout", str(timeout), timeout=timeout + 120)

    def reboot(
        self,
        context,
        instance,
        network_info,
        reboot_type,
        block_device_info=None,
        bad_volumes_callback=None,
        accel_info=None,
        share_info=None,
    ):
        if not self._is_guest(instance.uuid):
            return super().reboot(
                context,
                instance,
                network_info,
                reboot_type,
                block_device_info,
                bad_volumes_callback,
                accel_info,
                share_info,
            )
        # Soft: the guest shuts down cleanly (ACPI) and boots again; hard: a power cut.
        timeout = CONF.shutdown_timeout if reboot_type.lower() == "soft" else 0
        self._guest("poweroff", instance.uuid, "--timeout", str(timeout), timeout=timeout + 120)
        self._print(instance, f"bakery-guest: {reboot_type.lower()} reboot")
        self._boot(instance.uuid)
        if instance.uuid in self.instances:
            self.instances[instance.uuid].state = power_state.RUNNING
        else:
            self.instances[instance.uuid] = fake.FakeInstance(
                instance.name, power_state.RUNNING, instance.uuid
            )

    def pause(self, instance):
        raise NotImplementedError("pause is not supported by the bakery test guests")

    def suspend(self, context, instance):
        raise NotImplementedError("suspend is not supported by the bakery test guests")

    def get_info(self, instance, use_cache=True):
        """A guest whose VM process ended without a power-off from Nova has crashed."""
        info = super().get_info(instance, use_cache)
        uuid = instance.uuid
        running = self.instances[uuid].state == power_state.RUNNING
        if self._is_guest(uuid) and running and not self._vm_running(uuid):
            self.instances[uuid].state = power_state.CRASHED
            return super().get_info(instance, use_cache)
        return info

    def get_console_output(self, context, instance):
        path = os.path.join(self._disk(instance.uuid), "console.log")
        try:
            with open(path, "rb") as console:
                console.seek(max(0, os.path.getsize(path) - MAX_CONSOLE_BYTES))
                return console.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def destroy(
        self,
        context,
        instance,
        network_info,
        block_device_info=None,
        destroy_disks=True,
        destroy_secrets=True,
    ):
        """Delete: a power cut, then the disk is gone (a real hypervisor does not shut a
        deleted server down cleanly either)."""
        uuid = instance.uuid
        if self._is_guest(uuid):
            if destroy_disks:
                self._guest("destroy", uuid)
            else:
                self._guest("poweroff", uuid, "--hard")
        elif destroy_disks:
            shutil.rmtree(self._disk(uuid), ignore_errors=True)
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
