"""Guests beyond a database node: what a dead nova-compute leaves is swept, and the actions some
hypervisors do not support are refused without harm."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time

import pytest
from harness import wait_for
from processes import alive, start_time

from tests.owned_netns import ns_inode, ns_path

from . import guest
from .layout import Layout
from .provision import BASE_IMAGE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning"),
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK60Warning"),
]


def test_what_a_dead_nova_compute_left_is_swept(cloud, tmp_path):
    """A guest of a nova-compute that died (SIGKILL, a crash): its VM process, what runs in
    its namespace, the namespace and its disk are removed by the next sweep (the stack's start
    and stop run it); a guest whose owner lives is left alone."""
    layout = Layout.default()
    dead = subprocess.Popen(["true"])
    dead.wait()  # its PID names an owner that is gone
    disks = {}
    for owner in (dead.pid, os.getpid()):
        token = secrets.token_hex(3)
        disk = layout.data / "nova" / "compute1" / "instances" / f"sweep-test-{token}"
        disk.mkdir(parents=True)
        spec = {"owner": owner, "owner_started": start_time(owner), "netns": f"bkg-{owner}-{token}"}
        (disk / guest.GUEST).write_text(json.dumps(spec))
        subprocess.run(["ip", "netns", "add", spec["netns"]], check=True)
        # Stand-ins for a VM process and a service inside the guest.
        runner = subprocess.Popen(["sleep", "300"])
        service = subprocess.Popen(["ip", "netns", "exec", spec["netns"], "sleep", "300"])
        state = {"runner": runner.pid, "runner_started": start_time(runner.pid)}
        (disk / guest.RUN).write_text(json.dumps(state))
        disks[owner] = (disk, spec["netns"], runner, service)
    try:
        swept = guest.sweep(layout)
        disk, netns, runner, service = disks[dead.pid]
        assert [line.split(" (")[0] for line in swept] == [f"guest {disk.name}"]
        assert not disk.exists() and ns_inode(ns_path(netns)) is None
        for proc in (runner, service):
            assert proc.wait(10) == -9
        disk, netns, runner, service = disks[os.getpid()]
        assert disk.exists() and ns_inode(ns_path(netns)) is not None
        assert alive(runner.pid, start_time(runner.pid)) and service.poll() is None
    finally:
        for disk, *_ in disks.values():
            guest.destroy(disk)
        for _, _, runner, service in disks.values():
            for proc in (runner, service):
                proc.kill()
                proc.wait(10)


def test_pause_and_suspend_are_not_supported(cloud):
    conn = cloud.connect(cloud.clouds[0])
    server = conn.compute.create_server(
        name="no-pause",
        image_id=conn.image.find_image(BASE_IMAGE, ignore_missing=False).id,
        flavor_id=conn.compute.find_flavor("SCS-1V-2-10", ignore_missing=False).id,
        networks=[{"uuid": conn.network.find_network("private", ignore_missing=False).id}],
    )
    try:
        conn.compute.wait_for_server(server, status="ACTIVE", interval=0.5, wait=120)
        for action in (conn.compute.pause_server, conn.compute.suspend_server):
            action(server)
            time.sleep(1)
            wait_for(
                "the action to end", lambda: not conn.compute.get_server(server).task_state, 60
            )
            assert conn.compute.get_server(server).status == "ACTIVE"
        console = conn.compute.get_server_console_output(server)["output"]
        assert "Cloud-init v. " in console  # the guest kept running
    finally:
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, interval=0.5, wait=120)
