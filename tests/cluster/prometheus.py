"""A real Prometheus in the DCS namespace (inside the monitoring networks, on the overlay),
with deploy/prometheus as shipped and the target lists of the run's `invoke render`."""

from __future__ import annotations

import json
import shutil
import signal
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netns import entered
from processes import Started

REPO = Path(__file__).resolve().parents[2]
PORT = 9090


@dataclass
class Prometheus:
    netns: str
    proc: Started

    @classmethod
    def start(cls, cluster) -> Prometheus:
        """deploy/prometheus laid out as its README says: the render's prometheus/ as cluster/."""
        root = cluster.base / "prometheus"
        shutil.copytree(REPO / "deploy" / "prometheus", root)
        shutil.copytree(cluster.base / "render" / "prometheus", root / "cluster")
        argv = [
            *("ip", "netns", "exec", cluster.infra.host.netns, "prometheus"),
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{PORT}",
        ]
        proc = cluster.sup.start("prometheus", argv)
        prometheus = cls(cluster.infra.host.netns, proc)
        deadline = time.monotonic() + 60
        while not prometheus.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus not ready after 60 s; see {proc.log}")
            time.sleep(0.5)
        return prometheus

    def stop(self, sup) -> None:
        sup.stop(self.proc, signal.SIGTERM, timeout=20)

    def _get(self, path: str) -> Any:
        with entered(self.netns):
            resp = urllib.request.urlopen(  # noqa: S310 - fixed http URL in our namespace
                f"http://127.0.0.1:{PORT}{path}", timeout=5
            )
        return resp.read()

    def ready(self) -> bool:
        try:
            return b"Ready" in self._get("/-/ready")
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr`: [{"metric": labels, "value": [time, "value"]}, ...]."""
        body = json.loads(self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
        assert body["status"] == "success", body
        return body["data"]["result"]

    def targets(self) -> list[dict[str, Any]]:
        return json.loads(self._get("/api/v1/targets?state=active"))["data"]["activeTargets"]
