"""The node's program (scripts/reporter/files/bakery_node.py) against a stand-in REST API on
127.0.0.1, for the faults a real Patroni will not produce on demand: an API that goes away,
a lag that crosses the threshold, a failed job, a stop; and the handover's choice of
candidate. The real thing runs in the cluster tier (tests/cluster/test_reporter.py) and the
image tier.

The program runs as the image runs it, with the system's python3, here with `-I -S`: the
standard library only.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bakery import pki
from bakery.node.report import last_reports
from tests.helpers import PROJECT, serving

PROGRAM = PROJECT / "scripts/reporter/files/bakery_node.py"


class StandIn(ThreadingHTTPServer):
    """Answers GET /patroni, /cluster and /config from `answers`; records POSTs."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext):
        self.answers: dict[str, dict] = {}
        self.posts: list[tuple[str, dict, str, bool]] = []
        self.on_post = lambda path, body: (200, "Successfully switched over")
        super().__init__(("127.0.0.1", 0), Handler)
        self.socket = tls.wrap_socket(self.socket, server_side=True)


class Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        answer = self.server.answers.get(self.path)
        self._reply(200 if answer is not None else 404, json.dumps(answer or {}))

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        has_cert = self.connection.getpeercert() is not None
        self.server.posts.append((self.path, body, self.headers["Authorization"], has_cert))
        status, text = self.server.on_post(self.path, body)
        self._reply(status, text)

    def _reply(self, status: int, text: str):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def tls(tmp_path):
    pki.create_ca(tmp_path / "ca.pem", tmp_path / "ca.key", "test CA")
    ca = pki.load_ca(tmp_path / "ca.pem", tmp_path / "ca.key", "test")
    spec = pki.LeafSpec("n-0", ("n-0",), (ipaddress.IPv4Address("127.0.0.1"),), 1)
    pair = pki.issue(ca, spec)
    (tmp_path / "node.pem").write_text(pair.cert_pem)
    (tmp_path / "node.key").write_text(pair.key_pem)
    return tmp_path


@pytest.fixture
def api(tls):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls / "node.pem", tls / "node.key")
    context.load_verify_locations(tls / "ca.pem")
    context.verify_mode = ssl.CERT_OPTIONAL  # as Patroni's verify_client: optional
    with serving(StandIn(context)) as server:
        yield server


def environment(tls: Path, api: StandIn, **extra) -> dict[str, str]:
    status = tls / "status"
    status.mkdir(exist_ok=True)
    (tls / "manifest.json").write_text(json.dumps({"build_id": "img-1"}))
    return {
        "PATH": "/usr/bin:/bin",
        "BAKERY_NODE_NAME": "n-0",
        "BAKERY_RESTAPI_URL": f"https://127.0.0.1:{api.server_address[1]}",
        "BAKERY_CA_FILE": str(tls / "ca.pem"),
        "BAKERY_CERT_FILE": str(tls / "node.pem"),
        "BAKERY_KEY_FILE": str(tls / "node.key"),
        "BAKERY_MANIFEST": str(tls / "manifest.json"),
        "BAKERY_STATUS_DIR": str(status),
        "BAKERY_MAX_LAG": "1000",
        **extra,
    }


def replica(lag: int | None = 0) -> dict[str, dict]:
    return {
        "/patroni": {
            "role": "replica",
            "state": "running",
            "timeline": 3,
            "replication_state": "streaming",
            "sync_standby": True,
        },
        "/cluster": {"members": [{"name": "n-0", "role": "sync_standby", "lag": lag}]},
    }


class Reporter:
    """The program running `report`, its stdout collected line by line."""

    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", "-I", "-S", str(PROGRAM), "report"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read)
        self.reader.start()

    def _read(self):
        for text in self.proc.stdout:
            self.lines.append(text)

    def wait_for(self, predicate, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.reports() if predicate(r)]
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no such report in {self.lines}")

    def reports(self):
        from bakery.node.report import reports_in

        return list(reports_in("".join(self.lines)))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(20)
        self.reader.join(10)
        return code


def test_reports_changes_and_heartbeats_but_not_every_lag_wiggle(tls, api):
    api.answers = replica(lag=10)
    reporter = Reporter(environment(tls, api, BAKERY_REPORT_POLL="0.1"))
    try:
        first = reporter.wait_for(lambda r: r.seq == 1)
        assert (first.role, first.replication, first.lag, first.sync, first.timeline) == (
            "replica",
            "streaming",
            10,
            True,
            3,
        )
        assert first.build_id == "img-1" and first.error is None and first.failed_jobs == ()
        api.answers = replica(lag=20)  # under the threshold: not news
        time.sleep(1.5)
        assert len(reporter.reports()) == 1
        api.answers = replica(lag=5000)  # crosses it: news
        assert reporter.wait_for(lambda r: r.seq == 2).lag == 5000
        (tls / "status" / "backup.json").write_text('{"ok": false, "at": "x", "detail": "y"}')
        (tls / "status" / "stanza.json").write_text('{"ok": true}')
        (tls / "status" / "broken.json").write_text("{")
        assert reporter.wait_for(lambda r: r.seq == 3).failed_jobs == ("backup", "broken")
        api.shutdown()  # Patroni goes away
        api.server_close()
        gone = reporter.wait_for(lambda r: r.error is not None)
        assert gone.error == "api: connection refused" and gone.role is None
    finally:
        code = reporter.stop()
    assert code == 0, reporter.proc.stderr.read()
    assert reporter.reports()[-1].error == "reporter stopped"
    # One node's console: the last line is what a reader takes.
    assert last_reports("".join(reporter.lines))["n-0"].error == "reporter stopped"


