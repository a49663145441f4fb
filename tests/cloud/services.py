"""How each service of the stack is prepared (database, keys) and how it is run."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

from . import plugins
from .config import COMPUTE_HOSTS, sqlite
from .layout import HOST, PORTS, REGION, Layout, write_private

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
REPO = Path(__file__).resolve().parents[2]


def run(layout: Layout, log_name: str, argv: list, env: dict[str, str] | None = None) -> None:
    """Run a one-shot command, its output appended to logs/<log_name>.log."""
    layout.logs.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(layout.logs / f"{log_name}.log", "ab") as log:
        log.write(f"$ {' '.join(str(a) for a in argv)}\n".encode())
        log.flush()
        result = subprocess.run(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **plugins.service_env(), **(env or {})},
            cwd=layout.root,
            timeout=300,
            check=False,
        )
        log.write(f"# exit {result.returncode} after {time.monotonic() - start:.1f} s\n".encode())
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): see {log.name}")


def write_keystone_keys(layout: Layout) -> None:
    """What `keystone-manage fernet_setup` and `credential_setup` write, without two process
    starts: a repository (0700) with a staged key `0` and a primary key `1` (0600 each)."""
    for repo in ("fernet-keys", "credential-keys"):
        path = layout.data / "keystone" / repo
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for index in ("0", "1"):
            write_private(path / index, base64.urlsafe_b64encode(os.urandom(32)).decode())


def bootstrap_keystone(layout: Layout, venv: Path, admin_password: str) -> None:
    url = layout.url("keystone") + "/"
    conf = layout.etc / "keystone/keystone.conf"
    run(layout, "setup-keystone", [
        venv / "bin/keystone-manage", "--config-file", conf, "bootstrap",
        "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
        "--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone",
        "--bootstrap-region-id", REGION, "--bootstrap-admin-url", url,
        "--bootstrap-internal-url", url, "--bootstrap-public-url", url,
    ], env={"OS_BOOTSTRAP_PASSWORD": admin_password})  # fmt: skip


def map_cells(layout: Layout, venv: Path) -> None:
    """Register cell0 and cell1 (their URLs hold this run's broker password)."""
    manage = [venv / "bin/nova-manage", "--config-file", layout.etc / "nova/nova.conf"]
    run(layout, "setup-nova", [*manage, "cell_v2", "map_cell0", "--database_connection",
                               sqlite(layout, "nova_cell0")])  # fmt: skip
    run(layout, "setup-nova", [*manage, "cell_v2", "create_cell", "--name", "cell1"])


def discover_hosts(layout: Layout, venv: Path) -> None:
    manage = [venv / "bin/nova-manage", "--config-file", layout.etc / "nova/nova.conf"]
    run(layout, "setup-nova", [*manage, "cell_v2", "discover_hosts"])


def _uwsgi(venv: Path, service: str, module: str) -> list[str]:
    # --http11-socket: keystoneauth keeps connections alive, plain --http-socket resets them;
    # 8 threads: idle keep-alive connections hold a thread each.
    return [
        str(venv / "bin/uwsgi"), "--http11-socket", f"{HOST}:{PORTS[service]}",
        "--module", module, "--threads", "8", "--need-app", "--die-on-term",
        "--buffer-size", "65535", "--disable-logging", "--procname-prefix", f"bakery-{service} ",
    ]  # fmt: skip


def processes(layout: Layout, venvs: dict[str, Path]) -> dict[str, tuple[list[str], dict]]:
    """name -> (argv, extra environment) of every long-running process, in start order."""
    etc = layout.etc
    rabbit_env = {
        "HOME": str(layout.data / "rabbitmq"),
        "RABBITMQ_NODENAME": "bakery@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": HOST,
        "RABBITMQ_NODE_PORT": str(PORTS["rabbitmq"]),
        "RABBITMQ_DIST_PORT": str(PORTS["rabbitmq-dist"]),
        "ERL_EPMD_ADDRESS": HOST,
        "ERL_EPMD_PORT": str(PORTS["epmd"]),
        "RABBITMQ_CONFIG_FILE": str(etc / "rabbitmq/rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(etc / "rabbitmq/rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(etc / "rabbitmq/enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(layout.data / "rabbitmq/mnesia"),
        "RABBITMQ_LOG_BASE": str(layout.logs),
        "RABBITMQ_PID_FILE": str(layout.data / "rabbitmq/rabbitmq.pid"),
        # Erlang distribution on loopback only.
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1} "
        "-start_epmd false",  # ours runs on loopback; a daemonized one would escape the stop
    }
    nova = venvs["nova"]
    nova_conf = ["--config-file", str(etc / "nova/nova.conf")]
    procs = {
        "epmd": (["epmd", "-address", HOST, "-port", str(PORTS["epmd"])], {}),
        "rabbitmq": ([RABBITMQ_SERVER], rabbit_env),
        "keystone": (
            _uwsgi(venvs["keystone"], "keystone", "keystone.wsgi.api:application"),
            {"OS_KEYSTONE_CONFIG_FILES": str(etc / "keystone/keystone.conf")},
        ),
        "glance": (
            _uwsgi(venvs["glance"], "glance", "glance.wsgi.api:application"),
            {"OS_GLANCE_CONFIG_DIR": str(etc / "glance")},
        ),
        "placement": (
            _uwsgi(nova, "placement", "placement.wsgi.api:application"),
            {"OS_PLACEMENT_CONFIG_DIR": str(etc / "placement")},
        ),
        "nova-api": (
            _uwsgi(nova, "nova", "nova.wsgi.osapi_compute:application"),
            {"OS_NOVA_CONFIG_DIR": str(etc / "nova")},
        ),
        "neutron": (
            _uwsgi(venvs["neutron"], "neutron", "neutron.wsgi.api:application"),
            {
                "OS_NEUTRON_CONFIG_DIR": str(etc / "neutron"),
                "OS_NEUTRON_CONFIG_FILES": "neutron.conf",
            },
        ),
        "nova-conductor": ([str(nova / "bin/nova-conductor"), *nova_conf], {}),
        "nova-scheduler": ([str(nova / "bin/nova-scheduler"), *nova_conf], {}),
    }
    # The driver runs guests (tests/cloud/guest.py) with the project's Python, cabled to the
    # networks that bakery-net (tests/cloud/underlay.py) built.
    guests = {
        "BAKERY_GUEST_PYTHON": sys.executable,
        "BAKERY_GUEST_REPO": str(REPO),
        "BAKERY_GUEST_NET": str(layout.root / "net" / "net.json"),
    }
    for host in COMPUTE_HOSTS:
        argv = [str(nova / "bin/nova-compute"), *nova_conf, "--config-file",
                str(etc / f"nova/{host}.conf")]  # fmt: skip
        procs[f"nova-compute-{host}"] = (argv, guests)
    underlay = [sys.executable, "-m", "tests.cloud.underlay", "--state", str(layout.root)]
    procs["bakery-net"] = (underlay, {"PYTHONPATH": str(REPO)})
    # The drivers in the shared venvs are shims that load this checkout's (plugins.py).
    return {name: (argv, {**env, **plugins.service_env()}) for name, (argv, env) in procs.items()}
