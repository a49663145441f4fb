"""`invoke launch --target local --az a --az b` on the image this tier built: two VMs of the
real image, each configured only by its rendered user-data, one per AZ segment, forming a
cluster over Nebula with etcd in the external place; then `invoke destroy --target local`.

The config is examples/local.yaml as shipped, with its state, CAs and image pointed into
build/image-test/local-launch/ (a fixed place: a session killed with SIGKILL leaves a run
that the next session's first `destroy` removes). The test reaches the nodes from the
external place (the tool's `ext` namespace) over the overlay, and looks inside through each
VM's guest agent socket.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import imagetest_harness as harness
import pytest
import yaml

from bakery.image.definition import PROJECT_ROOT
from bakery.local import netns, owner
from tests.sigterm import teardown_first

pytestmark = pytest.mark.slow

WORK = harness.BUILD_ROOT / "local-launch"
LAUNCH_TIMEOUT = 2400  # seconds: the tool's own wait (lifecycle.launch_timeout) ends sooner
PSQL_VERSIONS = ("17", "16", "15")  # libpq 15+ matches IP addresses in certificates


def _invoke(config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    invoke = str(Path(sys.executable).parent / "invoke")
    return subprocess.run(
        [invoke, "-f", str(config), *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _config(work: Path = WORK) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "examples" / "local.yaml").read_text())
    settings = raw["bakery"]
    state = work / "state"
    settings["state_dir"] = str(state)
    settings["pki"] = {"ca_cert": str(state / "ca/ca.pem"), "ca_key": str(state / "ca/ca.key")}
    settings["overlay"]["ca_cert"] = str(state / "nebula/ca.crt")
    settings["overlay"]["ca_key"] = str(state / "nebula/ca.key")
    settings["local"]["image"] = str(harness.BUILD_ROOT / "local-test")
    work.mkdir(parents=True, exist_ok=True)
    path = work / "local.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Cluster:
    def __init__(self, config: Path, launch_output: str):
        self.config = config
        self.output = launch_output
        self.state = WORK / "state"
        self.record = json.loads((self.state / "local-run" / "run.json").read_text())
        self.nodes = {n["name"]: n for n in self.record["nodes"]}

    @property
    def ext(self) -> str:
        return self.record["external_netns"]

    def agent(self, node: str) -> harness.GuestAgent:
        agent = harness.GuestAgent(Path(self.nodes[node]["dir"]) / "qga.sock")
        agent.connect(timeout=120)
        return agent

    def from_ext(self, argv: list[str], timeout: float = 60, **env: str):
        """A command in the external place (where etcd and the lighthouse run)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ext, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
        )

    def rest(self, node: str, path: str) -> dict:
        ca = str(self.state / "ca" / "ca.pem")
        url = f"https://{self.nodes[node]['overlay_address']}:8008{path}"
        probe = self.from_ext(["curl", "-s", "-m", "10", "--cacert", ca, url])
        assert probe.returncode == 0, f"{url}: {probe.stderr}"
        return json.loads(probe.stdout)

    def sql(self, node: str, statement: str, check: bool = True) -> str:
        """psql as the superuser over the overlay, TLS verified against the cluster CA."""
        psql = next(
            p for v in PSQL_VERSIONS if (p := Path(f"/usr/lib/postgresql/{v}/bin/psql")).exists()
        )
        conninfo = (
            f"host={self.nodes[node]['overlay_address']} port=5432 dbname=postgres "
            f"user=postgres sslmode=verify-full sslrootcert={self.state / 'ca' / 'ca.pem'} "
            "connect_timeout=10"
        )
        password = (self.state / "secrets" / "superuser").read_text().strip()
        done = self.from_ext(
            [str(psql), conninfo, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", statement],
            PGPASSWORD=password,
        )
        assert done.returncode == 0 or not check, f"{node}: {statement}: {done.stderr.strip()}"
        return done.stdout.strip()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_launch_stopped_while_its_vms_run_leaves_nothing_running(built, signum):
    """SIGTERM: the launch cleans up itself and exits 143, keeping the logs for a look.
    SIGKILL: it cannot, but its keeper sees the pipe close and tears the run down; the next
    destroy removes the files."""
    config = _config(WORK / "interrupted")
    state = WORK / "interrupted" / "state"
    assert _invoke(config, "destroy", "--target", "local").returncode == 0
    assert _invoke(config, "ca").returncode == 0
    log = WORK / "interrupted" / "launch.log"
    invoke = str(Path(sys.executable).parent / "invoke")
    with open(log, "w") as out:
        launch = subprocess.Popen(
            [invoke, "-f", str(config), "launch", "--target", "local"],
            cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while log.read_text().count("started (QEMU PID") < 2:
            assert launch.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        run = json.loads((state / "local-run" / "run.json").read_text())["run"]
        assert len(owner.namespaces_of(run)) == 3
        launch.send_signal(signum)
        code = launch.wait(timeout=180)
    finally:
        with teardown_first():
            if launch.poll() is None:
                launch.kill()
                launch.wait()
    deadline = time.monotonic() + 120
    while owner.namespaces_of(run) or owner.keeper_alive(run):
        assert time.monotonic() < deadline, f"still there: {owner.namespaces_of(run)}"
        time.sleep(0.5)
    assert not _processes_naming(str((state / "local-run").resolve()), run)
    disks = list((state / "local-run").glob("*/disk.qcow2"))
    if signum == signal.SIGTERM:
        assert code == 143, log.read_text()[-2000:]
        assert "bakery: terminated" in log.read_text()
        assert not disks and not (state / "local-run" / "run.json").exists()
        assert list((state / "local-run").glob("*/console.log")), "the consoles stay for a look"
    else:
        assert code == -signal.SIGKILL
        assert len(disks) == 2, "a killed launch cannot remove its files ..."
    destroyed = _invoke(config, "destroy", "--target", "local")  # ... the next destroy does
    assert destroyed.returncode == 0, destroyed.stderr
    assert not (state / "local-run").exists()


@pytest.fixture(scope="module")
def local_cluster(built):
    """The two-AZ local cluster, launched once for the module; destroyed at the end whatever
    happens (the last test destroys it itself and checks what is left)."""
    if os.geteuid() != 0:
        pytest.fail("the local launch needs root (namespaces, taps, NAT)")
    config = _config()
    # What a session killed with SIGKILL left (its keeper may live on) goes first.
    leftover = _invoke(config, "destroy", "--target", "local")
    assert leftover.returncode == 0, leftover.stderr
    made = _invoke(config, "ca")
    assert made.returncode == 0, made.stderr
    started = time.monotonic()
    try:
        launched = _invoke(
            config, "launch", "--target", "local", "--az", "a", "--az", "b",
            timeout=LAUNCH_TIMEOUT,
        )  # fmt: skip
        seconds = time.monotonic() - started
        (WORK / "launch.log").write_text(launched.stdout + launched.stderr)
        assert launched.returncode == 0, (
            f"launch failed after {seconds:.0f} s: {launched.stderr[-3000:]}\n"
            f"{launched.stdout[-3000:]}"
        )
        harness.FIGURES["local launch: healthy cluster after"] = f"{seconds:.0f} s"
        yield Cluster(config, launched.stdout)
    finally:
        with teardown_first():
            _invoke(config, "destroy", "--target", "local")


def test_one_leader_and_one_streaming_replica_across_the_segments(local_cluster):
    cluster = local_cluster
    assert "tear it down: " in cluster.output and "destroy --target local" in cluster.output
    status = _invoke(cluster.config, "status", "--target", "local")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"^healthy: leader local-pg-[01]$", status.stdout, re.M), status.stdout
    members = {m["name"]: m for m in cluster.rest("local-pg-0", "/cluster")["members"]}
    assert set(members) == {"local-pg-0", "local-pg-1"}
    roles = sorted((m["role"], m["state"]) for m in members.values())
    assert roles == [("leader", "running"), ("replica", "streaming")], members
    leader = next(n for n, m in members.items() if m["role"] == "leader")
    replica = next(n for n in members if n != leader)
    assert {cluster.nodes[leader]["az"], cluster.nodes[replica]["az"]} == {"a", "b"}
    # The replica streams from the leader over the overlay ...
    assert members[replica]["host"] == cluster.nodes[replica]["overlay_address"]
    streaming = cluster.sql(leader, "select client_addr, state from pg_stat_replication")
    assert streaming == f"{cluster.nodes[replica]['overlay_address']}|streaming"
    # ... because the segments have no path to each other: the leader's private address is
    # unreachable from the replica's VM (its router answers "network unreachable"; ssh listens
    # on every address, so a path would connect), while PostgreSQL answers on the overlay.
    agent = cluster.agent(replica)
    private = cluster.nodes[leader]["address"]
    overlay = cluster.nodes[leader]["overlay_address"]
    unreachable = (f"OSError {errno.ENETUNREACH}", f"OSError {errno.EHOSTUNREACH}")
    assert _connect_from(agent, private, 22) in unreachable, f"{replica} reached {private}"
    assert _connect_from(agent, overlay, 5432) == "connected", f"{replica} cannot reach {overlay}"
    agent.close()


def test_a_row_written_on_the_leader_is_read_on_the_replica(local_cluster):
    cluster = local_cluster
    members = cluster.rest("local-pg-1", "/cluster")["members"]
    leader = next(m["name"] for m in members if m["role"] == "leader")
    replica = next(m["name"] for m in members if m["role"] != "leader")
    token = secrets.token_hex(8)
    cluster.sql(leader, "create table if not exists local_launch (token text)")
    cluster.sql(leader, f"insert into local_launch values ('{token}')")  # noqa: S608 - hex
    deadline = time.monotonic() + 120
    query = f"select count(*) from local_launch where token = '{token}'"  # noqa: S608 - hex
    while cluster.sql(replica, query, check=False) != "1":
        assert time.monotonic() < deadline, f"the row never reached {replica}"
        time.sleep(1)
    assert cluster.sql(replica, "select pg_is_in_recovery()") == "t"


def test_each_node_finished_cloud_init_with_no_package_work(local_cluster):
    for node in local_cluster.nodes:
        agent = local_cluster.agent(node)
        status = agent.sh("cloud-init status --long --wait || true", timeout=120)
        assert re.search(r"^status: done$", status, re.M), f"{node}: {status}"
        result = json.loads(agent.sh("cat /run/cloud-init/result.json"))
        assert result["v1"]["errors"] == [], f"{node}: {result}"
        log = agent.sh("cat /var/log/cloud-init.log")
        ran = re.findall(r"Running command \[([^\]]*)\]", log)
        # Asking dpkg for the architecture is no package work; installing anything would be.
        package_work = [
            c
            for c in ran
            if re.match(r"'(apt|apt-get|aptitude|eatmydata)'", c)
            or (c.startswith("'dpkg'") and "'--print-architecture'" not in c)
        ]
        assert ran and package_work == [], f"{node} ran package commands: {package_work}"
        agent.close()


def test_destroy_leaves_no_process_namespace_mount_tap_or_disk(local_cluster):
    cluster = local_cluster
    run = cluster.record["run"]
    run_dir = cluster.state / "local-run"
    disks = [Path(n["dir"]) / "disk.qcow2" for n in cluster.nodes.values()]
    assert all(d.exists() for d in disks)
    destroyed = _invoke(cluster.config, "destroy", "--target", "local")
    assert destroyed.returncode == 0, destroyed.stderr
    assert f"destroyed {run}" in destroyed.stdout
    assert owner.namespaces_of(run) == [] and not any(n.startswith(run) for n in netns.names())
    assert not owner.keeper_alive(run)
    mounts = Path("/proc/self/mountinfo").read_text()
    assert run not in mounts and str(run_dir) not in mounts
    # Every process of the run (QEMU, etcd, Nebula, the keeper) named its run directory, its
    # namespace or its token on its command line; reaping by init may take a moment.
    token = run.rsplit("-", 1)[1]
    deadline = time.monotonic() + 30
    while left := _processes_naming(str(run_dir.resolve()), run, f"--token {token}"):
        assert time.monotonic() < deadline, f"processes left: {left}"
        time.sleep(0.5)
    host_links = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("tap0", "seg0", "under0", "up0", "az0", "az1"):
        assert f": {name}:" not in host_links and f": {name}@" not in host_links
    assert not any(d.exists() for d in disks) and not run_dir.exists()


def _connect_from(agent: harness.GuestAgent, address: str, port: int) -> str:
    """A TCP connect from inside a VM: 'connected' or 'OSError <errno>'."""
    probe = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('{address}', {port}), timeout=10).close()\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print('OSError', e.errno)\n"
    )
    return agent.exec(["python3", "-c", probe], timeout=60)[1].strip()


def _processes_naming(*needles: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(n in argv for n in needles):
            found.append(f"{entry} {argv[:160]}")
    return found
