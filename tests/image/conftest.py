"""Fixtures of the image tier: one cold build of images/local-test.yaml, one node bundle from
`invoke render`, one boot of the built image under QEMU with that bundle.

The build goes to build/image-test/ (git-ignored); the mmdebstrap base is cached in
~/.cache/bakery (BAKERY_CACHE_DIR), keyed by its inputs, and rebuilt when missing. Set
BAKERY_IMAGE_REUSE=1 to reuse a finished build with the same inputs hash (development only).
Wall times are printed in the terminal summary and written to build/image-test/bench.json.
Namespaces of earlier runs killed before their teardown are swept first (tests/owned_netns.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import imagetest_harness as harness
import pytest
import yaml

from bakery.image import localbuild
from bakery.image.definition import PROJECT_ROOT, load_definition
from tests.owned_netns import report_sweep
from tests.sigterm import teardown_first

HERE = Path(__file__).resolve().parent
BUILD_ROOT = harness.BUILD_ROOT
DEFINITION = PROJECT_ROOT / "images" / "local-test.yaml"
FIGURES = harness.FIGURES


def pytest_sessionstart(session):
    report_sweep("image")


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("image tier: wall times and sizes")
    for key, value in FIGURES.items():
        terminalreporter.write_line(f"{key:<34} {value}")
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    (BUILD_ROOT / "bench.json").write_text(json.dumps(FIGURES, indent=2) + "\n")


def _require_root():
    if os.geteuid() != 0:
        pytest.fail("the image tier needs root (chroot, mounts, loop devices, namespaces)")


@pytest.fixture(scope="session")
def built() -> localbuild.BuildResult:
    """The local-test image, built once per session (cold unless BAKERY_IMAGE_REUSE=1)."""
    _require_root()
    out = BUILD_ROOT / "local-test"
    loaded = load_definition(DEFINITION)
    if os.environ.get("BAKERY_IMAGE_REUSE") == "1" and (out / "build.json").exists():
        previous = localbuild.load_result(out)
        if previous.inputs_hash == loaded.inputs_hash() and previous.qcow2.exists():
            FIGURES["build (reused)"] = f"{previous.timings['total']} s"
            return previous
    start = time.monotonic()
    result = localbuild.build(DEFINITION, out, keep_tree=True, echo=False)
    FIGURES["build wall time"] = f"{time.monotonic() - start:.0f} s {result.timings}"
    mib = 1024 * 1024
    FIGURES["image size qcow2"] = f"{result.sizes['qcow2'] / mib:.0f} MiB"
    FIGURES["image size raw (allocated/virtual)"] = (
        f"{result.sizes['raw_allocated'] / mib:.0f} / {result.sizes['raw_virtual'] / mib:.0f} MiB"
    )
    return result


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict:
    """One node's bundle from `invoke render`, for tests/image/node.yaml with its state in a
    temp dir; returns the paths and the render manifest's entry for the node."""
    work = tmp_path_factory.mktemp("render")
    config = yaml.safe_load((HERE / "node.yaml").read_text())
    state = work / "state"
    config["bakery"]["state_dir"] = str(state)
    config["bakery"]["pki"]["ca_cert"] = str(state / "ca" / "ca.pem")
    config["bakery"]["pki"]["ca_key"] = str(state / "ca" / "ca.key")
    config_path = work / "node.yaml"
    config_path.write_text(yaml.safe_dump(config))
    invoke = str(Path(sys.executable).parent / "invoke")
    out = work / "out"
    for args in (["ca"], ["render", "--az", "a", "--out", str(out)]):
        proc = subprocess.run(
            [invoke, "-f", str(config_path), *args],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"invoke {' '.join(args)}: {proc.stdout}{proc.stderr}"
    manifest = json.loads((out / "manifest.json").read_text())
    (node,) = manifest["nodes"]
    return {
        "node": node,
        "dir": out / node["name"],
        "user_data": out / node["name"] / "user-data",
        "config": config["bakery"],
    }


@pytest.fixture(scope="module")  # torn down before another module boots its own guest
def guest(built, rendered):
    """The built image booted under QEMU with the rendered node's user-data; etcd on the
    namespace's bridge. Boot figures go into the summary."""
    _require_root()
    workdir = BUILD_ROOT / "boot"
    if workdir.exists():
        shutil.rmtree(workdir)
    node = rendered["node"]
    assert node["private_address"] == harness.GUEST_ADDRESS, "node.yaml and the harness disagree"
    machine = harness.boot(built.qcow2, rendered["user_data"], workdir, node["name"])
    try:
        final = machine.wait_console("Cloud-init v.", timeout=420)
        final = machine.wait_console(" finished at ", timeout=420)
        machine.marks["cloud-init final"] = final
        FIGURES["boot to cloud-init final"] = f"{final:.1f} s"
        machine.agent.connect(timeout=120)
        leader = _wait_leader(machine, rendered, timeout=300)
        machine.marks["patroni leader"] = leader
        FIGURES["boot to Patroni leader"] = f"{leader:.1f} s"
        yield machine
    finally:
        with teardown_first():
            problems = machine.close()
            FIGURES["boot test total"] = f"{time.monotonic() - machine.started:.0f} s"
            assert not problems, f"left behind: {problems}"


def _wait_leader(machine: harness.Guest, rendered: dict, timeout: float) -> float:
    """Poll Patroni's REST API from inside the namespace until it reports itself leader."""
    ca = rendered["dir"] / "files" / "etc" / "patroni" / "tls" / "ca.pem"
    url = f"https://{harness.GUEST_ADDRESS}:8008/leader"
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        probe = machine.in_netns(
            [
                "curl",
                "-s",
                "-m",
                "5",
                "--cacert",
                str(ca),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                url,
            ],
            timeout=15,
        )
        last = probe.stdout.strip() or probe.stderr.strip()
        if last == "200":
            return time.monotonic() - machine.started
        time.sleep(1)
    raise TimeoutError(f"Patroni not leader within {timeout} s (last answer {last!r})")
