"""Render tier: shared renders of several configuration variants, and a size report.
Namespaces of earlier runs killed before their teardown are swept first (tests/owned_netns.py).
"""

import pytest

from tests.helpers import base_config, invoke, merged, write_config
from tests.owned_netns import report_sweep

# Variants that together cover every switch of the bundle.
VARIANTS = {
    "consul-nebula": lambda tmp: base_config(tmp),
    "consul-no-auto-encrypt": lambda tmp: merged(
        base_config(tmp, overlay=False), **{"cluster.dcs.consul.auto_encrypt": False}
    ),
    "etcd3-plain": lambda tmp: merged(
        base_config(tmp, dcs="etcd3", overlay=False),
        # A posix repository on a mount every node shares: archiving across AZs is allowed.
        **{"cluster.pgbackrest": {"repo": {"type": "posix", "shared": True}, "archive": True}},
    ),
    "etcd3-https-nebula-s3": lambda tmp: merged(
        base_config(tmp, dcs="etcd3"),
        **{
            "cluster.dcs.etcd3": {"protocol": "https", "port": 2379},
            "cluster.patroni": {
                "ttl": 20,
                "loop_wait": 1,
                "retry_timeout": 5,
                "synchronous_mode": True,
            },
            "cluster.pgbackrest": {
                "repo": {
                    "type": "s3",
                    "bucket": "backups",
                    "endpoint": "s3.example.org",
                    "region": "de-west",
                    "key": {"env": "TEST_S3_KEY"},
                    "key_secret": {"env": "TEST_S3_SECRET"},
                },
                "encryption": True,
                "retention_diff": 6,
            },
            # A new cluster restored from another one's stanza to a point in time.
            "cluster.restore": {
                "from_scope": "old-cluster",
                "target_time": "2026-01-01 00:00:00+00:00",
            },
        },
    ),
}
S3_ENV = {"TEST_S3_KEY": "AKIA-test", "TEST_S3_SECRET": "s3-secret-value"}
_sizes: list[tuple[str, str, int]] = []


def pytest_sessionstart(session):
    report_sweep("render")


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def rendered(request, tmp_path_factory):
    """(variant name, config dict, output directory) of a real `invoke ca render`."""
    tmp = tmp_path_factory.mktemp(request.param)
    config = VARIANTS[request.param](tmp)
    path = write_config(tmp / "config.yaml", config)
    out = tmp / "out"
    result = invoke("-f", str(path), "ca", "render", "--out", str(out), env=S3_ENV)
    assert result.returncode == 0, result.stderr
    return request.param, config, out


def record_size(variant: str, node: str, size: int) -> None:
    _sizes.append((variant, node, size))


def pytest_terminal_summary(terminalreporter):
    if _sizes:
        terminalreporter.section("user-data size (base64; Nova's limit is 65535 bytes)")
        for variant, node, size in sorted(set(_sizes)):
            terminalreporter.write_line(f"{variant:28} {node:22} {size:6d} bytes")
