"""Cluster tier fixtures: one real two-node cluster per test module, torn down by PID.

Teardown runs whatever happened in the tests (also on Ctrl-C and SIGTERM: tests/sigterm.py),
then checks that no process, namespace, link or mount of the run is left; a leak fails the tier.
Namespaces of earlier runs killed before their teardown are swept first (tests/owned_netns.py).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import BASE, FACTS, RUNS, Cluster  # noqa: E402
from s3 import S3Server  # noqa: E402

from tests.owned_netns import owned_name, report_sweep  # noqa: E402
from tests.sigterm import teardown_first  # noqa: E402

REQUIRED = [
    "/opt/patroni/bin/patroni",
    "/usr/lib/postgresql/14/bin/postgres",
    "/usr/bin/etcd",
    "/usr/bin/nebula",
    "/usr/bin/nebula-cert",
    "/usr/bin/pgbackrest",
]
_started = time.monotonic()
_leaks: list[str] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() != 0:
        pytest.exit("the cluster tier needs root (network namespaces, mounts)", returncode=2)
    missing = [p for p in REQUIRED if not os.path.exists(p)]
    if missing:
        pytest.exit(f"missing {missing}: run tests/cluster/setup first", returncode=2)
    report_sweep("cluster")


def make_cluster(
    request: pytest.FixtureRequest,
    overrides: dict | None = None,
    s3: S3Server | None = None,
    start: bool = True,
    label: str | None = None,
) -> Iterator[Cluster]:
    cluster = Cluster(dict(overrides or {}), s3=s3)
    failed_before = request.session.testsfailed
    failed = False
    try:
        cluster.build()
        if start:
            cluster.start()
            what = label or overrides or "shipped defaults"
            FACTS.append(
                f"cluster {cluster.run_id} ({what}): leader after "
                f"{cluster.times['leader']:.1f} s, replica streaming after "
                f"{cluster.times['streaming']:.1f} s"
            )
        yield cluster
    except BaseException:
        failed = True  # a test using the cluster directly threw its failure in (restore)
        raise
    finally:
        with teardown_first():
            problems = cluster.teardown()
            _leaks.extend(problems)
            if problems or failed or request.session.testsfailed != failed_before:
                print(f"\ncluster tier: files of run {cluster.run_id} kept in {cluster.base}")
            else:
                shutil.rmtree(cluster.base, ignore_errors=True)
            assert not problems, f"the harness left things behind: {problems}"


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The cluster with the shipped Patroni defaults, shared by the modules that use it: each
    test starts by waiting until it is healthy again."""
    yield from make_cluster(request)


@pytest.fixture(scope="session")
def s3(request: pytest.FixtureRequest) -> Iterator[S3Server]:
    """The session's S3 server (SeaweedFS over TLS, s3.py), started by the first test that
    needs it; it serves one cluster run at a time."""
    server = S3Server(BASE / owned_name("t").replace("bkt-", "s3-"))
    failed_before = request.session.testsfailed
    try:
        server.start()
        yield server
    finally:
        with teardown_first():
            problems = server.stop()
            _leaks.extend(problems)
            if problems or request.session.testsfailed != failed_before:
                print(f"\ncluster tier: files of the S3 server kept in {server.base}")
            else:
                shutil.rmtree(server.base, ignore_errors=True)
            assert not problems, f"the S3 server left things behind: {problems}"


@pytest.fixture(scope="module")
def sync_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A cluster of its own in synchronous mode (scenario 6)."""
    yield from make_cluster(request, {"cluster.patroni.synchronous_mode": True})


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    tr = terminalreporter
    tr.section("cluster tier")
    for fact in FACTS:
        tr.write_line(fact)
    for leak in _leaks:
        tr.write_line(f"LEFT BEHIND: {leak}", red=True)
    tr.write_line(f"cluster tier wall time: {time.monotonic() - _started:.1f} s")


@pytest.hookimpl(trylast=True)  # after pytest's own teardown of what an interrupt left set up
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Once more at the very end: nothing of any run of this session may remain.
    for run in RUNS:
        for leak in run.leaks():
            if leak not in _leaks:
                _leaks.append(leak)
    if _leaks and session.exitstatus == 0:
        session.exitstatus = 1