def test_heartbeat_repeats_an_unchanged_state(tls, api):
    api.answers = replica()
    reporter = Reporter(
        environment(tls, api, BAKERY_REPORT_POLL="0.1", BAKERY_REPORT_HEARTBEAT="1")
    )
    try:
        reporter.wait_for(lambda r: r.seq == 3, timeout=30)
    finally:
        reporter.stop()
    same = {(r.role, r.lag, r.replication) for r in reporter.reports()[:-1]}
    assert same == {("replica", 0, "streaming")}


def test_nothing_secret_or_long_reaches_a_line(tls, api):
    api.answers = replica()
    env = environment(tls, api, PATRONI_RESTAPI_PASSWORD="s3cret-value-xyz")
    reporter = Reporter(env)
    try:
        reporter.wait_for(lambda r: r.seq == 1)
    finally:
        reporter.stop()
    text = "".join(reporter.lines)
    assert "s3cret" not in text and "127.0.0.1" not in text
    assert all(len(line) < 300 for line in reporter.lines)


def run_handover(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["/usr/bin/python3", "-I", "-S", str(PROGRAM), "handover"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def leader_with(members: list[dict], synchronous: bool) -> dict[str, dict]:
    return {
        "/patroni": {"role": "primary", "state": "running", "timeline": 3},
        "/cluster": {"members": [{"name": "n-0", "role": "leader", "state": "running"}, *members]},
        "/config": {"synchronous_mode": synchronous, "maximum_lag_on_failover": 1000},
    }


def test_handover_switches_over_to_the_sync_standby_with_certificate_and_credentials(tls, api):
    api.answers = leader_with(
        [
            {"name": "n-1", "role": "replica", "state": "streaming", "lag": 0},
            {"name": "n-2", "role": "sync_standby", "state": "streaming", "lag": 10},
        ],
        synchronous=True,
    )

    def switched(path, body):
        api.answers["/patroni"] = {"role": "replica", "state": "running"}
        return 200, "Successfully switched over to n-2"

    api.on_post = switched
    env = environment(tls, api, PATRONI_RESTAPI_USERNAME="patroni", PATRONI_RESTAPI_PASSWORD="pw")
    result = run_handover(env)
    assert result.returncode == 0, result.stderr
    assert len(api.posts) == 1
    path, body, auth, has_cert = api.posts[0]
    assert (path, body) == ("/switchover", {"leader": "n-0", "candidate": "n-2"})
    assert auth == "Basic cGF0cm9uaTpwdw==" and has_cert
    assert "stepped down; n-2 leads" in result.stdout
    assert "pw" not in result.stdout.replace("switched", "")


def test_handover_picks_the_least_lagging_healthy_replica_without_sync_mode(tls, api):
    api.answers = leader_with(
        [
            {"name": "n-1", "role": "replica", "state": "streaming", "lag": 500},
            {
                "name": "n-2",
                "role": "replica",
                "state": "streaming",
                "lag": 0,
                "tags": {"nofailover": True},
            },
            {"name": "n-3", "role": "replica", "state": "stopped", "lag": 0},
            {"name": "n-4", "role": "replica", "state": "streaming", "lag": 5000},
        ],
        synchronous=False,
    )

    def switched(path, body):
        api.answers["/patroni"] = {"role": "replica"}
        return 200, "ok"

    api.on_post = switched
    assert run_handover(environment(tls, api)).returncode == 0
    assert [body["candidate"] for _, body, _, _ in api.posts] == ["n-1"]


def test_handover_on_a_replica_or_without_candidates_or_api_does_nothing(tls, api):
    api.answers = replica()
    result = run_handover(environment(tls, api))
    assert (result.returncode, api.posts) == (0, [])
    assert "not the leader" in result.stdout

    api.answers = leader_with(
        [{"name": "n-1", "role": "replica", "state": "streaming", "lag": 0}], synchronous=True
    )
    started = time.monotonic()
    result = run_handover(environment(tls, api))
    assert (result.returncode, api.posts) == (0, [])
    assert "no replica can take over" in result.stdout
    assert time.monotonic() - started < 20

    env = environment(tls, api)
    api.shutdown()
    api.server_close()
    result = run_handover(env)
    assert result.returncode == 0 and "nothing to hand over" in result.stdout


def test_handover_is_bounded_when_the_switchover_does_not_happen(tls, api):
    api.answers = leader_with(
        [{"name": "n-1", "role": "replica", "state": "streaming", "lag": 0}], synchronous=False
    )
    api.on_post = lambda path, body: (503, "Switchover status unknown")
    started = time.monotonic()
    result = run_handover(environment(tls, api, BAKERY_HANDOVER_TIMEOUT="4"))
    assert result.returncode == 0
    assert "still the leader after 4 s" in result.stdout
    assert time.monotonic() - started < 15
