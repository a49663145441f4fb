"""The cloud builder's user-data in a real VM: cloud-init writes the payload, runcmd starts
builder-run, the result line reaches the serial console, the VM powers itself off, and the
disk it leaves behind (what a cloud would snapshot) holds nothing of that boot.

No network reaches the guest here, so the builder re-runs only the elements that need none
(manifest and generalize) on the built golden image; the local bake has already run the whole
payload through the same builder-run in a chroot.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import imagetest_harness as harness
import pytest
import yaml

from bakery.cleanup import Cleanup
from bakery.image.builderdata import builder_user_data
from bakery.image.definition import PROJECT_ROOT, load_definition
from bakery.image.localbuild import PARTITION_OFFSET
from bakery.image.manifest import last_result, manifest_problems
from tests.sigterm import teardown_first

pytestmark = pytest.mark.slow
DEFINITION = PROJECT_ROOT / "images" / "local-test.yaml"
BUILD_ID = "local-test-builder-vm"
ELEMENTS = ["manifest", "generalize"]


@pytest.fixture(scope="module")
def builder_run(built, tmp_path_factory):
    """Boot an overlay of the built image with the builder's user-data until it powers off;
    yield its console and the overlay's disk, mounted read-only."""
    work = harness.BUILD_ROOT / "builder-vm"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    loaded = load_definition(DEFINITION)
    data = yaml.safe_load(builder_user_data(loaded, BUILD_ID, "amd64").text)
    (runner,) = data["runcmd"]
    data["runcmd"] = [[*runner[: runner.index("--build-id") + 2], *ELEMENTS]]
    user_data = work / "user-data"
    user_data.write_text("#cloud-config\n" + yaml.safe_dump(data, sort_keys=False))
    overlay = work / "disk.qcow2"
    base = str(built.qcow2)
    harness.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", str(overlay)]
    )
    guest = harness.boot(overlay, user_data, work, "builder-vm", with_etcd=False, keep_writes=True)
    try:
        # builder-run powers off from within cloud-init's final stage, so cloud-init never
        # says it finished: if it does, the builder did not power off (no need to wait longer).
        guest.wait_console(" running 'modules:final' ", timeout=420)
        took = guest.wait_exit(timeout=300, fail_on=" finished at ")
        harness.FIGURES["builder VM: boot to power-off"] = f"{took:.1f} s"
    finally:
        with teardown_first():
            problems = guest.close()
    assert not problems, f"left behind: {problems}"
    cleanup = Cleanup(print)
    try:
        yield guest.console_text(), _mounted(overlay, work, cleanup), loaded
    finally:
        with teardown_first():
            cleanup.run()
    assert not cleanup.leftovers


def _mounted(overlay: Path, work: Path, cleanup: Cleanup) -> Path:
    raw = work / "disk.raw"
    harness.run(["qemu-img", "convert", "-O", "raw", str(overlay), str(raw)], timeout=300)
    cleanup.push(f"remove {raw}", lambda: raw.unlink(missing_ok=True))
    loop = harness.run(
        ["losetup", "--find", "--show", "--read-only", "--offset", str(PARTITION_OFFSET), str(raw)]
    ).stdout.strip()
    cleanup.push(f"losetup -d {loop}", lambda: harness.run(["losetup", "-d", loop]))
    root = work / "root"
    root.mkdir()
    harness.run(["mount", "-o", "ro,noload", loop, str(root)])
    cleanup.push(f"umount {root}", lambda: harness.run(["umount", str(root)]))
    return root


def test_the_builder_reports_on_the_console_and_powers_off(builder_run):
    console, _, loaded = builder_run
    result = last_result(console)
    assert result is not None, console[-3000:]
    assert result["status"] == "ok", result
    assert result["build_id"] == BUILD_ID
    # The manifest, written inside the VM, is this build's and matches every pin.
    assert manifest_problems(loaded, BUILD_ID, result["manifest"]) == []


def test_the_disk_left_behind_holds_nothing_of_the_builder_boot(builder_run):
    _, root, _ = builder_run
    leftovers = {
        "machine-id": (root / "etc/machine-id").read_text(),
        "ssh host keys": sorted(p.name for p in (root / "etc/ssh").glob("ssh_host_*")),
        "random seed": (root / "var/lib/systemd/random-seed").exists(),
        "cloud-init state": sorted(
            str(p.relative_to(root)) for p in (root / "var/lib/cloud").rglob("*") if p.is_file()
        ),
        "staging": (root / "run/bakery").exists(),
    }
    with contextlib.suppress(FileNotFoundError):
        leftovers["journal"] = sorted(
            str(p.relative_to(root)) for p in (root / "var/log/journal").rglob("*.journal")
        )
    assert leftovers == {
        "machine-id": "",
        "ssh host keys": [],
        "random seed": False,
        "cloud-init state": [],
        "staging": False,
        "journal": [],
    }
