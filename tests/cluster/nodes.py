"""One database node: its own network, mount and UTS namespaces, its files at the real paths,
and its services (nebula, patroni) started from the image's unit files (units.py).

A holder process keeps the node's mount namespace alive; the node's files sit under a per-node
root and are bind-mounted over the node-layout paths inside that namespace only, so two nodes on
one machine both see /etc/patroni/patroni.yml, each its own. The cloud tier's guests are nodes
too (tests/cloud/guest.py): the same namespaces, mounts and units, with a console and the image's
own directories as `extra_mounts`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import exporters
from bundle import REPO, NodeBundle, parse_envfile, place
from netns import Host
from processes import Started, Supervisor, alive, minimal_env
from units import Systemd

from bakery.node.bundle import service_commands
from tests.owned_netns import kill_processes_in, ns_inode, ns_path, pids_in_netns

PG_MAJOR = 14
PG_BIN = f"/usr/lib/postgresql/{PG_MAJOR}/bin"
BUILD_ID = "cluster-tier"  # what /etc/bakery/manifest.json of the nodes says

# Node-layout directories that hold per-node state: (path, owner, mode). The bundle's own
# directories come first; the others exist empty in the image.
NODE_DIRS = [
    ("/etc/patroni", "postgres", 0o750),
    ("/etc/nebula", "root", 0o755),
    ("/etc/pgbackrest", "postgres", 0o750),
    ("/var/lib/postgresql", "postgres", 0o755),
    (f"/var/lib/postgresql/{PG_MAJOR}/patroni", "postgres", 0o700),
    ("/var/lib/pgbackrest", "postgres", 0o750),
    ("/var/log/pgbackrest", "postgres", 0o770),
    ("/var/spool/pgbackrest", "postgres", 0o750),
    ("/run/postgresql", "postgres", 0o2775),
    ("/tmp", "root", 0o1777),
    ("/etc/bakery", "root", 0o755),
    ("/usr/lib/bakery", "root", 0o755),
    # The backup job (as the pgbackrest element installs it), its status directory, and the
    # timers' schedule drop-ins the bundle writes.
    ("/usr/lib/bakery/pgbackrest", "root", 0o755),
    ("/var/lib/bakery/status", "root:postgres", 0o775),
    ("/etc/systemd/system", "root", 0o755),
    ("/etc/bakery/monitoring", "root", 0o755),
]
# What is bind-mounted from the node root (a subdirectory of one of these is carried along).
MOUNTS = [
    "/etc/patroni",
    "/etc/nebula",
    "/etc/pgbackrest",
    "/var/lib/postgresql",
    "/var/lib/pgbackrest",
    "/var/log/pgbackrest",
    "/var/spool/pgbackrest",
    "/run/postgresql",
    "/tmp",
    "/etc/bakery",
    "/usr/lib/bakery",
    "/var/lib/bakery",
    "/etc/systemd/system",
]
# Files of the image's elements the nodes run, as the elements install them (path on the node,
# file in the repository, mode).
IMAGE_FILES = [
    ("/usr/lib/bakery/bakery-node", REPO / "scripts/reporter/files/bakery_node.py", 0o755),
]
# Files bind-mounted from the node root: the node's own name resolution.
FILE_MOUNTS = ["/etc/hosts"]
BACKUP_JOB = REPO / "scripts" / "pgbackrest" / "files" / "bakery-pgbackrest"


def _run(argv: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw
    )


@dataclass
class Node:
    bundle: NodeBundle
    host: Host
    root: Path
    sup: Supervisor
    holder: Started | None = None
    services: dict[str, Started] = field(default_factory=dict)
    # Names the node resolves besides the host's /etc/hosts (the S3 endpoint).
    hosts: dict[str, str] = field(default_factory=dict)
    # (source, target): further bind mounts inside the node (a guest's image directories and
    # console); a directory source is created on the host as its mount point.
    extra_mounts: list[tuple[str, str]] = field(default_factory=list)
    console: Callable[[str], None] | None = None  # where console units write (a guest's)
    systemd: Systemd | None = None  # the node's units, once it has booted

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def address(self) -> str:
        """Where Patroni and PostgreSQL speak: the overlay address."""
        return self.bundle.overlay

    @property
    def target(self) -> str:
        """For pgclient.Psql: the name its certificate holds, and its address."""
        return f"{self.name}@{self.address}"

    # --- filesystem ---------------------------------------------------------------------
    def make_dirs(self) -> None:
        """The node-layout directories under the node root, as the image has them."""
        pg = pwd.getpwnam("postgres")
        for path, owner, mode in NODE_DIRS:
            d = self.root / path.lstrip("/")
            d.mkdir(parents=True, exist_ok=True)
            uid, gid = {"postgres": (pg.pw_uid, pg.pw_gid), "root:postgres": (0, pg.pw_gid)}.get(
                owner, (0, 0)
            )
            os.chown(d, uid, gid)
            os.chmod(d, mode)
        # The backup job as the pgbackrest element installs it, and the node's name resolution.
        job = self.file("/usr/lib/bakery/pgbackrest/bakery-pgbackrest")
        shutil.copyfile(BACKUP_JOB, job)
        os.chmod(job, 0o755)  # noqa: S103 - as the image installs it
        lines = [Path("/etc/hosts").read_text().rstrip("\n")]
        lines += [f"{address} {name}" for name, address in self.hosts.items()]
        self.file("/etc/hosts").write_text("\n".join(lines) + "\n")

    def lay_out(self) -> None:
        self.make_dirs()
        # The reporter's program, and the manifest whose build id it reports (a cloud guest has
        # the image's own, tests/cloud/guestimage.py).
        for path, source, mode in IMAGE_FILES:
            target = self.file(path)
            target.write_bytes(source.read_bytes())
            target.chmod(mode)
        self.file("/etc/bakery/manifest.json").write_text(f'{{"build_id": "{BUILD_ID}"}}\n')
        # The harness starts what runcmd starts, in its order; it knows nebula and patroni,
        # and the metrics services (exporters.py) when the bundle has them. The backup timers'
        # jobs are run by the tests, as their units say (backup_jobs.py).
        runcmd = self.bundle.runcmd()
        timers = [u for u in (runcmd[0] if runcmd else []) if u.endswith(".timer")]
        known = ["nebula.service", "patroni.service", *timers]
        wanted = [service_commands(known), service_commands([*known, *exporters.SERVICES])]
        if runcmd not in wanted:
            raise RuntimeError(
                f"{self.name}: runcmd {runcmd} is not what the harness runs (nebula, then "
                "patroni, then the metrics services)"
            )
        placed = place(self.bundle, self.root)
        unmounted = [p for p in placed if not any(p.startswith(m + "/") for m in MOUNTS)]
        if unmounted:
            raise RuntimeError(f"{self.name}: the harness has no mount for {unmounted}")

    def file(self, path: str) -> Path:
        """Where a node path lives on the test machine."""
        return self.root / path.lstrip("/")

    def patroni_env(self) -> dict[str, str]:
        return parse_envfile(self.file("/etc/patroni/patroni.env").read_text())

    # --- namespaces ---------------------------------------------------------------------
    def boot(self) -> None:
        """Start the holder of the node's mount and UTS namespaces and mount the node root."""
        argv = [
            "ip",
            "netns",
            "exec",
            self.host.netns,
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sleep",
            "infinity",
        ]
        self.holder = self.sup.start(f"{self.name}-holder", argv)
        deadline = time.monotonic() + 10
        while not self._holder_ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: namespace holder did not start")
            time.sleep(0.02)
        self.enter(["hostname", self.name])
        mounts = [(str(self.root / path.lstrip("/")), path) for path in MOUNTS]
        mounts += [(str(self.file(path)), path) for path in FILE_MOUNTS]
        for src, path in mounts + self.extra_mounts:
            if Path(src).is_dir():
                # The image has these directories; on a test machine /run is emptied at boot.
                Path(path).mkdir(parents=True, exist_ok=True)
            self.enter(["mount", "--bind", src, path])
        self.systemd = Systemd(
            self.name,
            enter=self.nsenter()[:-1],  # without its final "--"
            root=Path(f"/proc/{self.holder.pid}/root"),
            sup=self.sup,
            log_prefix=f"{self.name}-",
            console=self.console,
        )

    def _holder_ready(self) -> bool:
        # `ip netns exec` and `unshare` exec in place: ready once the PID runs `sleep`
        # in a mount namespace other than ours.
        pid = self.holder.pid
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            theirs = os.stat(f"/proc/{pid}/ns/mnt").st_ino
        except OSError:
            return False
        return comm == "sleep" and theirs != os.stat("/proc/self/ns/mnt").st_ino

    def nsenter(self, user: str | None = None) -> list[str]:
        return nsenter(self.holder.pid, user)

    def enter(
        self,
        argv: list[str],
        user: str | None = None,
        timeout: float = 30,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        res = _run(self.nsenter(user) + argv, timeout=timeout, env=env or self.service_env(user))
        if check and res.returncode != 0:
            raise RuntimeError(
                f"{self.name}: {' '.join(argv)} failed ({res.returncode}): "
                f"{res.stderr.strip() or res.stdout.strip()}"
            )
        return res

    def service_env(self, user: str | None) -> dict[str, str]:
        if user == "postgres":
            return minimal_env(
                HOME="/var/lib/postgresql",
                USER="postgres",
                LOGNAME="postgres",
                PATH=f"{PG_BIN}:/usr/local/bin:/usr/bin:/bin",
            )
        return minimal_env(HOME="/root")

    # --- services -----------------------------------------------------------------------
    def start_unit(self, unit: str) -> Started:
        """Start a service of the node from its unit file; its main process."""
        proc = self.systemd.start(unit)
        if proc is None:
            raise RuntimeError(f"{self.name}: {unit} did not start: {self.systemd.notes[-1:]}")
        self.services[unit.removesuffix(".service")] = proc
        return proc

    def start_nebula(self) -> Started:
        return self.start_unit("nebula.service")

    def start_patroni(self) -> Started:
        # patroni.service: user postgres, EnvironmentFile=-/etc/patroni/patroni.env.
        return self.start_unit("patroni.service")

    def start_reporter(self) -> Started:
        """bakery-reporter.service; its output (the journal `<node>-bakery-reporter.log`) is
        the node's console as far as BAKERY-NODE lines go."""
        return self.start_unit("bakery-reporter.service")

    def stop_patroni(self) -> float:
        """`systemctl stop patroni.service` as the unit says: its ExecStop (the leader's
        handover), then SIGTERM to Patroni alone (KillMode=process), SIGKILL at TimeoutStopSec.
        Returns how long the stop took."""
        started = time.monotonic()
        self.systemd.stop("patroni.service")
        self.services.pop("patroni", None)
        return time.monotonic() - started

    def console_text(self) -> str:
        """What the reporter wrote (its stdout; the image sends it to the serial console)."""
        log = self.sup.log_dir / f"{self.name}-bakery-reporter.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def start_exporters(self) -> None:
        """The scrape guard and the exporters, when the bundle enables them."""
        exporters.start(self)

    def start(self) -> None:
        self.start_nebula()
        self.wait_overlay()
        self.start_patroni()
        self.start_exporters()
        self.start_reporter()

    def running(self) -> bool:
        """Both services up: nebula, and patroni (which keeps PostgreSQL running)."""
        return all(
            name in self.services and alive(self.services[name].pid, self.services[name].started)
            for name in ("nebula", "patroni")
        )

    def wait_overlay(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while True:
            res = _run(["ip", "-n", self.host.netns, "-o", "addr", "show", "dev", "nebula1"])
            if f" {self.address}/" in res.stdout:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: nebula1 has no {self.address} after {timeout}s")
            time.sleep(0.05)

    def processes(self) -> list[int]:
        """Every process running in the node's network namespace, except the holder."""
        return [pid for pid in pids_in_netns(self._inode()) if pid not in self._spared()]

    def _inode(self) -> int:
        return ns_inode(ns_path(self.host.netns))

    def _spared(self) -> tuple[int, ...]:
        return (self.holder.pid,) if self.holder else ()

    def kill9(self) -> float:
        """Power loss of the services: SIGKILL every process of the node at once.

        Returns the monotonic time of the kill.
        """
        t = time.monotonic()
        survivors = kill_processes_in(self._inode(), timeout=10, spare=self._spared())
        if survivors:
            raise RuntimeError(f"{self.name}: processes survive SIGKILL: {survivors}")
        self.sup.reap()
        self.services.clear()
        if self.systemd is not None:
            self.systemd.forget()
        return t

    def stop(self) -> None:
        """A clean shutdown: every unit stopped in reverse start order (ExecStop, KillSignal,
        SIGKILL at TimeoutStopSec), then the final kill of whatever is left."""
        if self.systemd is not None:
            self.systemd.stop_all()
        self.kill9()


def nsenter(pid: int, user: str | None = None) -> list[str]:
    """The argv prefix that runs a command in the namespaces of process `pid` (a node's
    holder), as `user` if given."""
    argv = ["nsenter", "-t", str(pid), "-m", "-n", "-u", "--"]
    if user:
        argv += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
    return argv
