"""Run the tools that will read the rendered files: Patroni's validator, cloud-init's schema."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import tempfile
from pathlib import Path

from bakery.checks import parse_envfile
from tests.owned_netns import owned_name, remove

PATRONI = Path(os.environ.get("BAKERY_TEST_PATRONI", "/opt/patroni/bin/patroni"))


@contextlib.contextmanager
def namespace(addresses: list[str]):
    """A network namespace whose loopback carries the node's and the DCS's addresses, so the
    validator can bind where the node will listen and reach a stand-in DCS port."""
    name = owned_name("r")
    try:
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        for address in addresses:
            if not ipaddress.ip_address(address).is_loopback:
                subprocess.run(
                    ["ip", "-n", name, "addr", "add", f"{address}/32", "dev", "lo"], check=True
                )
        yield name
    finally:
        left = remove(name)
    assert not left, f"namespace {name} not removed: {left}"  # never hides the block's own error


def validate_patroni(config: Path, env_file: Path, listen_on: list[tuple[str, int]]) -> str:
    """`patroni --validate-config` inside a namespace with TCP listeners standing in for the DCS.
    Returns the validator's output; raises AssertionError when it refuses the file."""
    node_address = _yaml_node_address(config)
    addresses = [node_address, *(host for host, _ in listen_on)]
    env = {"PATH": "/usr/bin:/bin", **parse_envfile(env_file.read_text())}
    with namespace(addresses) as ns:
        listener = subprocess.Popen(
            ["ip", "netns", "exec", ns, "python3", "-c", _LISTENER, repr(listen_on)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert listener.stdout.readline().strip() == "listening"
            result = subprocess.run(
                ["ip", "netns", "exec", ns, str(PATRONI), "--validate-config", str(config)],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                check=False,
            )
        finally:
            listener.kill()
            listener.wait()
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"patroni --validate-config refused {config}:\n{output}"
    return output


_LISTENER = """
import socket, sys, time, ast
socks = []
for host, port in ast.literal_eval(sys.argv[1]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(); socks.append(s)
print("listening", flush=True)
time.sleep(120)
"""


def _yaml_node_address(config: Path) -> str:
    import yaml

    listen = yaml.safe_load(config.read_text())["restapi"]["listen"]
    return listen.rsplit(":", 1)[0]


def cloud_init_schema(user_data: Path) -> str:
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(user_data)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"cloud-init schema refused {user_data}:\n{output}"
    return output


def validate_pgbackrest(config: Path, stanza: str, names: list[str]) -> str:
    """pgBackRest reads `config` and runs `info` for `stanza`, with the repository's host
    `names` resolving to a closed port inside a namespace: option errors, unknown options and
    unreadable values show, the network does not matter. Returns pgBackRest's output."""
    # A refused connection is retried until the I/O timeout: one second.
    script = (
        'mount --bind "$1" /etc/hosts && '
        'exec pgbackrest --config="$2" --stanza="$3" --io-timeout=1 info'
    )
    with tempfile.TemporaryDirectory() as tmp, namespace([]) as ns:
        hosts = Path(tmp) / "hosts"
        hosts.write_text("".join(f"127.0.0.1 {name}\n" for name in ["localhost", *names]))
        result = subprocess.run(
            ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private"]
            + ["sh", "-c", script, "sh", str(hosts), str(config), stanza],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
            timeout=60,
            check=False,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"pgbackrest refused {config}:\n{output}"
    assert "WARN" not in output and "ERROR" not in output.replace("status: error", ""), output
    return output


def systemd_calendar(expression: str) -> str:
    """systemd's own parse of an OnCalendar= expression (its normalized form)."""
    result = subprocess.run(
        ["systemd-analyze", "calendar", expression],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"systemd refuses OnCalendar={expression}: {result.stderr}"
    return result.stdout
