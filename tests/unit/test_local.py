"""The local target's logic: what a config must be for a local cluster, the plan it makes, the
keeper that owns a run, the run record and the command line. (The image tier launches one.)"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bakery.config import load_settings
from bakery.errors import BakeryError, ConfigError
from bakery.local import launch, owner, preflight, state, vms
from tests.helpers import PROJECT, invoke, merged, write_config
from tests.owned_netns import OWNED

EXAMPLE = PROJECT / "examples" / "local.yaml"


def example(tmp: Path, **changes) -> dict:
    """examples/local.yaml with its paths in `tmp` and a fake finished build there."""
    raw = yaml.safe_load(EXAMPLE.read_text())["bakery"]
    raw["state_dir"] = str(tmp / "state")
    raw["pki"] = {"ca_cert": str(tmp / "ca/ca.pem"), "ca_key": str(tmp / "ca/ca.key")}
    raw["overlay"]["ca_cert"] = str(tmp / "nebula/ca.crt")
    raw["overlay"]["ca_key"] = str(tmp / "nebula/ca.key")
    raw.setdefault("local", {})["image"] = str(fake_build(tmp / "build"))
    return merged(raw, **changes)


def fake_build(out: Path, major: int = 15) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "local-test.qcow2").write_bytes(b"QFI\xfb")
    result = {
        "definition": "local-test",
        "build_id": "local-test-20260101T000000Z-abc",
        "inputs_hash": "abc",
        "raw": str(out / "local-test.raw"),
        "qcow2": str(out / "local-test.qcow2"),
        "tree": None,
        "log": str(out / "build.log"),
        "manifest": {"components": {"postgresql": {"major": major}}},
        "timings": {},
        "sizes": {},
    }
    (out / "build.json").write_text(json.dumps(result))
    return out


def problems_of(raw: dict, labels=("a", "b")) -> list[str]:
    return preflight.config_problems(load_settings(raw), list(labels))


def test_the_shipped_example_fits_a_local_cluster(tmp_path):
    assert problems_of(example(tmp_path)) == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"cluster.dcs.etcd3.protocol": "https"},
            "bakery.cluster.dcs.etcd3.protocol: 'https': the local target's etcd serves 'http'",
        ),
        (
            {
                "cluster.dcs.members": [{"address": "100.102.0.1", "failure_domain": "external"}]
                * 1
                + [{"address": "100.102.0.2", "failure_domain": "external"}]
            },
            "bakery.cluster.dcs.members: 2 member(s); the local target runs one etcd member",
        ),
        (
            {"cluster.dcs.members": [{"address": "100.102.0.7", "failure_domain": "external"}]},
            "bakery.cluster.dcs.members.0.address: '100.102.0.7': etcd runs in the external "
            "place, at 100.102.0.1 or 198.51.100.1",
        ),
        (
            {
                "overlay.lighthouses": [
                    {"overlay_address": "100.102.0.1", "public_address": "192.0.2.1:4242"}
                ]
            },
            "bakery.overlay.lighthouses.0.public_address: '192.0.2.1:4242': the local "
            "lighthouse listens on the external place's underlay address and "
            "overlay.listen_port: use '198.51.100.1:4242'",
        ),
        (
            {"azs.b.subnet": "10.201.0.0/16", "azs.b.addresses": ["10.201.1.10"]},
            "bakery.azs.b.subnet: 10.201.0.0/16 overlaps bakery.azs.a.subnet 10.201.0.0/24",
        ),
        (
            {"azs.a.addresses": ["10.201.0.1"]},
            "bakery.azs.a.addresses: 10.201.0.1 is the segment's router",
        ),
        (
            {"local.underlay": "100.102.0.0/24"},
            "bakery.local.underlay: 100.102.0.0/24 overlaps overlay.cidr 100.102.0.0/22",
        ),
        (
            {"local.underlay": "198.51.100.0/29"},
            "bakery.local.underlay: 198.51.100.0/29 is too small",
        ),
    ],
)
def test_what_a_local_cluster_cannot_run_is_named_by_its_field(tmp_path, changes, expected):
    found = problems_of(example(tmp_path, **changes))
    assert any(p.startswith(expected) for p in found), found


def test_consul_and_a_missing_subnet_are_refused(tmp_path):
    raw = example(tmp_path)
    raw["cluster"]["dcs"] = {
        "type": "consul",
        "members": [{"address": "100.102.0.1", "failure_domain": "external"}],
        "consul": {"datacenter": "dc1"},
    }
    del raw["azs"]["a"]["subnet"]
    found = problems_of(raw)
    assert any(p.startswith("bakery.cluster.dcs.type: 'consul'") for p in found), found
    assert any(p.startswith("bakery.azs.a.subnet: required for the local target") for p in found)


def test_several_azs_need_the_overlay(tmp_path):
    raw = example(tmp_path)
    raw["overlay"] = {"type": "none"}
    raw["cluster"]["dcs"]["members"] = [{"address": "198.51.100.1", "failure_domain": "external"}]
    raw["cluster"]["postgresql"]["allowed_networks"] = ["10.201.0.0/24", "10.202.0.0/24"]
    found = problems_of(raw)
    assert any(p.startswith("bakery.overlay.type: 'none', but the AZ segments") for p in found)
    assert problems_of(raw, ["a"]) == []


def test_the_image_must_carry_the_configured_postgresql(tmp_path):
    raw = example(tmp_path)
    fake_build(Path(raw["local"]["image"]), major=14)
    with pytest.raises(ConfigError) as caught:
        preflight.local_image(load_settings(raw))
    assert "bakery.cluster.postgresql.major: 15, but the image" in str(caught.value)
    assert "carries PostgreSQL 14" in str(caught.value)
    with pytest.raises(BakeryError, match="no finished local build"):
        preflight.local_image(load_settings(merged(raw, **{"local.image": str(tmp_path / "no")})))


def test_the_plan_places_every_node_on_its_segment(tmp_path):
    raw = example(tmp_path, **{"azs.b.nodes": 2, "azs.b.addresses": ["10.202.0.10"]})
    settings = load_settings(raw)
    network = launch._network(settings, ["a", "b"])
    assert [(s.az, str(s.gateway), str(s.uplink), s.role) for s in network.segments] == [
        ("a", "10.201.0.1", "198.51.100.11", "az-a"),
        ("b", "10.202.0.1", "198.51.100.12", "az-b"),
    ]
    assert str(network.external) == "198.51.100.1"
    specs, addresses = launch._machines(settings, ["a", "b"], network)
    assert [(s.node, str(s.address), s.tap, str(s.gateway)) for s in specs] == [
        ("local-pg-0", "10.201.0.10/24", "tap0", "10.201.0.1"),
        ("local-pg-1", "10.202.0.10/24", "tap0", "10.202.0.1"),
        ("local-pg-2", "10.202.0.2/24", "tap1", "10.202.0.1"),
    ]
    assert len({s.mac for s in specs}) == 3
    # A routed AZ keeps its uplink address whichever AZs are launched.
    (only_b,) = launch._network(settings, ["b"]).segments
    assert str(only_b.uplink) == "198.51.100.12"


def test_a_node_gets_its_address_and_route_from_the_network_config(tmp_path):
    settings = load_settings(example(tmp_path))
    specs, _ = launch._machines(settings, ["a"], launch._network(settings, ["a"]))
    config = yaml.safe_load(vms.network_config(specs[0]))
    assert config == {
        "version": 2,
        "ethernets": {
            "ens3": {
                "addresses": ["10.201.0.10/24"],
                "routes": [{"to": "0.0.0.0/0", "via": "10.201.0.1"}],
                "dhcp4": False,
                "dhcp6": False,
            }
        },
    }


def test_accelerator_choice(monkeypatch):
    monkeypatch.setattr(vms, "kvm_usable", lambda: (False, "the CPU shows no vmx/svm"))
    assert vms.accel_choice("auto")[0] == "tcg"
    assert vms.accel_choice("tcg")[0] == "tcg"
    with pytest.raises(BakeryError, match="bakery.local.accel: 'kvm', but the CPU shows no"):
        vms.accel_choice("kvm")
    monkeypatch.setattr(vms, "kvm_usable", lambda: (True, "/dev/kvm"))
    assert vms.accel_choice("auto")[0] == "kvm"
    assert vms.accel_choice("tcg")[0] == "tcg"
    spec = vms.VmSpec("n", "a", "az-a", "tap0", "10.0.0.2/24", "10.0.0.1", 1024, 1)
    argv = vms.qemu_argv(spec, vms.VmFiles(Path("/r/n")), "tcg")
    assert argv[argv.index("-accel") + 1].startswith("tcg")
    assert argv[argv.index("-cpu") + 1] == "max"
    argv = vms.qemu_argv(spec, vms.VmFiles(Path("/r/n")), "kvm")
    assert argv[argv.index("-accel") + 1] == "kvm"


def test_run_names_carry_their_keeper_and_never_match_the_test_harnesses():
    name = owner.run_name(4242, "a1b2c3")
    assert owner.RUN_NAME.fullmatch(name)
    match = owner.OWNED_NETNS.fullmatch(f"{name}-az-b")
    assert match and match["run"] == name and match["role"] == "az-b"
    for test_name in ("bkimg-4242-a1b2c3", "bkt-4242-a1b2c3-dcs"):
        assert owner.OWNED_NETNS.fullmatch(test_name) is None
    assert OWNED.fullmatch(f"{name}-ext") is None
    # A PID that runs something else is no keeper: its run counts as gone.
    assert not owner.keeper_alive(owner.run_name(os.getpid(), "a1b2c3"))


def _keeper(tmp_path):
    keeper = owner.Keeper(tmp_path / "keeper.log")
    deadline = time.monotonic() + 30
    while not owner.keeper_alive(keeper.run):
        assert time.monotonic() < deadline, (tmp_path / "keeper.log").read_text()
        time.sleep(0.05)
    return keeper


def test_the_keeper_tears_down_when_the_launch_goes_without_handing_over(tmp_path):
    keeper = _keeper(tmp_path)
    assert keeper.proc.stdin is not None
    keeper.proc.stdin.close()  # what a launch killed with SIGKILL leaves: the pipe closes
    assert keeper.proc.wait(timeout=30) == 0
    assert not owner.keeper_alive(keeper.run)
    log = (tmp_path / "keeper.log").read_text()
    assert "without handing the cluster over" in log and "torn down" in log


def test_an_adopted_cluster_lives_until_its_keeper_is_stopped(tmp_path):
    keeper = _keeper(tmp_path)
    keeper.adopt()
    time.sleep(0.5)
    assert keeper.proc.poll() is None, "an adopted keeper must stay"
    assert owner.stop_keeper(keeper.run, timeout=30)
    assert keeper.proc.wait(timeout=5) == 0
    assert not owner.stop_keeper(keeper.run), "a second stop finds nothing"
    assert "SIGTERM: tearing down" in (tmp_path / "keeper.log").read_text()


def test_the_run_record_is_private_and_reads_back(tmp_path):
    record = _record("bakery-1-abcdef", tmp_path)
    record.nodes.append(state.NodeRecord("n", "a", "bakery-1-abcdef-az-a", "10.0.0.2", None, "/d"))
    record.save(tmp_path)
    path = state.record_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert state.load(tmp_path) == record
    path.write_text("{}")
    with pytest.raises(BakeryError, match="unreadable local run record"):
        state.load(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="the local target's checks need root")
def test_dry_run_prints_the_plan_and_creates_nothing(tmp_path):
    config = write_config(tmp_path / "local.yaml", example(tmp_path))
    assert invoke("-f", str(config), "ca").returncode == 0
    namespaces = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    result = invoke("-f", str(config), "launch", "--target", "local", "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "local cluster local: 2 node(s) in AZ(s) a, b" in out
    assert "namespace <run>-az-a: AZ a, segment 10.201.0.0/24 behind router 10.201.0.1" in out
    assert "VM local-pg-0: 10.201.0.10, overlay 100.102.0.10, tap0" in out
    assert "etcd http://100.102.0.1:2379, Nebula lighthouse 100.102.0.1" in out
    assert out.rstrip().endswith("dry run: nothing was created")
    # Like `invoke render`, it makes the secrets and certificates the bundles need; no more.
    assert not (tmp_path / "state/local-run").exists()
    assert not (tmp_path / "state/overlay-addresses.json").exists()
    now = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    assert not [n for n in set(now) - set(namespaces) if n.startswith("bakery-")]


def test_bad_targets_and_options_are_refused(tmp_path):
    config = write_config(tmp_path / "local.yaml", example(tmp_path))
    result = invoke("-f", str(config), "launch", "--target", "moon")
    assert result.returncode == 1
    assert "bakery: launch --target 'moon': allowed are 'cloud' and 'local'" in result.stderr
    result = invoke("-f", str(config), "launch", "--dry-run")
    assert "launch --dry-run: only with --target local" in result.stderr
    # One task per operation: the other target's options are refused, not ignored.
    for args, error in (
        (
            ["launch", "--target", "local", "--no-wait"],
            "launch --no-wait: only with --target cloud",
        ),
        (["status", "--target", "local", "--json", "--az", "a"], "status --az, --json: only"),
        (["destroy", "--target", "local", "--az", "a"], "destroy --az: only with --target cloud"),
        (["status", "--target", "moon"], "status --target 'moon': allowed are"),
    ):
        result = invoke("-f", str(config), *args)
        assert result.returncode == 1 and error in result.stderr, (args, result.stderr)
    result = invoke("-f", str(config), "status", "--target", "local")
    assert result.returncode == 2
    assert "no local cluster of this config" in result.stdout
    result = invoke("-f", str(config), "destroy", "--target", "local")
    assert result.returncode == 0, result.stderr
    assert "nothing to destroy" in result.stdout


def test_the_keeper_refuses_to_start_without_its_token():
    res = subprocess.run(
        [sys.executable, "-m", owner.MODULE], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and "usage" in res.stderr


def _record(run: str, state_dir: Path) -> state.RunRecord:
    record = state.RunRecord(
        run=run,
        status="running",
        created="2026-01-01T00:00:00Z",
        scope="local",
        image="/i.qcow2",
        build_id="b",
        accel="tcg",
        external_netns=f"{run}-ext",
        external_address="198.51.100.1",
        etcd_url="http://100.102.0.1:2379",
        lighthouse="100.102.0.1",
        namespaces=[f"{run}-ext"],
    )
    record.save(state_dir)
    return record


def test_a_running_cluster_of_the_config_is_refused_and_a_dead_one_swept(tmp_path):
    settings = load_settings(example(tmp_path))
    keeper = _keeper(tmp_path)
    try:
        _record(keeper.run, settings.state_dir)
        with pytest.raises(BakeryError, match="a local cluster of this config runs"):
            launch.preflight(settings, ["a", "b"])
        assert not launch.sweep_dead_record(settings, print), "a live keeper's run stays"
    finally:
        owner.stop_keeper(keeper.run, timeout=30)
    lines: list[str] = []
    assert launch.sweep_dead_record(settings, lines.append)
    assert lines == [f"swept the local cluster {keeper.run} of this config: its keeper is gone"]
    assert not state.run_dir(settings.state_dir).exists()
