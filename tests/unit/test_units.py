"""The unit runner of the cluster and cloud tiers' nodes (tests/cluster/units.py): the image's
unit files read as systemd reads them, and real processes started and stopped as systemd would
(here without a node's namespaces, which need root)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import PROJECT

sys.path.append(str(PROJECT / "tests" / "cluster"))  # the cluster tier imports by bare name

from processes import Supervisor  # noqa: E402
from units import (  # noqa: E402
    Command,
    Systemd,
    Unit,
    UnitError,
    parse,
    timespan,
    unit_dropins,
    unit_files,
)

PY = sys.executable


def test_the_images_units_read_as_systemd_reads_them():
    units = {name: Unit.load(path) for name, path in unit_files().items()}
    patroni = units["patroni.service"]
    assert (patroni.user, patroni.group, patroni.type) == ("postgres", "postgres", "simple")
    assert patroni.environment_files == [
        ("/etc/patroni/patroni.env", True),
        ("/etc/bakery/node.env", True),
    ]
    assert [c.words for c in patroni.commands("ExecStart")] == [
        ["/opt/patroni/bin/patroni", "/etc/patroni/patroni.yml"]
    ]
    # The leader hands over first (never failing the stop); then Patroni stops PostgreSQL
    # itself: only its main process gets the signal, 55 s to go.
    (handover,) = patroni.commands("ExecStop")
    assert (handover.words, handover.ignore_failure) == (
        ["/usr/lib/bakery/bakery-node", "handover"],
        True,
    )
    assert (patroni.kill_mode, patroni.timeout_stop) == ("process", 55.0)
    assert (patroni.restart, patroni.restart_sec) == ("on-failure", 5.0)
    assert ("ConditionPathExists", "/etc/nebula/config.yml") in units["nebula.service"].conditions
    assert units["bakery-manifest.service"].type == "oneshot"
    reporter = units["bakery-reporter.service"]
    assert (reporter.user, reporter.to_console, reporter.restart) == ("postgres", True, "always")
    assert ("ConditionPathExists", "/etc/bakery/node.env") in reporter.conditions


# [Service] keys the runner emulates, and those that change nothing for a node's processes run
# outside systemd: sandboxing, privileges, scheduling and resource limits, names in the journal.
EMULATED = {
    *("Type", "User", "Group", "Environment", "EnvironmentFile", "WorkingDirectory"),
    *("ExecStartPre", "ExecStart", "ExecStop", "ExecStopPost", "RemainAfterExit"),
    *("KillMode", "KillSignal", "SendSIGKILL", "TimeoutSec", "TimeoutStopSec"),
    *("Restart", "RestartSec", "StandardOutput", "StandardError"),
}
OUTSIDE_SYSTEMD = ("Protect", "Private", "Restrict", "Capability", "Ambient", "IOScheduling")
OUTSIDE_SYSTEMD += ("NoNewPrivileges", "LockPersonality", "ReadWritePaths", "Memory", "Limit")
OUTSIDE_SYSTEMD += ("Nice", "SyslogIdentifier", "ExecReload", "TimeoutStartSec")


def test_every_service_key_of_the_units_is_emulated_or_changes_nothing_outside_systemd():
    """A unit that grows a key the runner neither honours nor may ignore fails here, instead of
    running differently in the cluster and cloud tiers than on a node."""
    dropins = unit_dropins()
    unknown = {
        f"{name}: {key}="
        for name, path in unit_files().items()
        for key in Unit.load(path, dropins.get(name, []), name).sections.get("Service", {})
        if key not in EMULATED and not key.startswith(OUTSIDE_SYSTEMD)
    }
    assert unknown == set()


def test_syntax_time_spans_and_command_lines():
    sections = parse("[Service]\nExecStart=/a\nExecStart=\nExecStart=/b \\\n  --flag\n# no\n")
    assert sections == {"Service": {"ExecStart": ["/b    --flag"]}}
    assert [timespan(t) for t in ("30", "5s", "1min 30s", "100ms")] == [30, 5, 90, 0.1]
    assert timespan("infinity") is None
    command = Command.parse("-/bin/echo $WORDS ${ONE}x %n %%")
    assert command.ignore_failure
    env = {"WORDS": "a b", "ONE": "1"}
    assert command.argv(env, "x.service") == ["/bin/echo", "a", "b", "1x", "x.service", "%"]
    with pytest.raises(UnitError):
        parse("Key=value before any section\n")
    with pytest.raises(UnitError):
        Command.parse("@/bin/true true")


def _systemd(tmp_path: Path, units: dict[str, str], console=None) -> Systemd:
    (tmp_path / "units").mkdir()
    (tmp_path / "logs").mkdir()
    paths = {}
    for name, text in units.items():
        paths[name] = tmp_path / "units" / name
        paths[name].write_text(text)
    sup = Supervisor(tmp_path / "logs")
    return Systemd("node", [], tmp_path, sup, console=console, units=paths)


def _sleeper(ignore_term: bool = False) -> str:
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignore_term else ""
    return f"{PY} -c 'import signal, time; {ignore}time.sleep(60)'"


def test_start_order_stop_in_reverse_with_exec_stop_and_the_stop_timeout(tmp_path):
    log = tmp_path / "events"
    systemd = _systemd(
        tmp_path,
        {
            "first.service": f"[Unit]\nBefore=second.service\n[Service]\n"
            f"ExecStart={_sleeper()}\n"
            f"ExecStop=/bin/sh -c 'echo stop-first $MAINPID >> {log}'\n",
            "second.service": f"[Unit]\nAfter=first.service\n[Service]\n"
            f"ExecStart={_sleeper(ignore_term=True)}\nTimeoutStopSec=1\n"
            f"ExecStopPost=/bin/sh -c 'echo stopped-second >> {log}'\n",
        },
    )
    assert systemd.start_all(["second.service", "first.service"]) == []
    assert systemd.order == ["first.service", "second.service"]
    first, second = systemd.main["first.service"], systemd.main["second.service"]
    time.sleep(0.5)  # the second one has installed its SIGTERM handler
    started = time.monotonic()
    systemd.stop_all()
    # Reverse order; the one that ignores SIGTERM is killed at its TimeoutStopSec.
    assert log.read_text().split("\n")[:2] == ["stopped-second", f"stop-first {first.pid}"]
    assert second.popen.returncode == -signal.SIGKILL
    assert first.popen.returncode == -signal.SIGTERM
    assert 1 <= time.monotonic() - started < 10
    assert systemd.order == []


def test_restart_on_failure_until_the_start_limit(tmp_path):
    systemd = _systemd(
        tmp_path,
        {
            "flaky.service": f"[Service]\nExecStart={PY} -c 'raise SystemExit(3)'\n"
            "Restart=on-failure\nRestartSec=100ms\n"
        },  # fmt: skip
    )
    systemd.start("flaky.service")
    deadline = time.monotonic() + 20
    while "flaky.service" not in systemd.failed and time.monotonic() < deadline:
        systemd.poll()
        time.sleep(0.05)
    assert "flaky.service" in systemd.failed
    assert len(systemd.sup.procs) == 5  # StartLimitBurst
    assert "[FAILED] Failed to start flaky.service - flaky.service." in systemd.notes


def test_conditions_environment_files_oneshot_and_console(tmp_path):
    (tmp_path / "env").write_text('FROMFILE="from file"\n')
    lines: list[str] = []
    systemd = _systemd(
        tmp_path,
        {
            "skipped.service": f"[Unit]\nConditionPathExists=/nope\n[Service]\nExecStart={PY}\n",
            "show.service": "[Unit]\nDescription=Show\n[Service]\nType=oneshot\n"
            'Environment="X=1 2"\nEnvironmentFile=-/missing\nEnvironmentFile=/env\n'
            "ExecStart=/bin/sh -c 'echo \"$X|$FROMFILE\"'\nStandardOutput=journal+console\n",
            "broken.service": "[Service]\nEnvironmentFile=/missing\nExecStart=/bin/true\n",
        },
        console=lines.append,
    )
    assert systemd.start("skipped.service") is None
    assert not systemd.active("skipped.service")
    assert systemd.start_all(["nope.service", "skipped.service"]) == ["nope.service"]
    assert systemd.start("show.service") is None  # a oneshot has run to its end
    assert lines == ["1 2|from file", "[  OK  ] Finished show.service - Show."]
    assert (tmp_path / "logs" / "show.log").read_text() == "1 2|from file\n"
    with pytest.raises(UnitError, match="environment file /missing missing"):
        systemd.start("broken.service")
    assert "broken.service" in systemd.failed


def test_monotonic_timers_fire_their_service(tmp_path):
    count = tmp_path / "count"
    systemd = _systemd(
        tmp_path,
        {
            "tick.timer": "[Timer]\nOnBootSec=200ms\nOnUnitActiveSec=300ms\n",
            "tick.service": f"[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo >> {count}'\n",
            "once.timer": "[Timer]\nOnCalendar=daily\n",
            "once.service": "[Service]\nType=oneshot\nExecStart=/bin/true\n",
        },
    )
    systemd.start_all(["tick.timer", "once.timer"])
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        systemd.poll()
        time.sleep(0.05)
    assert 3 <= len(count.read_text().splitlines()) <= 7
    assert "once.timer: calendar timers are not emulated; never fires" in systemd.notes
    systemd.stop_all()
    assert systemd.order == []


def test_a_path_unit_starts_its_service_when_the_watched_directory_changes(tmp_path):
    watched = tmp_path / "status"
    watched.mkdir()
    out = tmp_path / "out"
    scripts = tmp_path / "scripts" / "e" / "files"
    scripts.mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    (scripts / "job-metrics.path").write_text(
        f"[Unit]\nDescription=watch\n[Path]\nPathChanged={watched}\nUnit=job-metrics.service\n"
    )
    (scripts / "job-metrics.service").write_text(
        f"[Service]\nType=oneshot\nExecStart=/bin/sh -c 'ls {watched} > {out}'\n"
    )
    systemd = Systemd(
        "n", [], Path("/"), Supervisor(tmp_path / "logs"), units=unit_files(tmp_path / "scripts")
    )
    systemd.start_all(["job-metrics.path"])
    systemd.poll()
    assert not out.exists()  # nothing changed yet
    time.sleep(0.02)  # a later modification time than the start's
    (watched / "backup.json").write_text("{}")
    systemd.poll()
    assert out.read_text() == "backup.json\n"
    systemd.stop("job-metrics.path")
    (watched / "stanza.json").write_text("{}")
    systemd.poll()
    assert out.read_text() == "backup.json\n"  # stopped: watches no more
