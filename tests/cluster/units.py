"""A node's services, started and stopped as systemd would from the image's own unit files.

Unit files are the truth: the cluster tier's nodes and the cloud tier's guests run the very units
the image installs (`scripts/<element>/files/*.service|*.timer`), read here, not described again
by a harness. Honoured: User, Group, EnvironmentFile (`-`: optional), Environment,
WorkingDirectory, ExecStartPre, ExecStart, ExecStop, ExecStopPost (`-`: a failure is ignored;
`$VAR`, `${VAR}`, `$MAINPID`, `%n`, `%i`), Type (simple, exec and notify start like simple; oneshot,
with RemainAfterExit), Condition{PathExists,PathIsDirectory,FileNotEmpty,FileIsExecutable}
(with `!`), KillMode, KillSignal, SendSIGKILL, TimeoutSec/TimeoutStopSec, Restart and
RestartSec (for a caller that polls), After/Before ordering, StandardOutput/StandardError
(journal, and console or tty when the node has a console), and timers with monotonic triggers
(OnBootSec, OnStartupSec, OnActiveSec, OnUnitActiveSec, OnUnitInactiveSec), path units with
PathChanged/PathModified (the watched path's modification time, checked at each poll). Units
come from
the elements, or from the distribution (installed here by the tiers' setup) where an element
extends them with drop-ins (`files/<unit>.d/*.conf`, read after the unit, as systemd reads
them); `name@instance` units from their template.

Not emulated: cgroups (a unit's processes are its main process and that process's descendants;
a daemon that left them, as PostgreSQL's postmaster leaves Patroni, is ended by the node's
final kill, as systemd-shutdown ends leftovers), the sandboxing options (NoNewPrivileges,
Protect*, PrivateTmp, capabilities), sd_notify readiness, calendar timers (logged, never fired)
and D-Bus (no `systemctl` inside a node).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bundle import parse_envfile
from processes import Started, Supervisor, alive, kill, start_time, wait_gone

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
DISTRIBUTION_UNITS = Path("/lib/systemd/system")
UNIT_TYPES = (".service", ".timer", ".path")
PATH_KEYS = ("PathChanged", "PathModified")  # watched by mtime; the other Path*= are not
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TIMEOUT = 90.0  # systemd's DefaultTimeoutStartSec and DefaultTimeoutStopSec
ONESHOT_GUARD = 600.0  # a oneshot has no start timeout in systemd; a test must end
CONDITIONS = {
    "ConditionPathExists": lambda p: p.exists(),
    "ConditionPathIsDirectory": lambda p: p.is_dir(),
    "ConditionFileNotEmpty": lambda p: p.is_file() and p.stat().st_size > 0,
    "ConditionFileIsExecutable": lambda p: p.is_file() and os.access(p, os.X_OK),
}
# Exits that systemd counts as clean for Restart=on-failure (besides status 0).
CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}
TIMER_KEYS = ("OnBootSec", "OnStartupSec", "OnActiveSec", "OnUnitActiveSec", "OnUnitInactiveSec")
START_LIMIT = (5, 10.0)  # StartLimitBurst in StartLimitIntervalSec: then the unit fails


class UnitError(RuntimeError):
    pass


def unit_files(scripts: Path = SCRIPTS) -> dict[str, Path]:
    """Every unit file of the repository's elements, by unit name, and the distribution's
    units those elements extend with drop-ins (installed here by the tiers' setup)."""
    found: dict[str, Path] = {}
    for path in sorted(scripts.glob("*/files/*")):
        if path.suffix not in UNIT_TYPES:
            continue
        if path.name in found:
            raise UnitError(f"unit {path.name} is in {found[path.name]} and {path}")
        found[path.name] = path
    for name in unit_dropins(scripts):
        if name not in found and (DISTRIBUTION_UNITS / name).exists():
            found[name] = DISTRIBUTION_UNITS / name
    return found


def unit_dropins(scripts: Path = SCRIPTS) -> dict[str, list[Path]]:
    """The elements' drop-ins (`files/<unit>.d/*.conf`), by the unit they extend."""
    found: dict[str, list[Path]] = {}
    for path in sorted(scripts.glob("*/files/*.d/*.conf"), key=lambda p: p.name):
        found.setdefault(path.parent.name.removesuffix(".d"), []).append(path)
    return found


def parse(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> keys -> values in order. An empty assignment resets a key, as in systemd."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical = re.sub(r"\\\n", " ", text)
    for number, raw in enumerate(logical.split("\n"), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if current is None or not sep:
            raise UnitError(f"line {number}: {line[:40]!r} is no Key=Value inside a section")
        values = current.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return sections


def timespan(text: str) -> float | None:
    """Seconds of a systemd time span ("30", "5s", "1min 30s", "100ms"); None = infinity."""
    if text.strip() == "infinity":
        return None
    factors = {"us": 1e-6, "ms": 1e-3, "": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    if not parts or any(unit not in factors for _, unit in parts):
        raise UnitError(f"not a time span: {text!r}")
    return sum(float(number) * factors[unit] for number, unit in parts)


def boolean(text: str | None, default: bool) -> bool:
    if text is None:
        return default
    return text.lower() in ("1", "yes", "true", "on")


@dataclass(frozen=True)
class Command:
    words: list[str]
    ignore_failure: bool  # the `-` prefix

    @classmethod
    def parse(cls, line: str) -> Command:
        prefix = re.match(r"[-@:+!]*", line)[0]
        if "@" in prefix or ":" in prefix:
            raise UnitError(f"command prefix {prefix!r} is not emulated: {line}")
        return cls(shlex.split(line[len(prefix) :]), "-" in prefix)

    def argv(self, env: dict[str, str], unit: str) -> list[str]:
        """Words with variables and specifiers expanded as systemd does: `$VAR` alone is split
        into words, `${VAR}` is put into its word."""
        out: list[str] = []
        for word in self.words:
            alone = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
            if alone:
                out += env.get(alone[1], "").split()
                continue
            word = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m[1], ""), word)
            out.append(_specifiers(word, unit))
        return out


def _specifiers(word: str, unit: str) -> str:
    stem = unit.rsplit(".", 1)[0]
    values = {"%": "%", "n": unit, "N": stem, "p": unit.split("@")[0], "i": stem.partition("@")[2]}

    def one(match: re.Match) -> str:
        if match[1] not in values:
            raise UnitError(f"specifier %{match[1]} is not emulated ({unit})")
        return values[match[1]]

    return re.sub(r"%(.)", one, word)


@dataclass(frozen=True)
class Unit:
    name: str
    sections: dict[str, dict[str, list[str]]]

    @classmethod
    def load(cls, path: Path, dropins: list[Path] | tuple = (), name: str = "") -> Unit:
        """The unit file, then its drop-ins in order (an empty assignment in a drop-in
        resets what came before, as `ExecStart=` does)."""
        try:
            text = "\n".join(p.read_text() for p in [path, *dropins])
            return cls(name or path.name, parse(text))
        except UnitError as error:
            raise UnitError(f"{path}: {error}") from None

    def values(self, section: str, key: str) -> list[str]:
        return list(self.sections.get(section, {}).get(key, []))

    def value(self, section: str, key: str, default: str | None = None) -> str | None:
        values = self.values(section, key)
        return values[-1] if values else default

    def words(self, section: str, key: str) -> list[str]:
        return [word for value in self.values(section, key) for word in value.split()]

    @property
    def description(self) -> str:
        return self.value("Unit", "Description", self.name)

    @property
    def type(self) -> str:
        return self.value("Service", "Type", "simple")

    @property
    def user(self) -> str | None:
        return self.value("Service", "User")

    @property
    def group(self) -> str | None:
        return self.value("Service", "Group")

    def commands(self, key: str) -> list[Command]:
        return [Command.parse(line) for line in self.values("Service", key)]

    @property
    def environment(self) -> dict[str, str]:
        pairs = [
            item.partition("=")
            for v in self.values("Service", "Environment")
            for item in shlex.split(v)
        ]
        return {key: value for key, _, value in pairs}

    @property
    def environment_files(self) -> list[tuple[str, bool]]:
        """(path, optional) of each EnvironmentFile=, `-` meaning optional."""
        return [
            (v.lstrip("-"), v.startswith("-")) for v in self.values("Service", "EnvironmentFile")
        ]

    @property
    def kill_mode(self) -> str:
        return self.value("Service", "KillMode", "control-group")

    @property
    def kill_signal(self) -> signal.Signals:
        name = self.value("Service", "KillSignal", "SIGTERM")
        return (
            signal.Signals(int(name))
            if name.isdigit()
            else signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
        )

    @property
    def send_sigkill(self) -> bool:
        return boolean(self.value("Service", "SendSIGKILL"), True)

    @property
    def timeout_stop(self) -> float | None:
        text = self.value("Service", "TimeoutStopSec") or self.value("Service", "TimeoutSec")
        return DEFAULT_TIMEOUT if text is None else timespan(text)

    @property
    def restart(self) -> str:
        return self.value("Service", "Restart", "no")

    @property
    def restart_sec(self) -> float:
        return timespan(self.value("Service", "RestartSec", "100ms")) or 0.0

    @property
    def remain_after_exit(self) -> bool:
        return boolean(self.value("Service", "RemainAfterExit"), False)

    @property
    def working_directory(self) -> str:
        return self.value("Service", "WorkingDirectory", "/")

    @property
    def to_console(self) -> bool:
        """StandardOutput (or StandardError) names the console or a tty."""
        outputs = [self.value("Service", "StandardOutput", "journal")]
        outputs.append(self.value("Service", "StandardError", "inherit"))
        return any("console" in out or out.startswith("tty") for out in outputs)

    @property
    def conditions(self) -> list[tuple[str, str]]:
        return [
            (key, value)
            for key, values in self.sections.get("Unit", {}).items()
            if key.startswith(("Condition", "Assert"))
            for value in values
        ]

    @property
    def timer_target(self) -> str:
        return self.value("Timer", "Unit", self.name.removesuffix(".timer") + ".service")

    @property
    def path_target(self) -> str:
        return self.value("Path", "Unit", self.name.removesuffix(".path") + ".service")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, by parent links (what of a unit systemd's cgroup
    would hold, short of daemons that left their parent)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


@dataclass
class Systemd:
    """The units of one node. Commands run through `enter` (the argv prefix that enters the
    node's namespaces as root, without its final `--`); `root` is the node's filesystem as its
    processes see it (`/proc/<pid>/root` of a process inside), where conditions and
    environment files are read; each unit's output goes to `<log_prefix><unit stem>.log` in
    the supervisor's directory (its journal) and, for console units, to `console`."""

    node: str
    enter: list[str]
    root: Path
    sup: Supervisor
    log_prefix: str = ""
    console: Callable[[str], None] | None = None
    units: dict[str, Path] = field(default_factory=unit_files)
    dropins: dict[str, list[Path]] = field(default_factory=unit_dropins)
    booted: float = field(default_factory=time.monotonic)
    main: dict[str, Started] = field(default_factory=dict)  # running main processes
    order: list[str] = field(default_factory=list)  # active units in start order
    failed: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)  # what systemd would log to its journal
    _due: dict[str, float] = field(default_factory=dict)  # restarts and timers: unit -> when
    _starts: dict[str, list[float]] = field(default_factory=dict)
    _timers: dict[str, Unit] = field(default_factory=dict)
    _paths: dict[str, tuple[Unit, list[float | None]]] = field(default_factory=dict)
    _last: dict[str, tuple[float, float]] = field(default_factory=dict)  # (activated, ended)

    # --- units ------------------------------------------------------------------------------
    def unit(self, name: str) -> Unit:
        """The unit `name`, with its drop-ins; `name@instance.service` from its template."""
        prefix, at, rest = name.partition("@")
        template = f"{prefix}@.{rest.rsplit('.', 1)[-1]}" if at else name
        path = self.units.get(name) or self.units.get(template)
        if path is None:
            raise UnitError(f"Unit {name} not found.")
        return Unit.load(path, self.dropins.get(path.name, []), name)

    def ordered(self, names: list[str]) -> list[str]:
        """`names` in the order their After=/Before= ask for (stable otherwise)."""
        units = {name: self.unit(name) for name in names}
        before = {name: set() for name in names}  # name -> those that must start first
        for name, unit in units.items():
            before[name] |= {n for n in unit.words("Unit", "After") if n in units}
            for later in unit.words("Unit", "Before"):
                if later in units:
                    before[later].add(name)
        done: list[str] = []
        while len(done) < len(names):
            ready = [n for n in names if n not in done and before[n] <= set(done)]
            if not ready:
                raise UnitError(f"ordering cycle among {sorted(set(names) - set(done))}")
            done.append(ready[0])
        return done

    def active(self, name: str) -> bool:
        if name in self.main:
            proc = self.main[name]
            return alive(proc.pid, proc.started)
        return name in self.order

    # --- starting -----------------------------------------------------------------------------
    def start(self, name: str) -> Started | None:
        """Start `name` as `systemctl start` would; returns its main process (None for a
        oneshot, a timer or a unit skipped by a condition). Raises UnitError when it fails."""
        unit = self.unit(name)
        if self.active(name):
            return self.main.get(name)
        self._due.pop(name, None)
        self.failed.discard(name)
        if name.endswith(".timer"):
            return self._start_timer(unit)
        if name.endswith(".path"):
            return self._start_path(unit)
        unmet = [f"{k}={v}" for k, v in unit.conditions if not self._condition(k, v)]
        if unmet:
            self.notes.append(f"{name}: condition check resulted in skipping: {unmet[0]}")
            return None
        try:
            env = self._environment(unit)
            for command in unit.commands("ExecStartPre"):
                self._run_to_end(unit, command, env, DEFAULT_TIMEOUT)
            if unit.type == "oneshot":
                for command in unit.commands("ExecStart"):
                    self._run_to_end(unit, command, env, ONESHOT_GUARD)
                proc = None
            else:
                commands = unit.commands("ExecStart")
                if len(commands) != 1:
                    raise UnitError(f"{name}: Type={unit.type} needs exactly one ExecStart")
                proc = self._spawn(unit, commands[0], env)
        except UnitError:
            self.failed.add(name)
            self._status(f"[FAILED] Failed to start {name} - {unit.description}.")
            raise
        self._starts.setdefault(name, []).append(time.monotonic())
        self._last[name] = (time.monotonic(), 0.0)
        if proc is not None:
            self.main[name] = proc
        if proc is not None or unit.remain_after_exit:
            self.order.append(name)
        else:
            self._last[name] = (self._last[name][0], time.monotonic())
        verb = "Finished" if unit.type == "oneshot" else "Started"
        self._status(f"[  OK  ] {verb} {name} - {unit.description}.")
        return proc

    def start_all(self, names: list[str]) -> list[str]:
        """Start each in order; returns those that failed (systemd goes on with the others)."""
        failed = [name for name in names if name not in self.units]
        self.notes += [f"Unit {name} not found." for name in failed]
        for name in self.ordered([name for name in names if name in self.units]):
            try:
                self.start(name)
            except UnitError as error:
                self.notes.append(str(error))
                failed.append(name)
        return failed

    def _condition(self, key: str, value: str) -> bool:
        check = CONDITIONS.get(key.replace("Assert", "Condition", 1))
        if check is None:
            raise UnitError(f"{key} is not emulated")
        negate = value.startswith("!")
        met = check(self.root / value.lstrip("!").lstrip("/"))
        return met != negate

    def _environment(self, unit: Unit) -> dict[str, str]:
        env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
        if unit.user:
            entry = pwd.getpwnam(unit.user)
            env |= {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name}
            env["SHELL"] = entry.pw_shell
        env |= unit.environment
        for path, optional in unit.environment_files:
            try:
                text = (self.root / path.lstrip("/")).read_text()
            except FileNotFoundError:
                if optional:
                    continue
                raise UnitError(f"{unit.name}: environment file {path} missing") from None
            env |= parse_envfile(text)
        return env

    def _argv(self, unit: Unit, command: Command, env: dict[str, str]) -> list[str]:
        # Without `enter` (the unit tests) commands run here, from the working directory.
        argv = [*self.enter, f"--wd={unit.working_directory}", "--"] if self.enter else []
        if unit.user:
            group = unit.group or unit.user
            argv += ["setpriv", f"--reuid={unit.user}", f"--regid={group}", "--init-groups", "--"]
        return argv + command.argv(env, unit.name)

    def _spawn(self, unit: Unit, command: Command, env: dict[str, str]) -> Started:
        name = self.log_prefix + unit.name.rsplit(".", 1)[0]
        tee = self._console_lines if (unit.to_console and self.console) else None
        argv = self._argv(unit, command, env)
        cwd = "/" if self.enter else unit.working_directory  # else nsenter --wd inside
        return self.sup.start(name, argv, env=env, cwd=cwd, tee=tee)

    def _run_to_end(self, unit: Unit, command: Command, env, timeout: float | None) -> None:
        proc = self._spawn(unit, command, env)
        try:
            code = proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:  # killed, as systemd does at the timeout
            kill(proc.pid, proc.started)
            proc.popen.wait(10)
            code = "timeout"
        if proc.copier is not None:
            proc.copier.join(5)  # its console lines come before the job's result
        if code != 0 and not command.ignore_failure:
            raise UnitError(f"{unit.name}: {' '.join(command.words)} failed ({code})")

    def _console_lines(self, line: bytes) -> None:
        self.console(line.decode(errors="replace").rstrip("\n"))

    def _status(self, line: str) -> None:
        self.notes.append(line)
        if self.console is not None:
            self.console(line)

    # --- timers -------------------------------------------------------------------------------
    def _start_timer(self, unit: Unit) -> None:
        if unit.values("Timer", "OnCalendar"):
            self.notes.append(f"{unit.name}: calendar timers are not emulated; never fires")
        self._timers[unit.name] = unit
        self.order.append(unit.name)
        self._last[unit.name] = (time.monotonic(), 0.0)
        self._arm(unit)
        self._status(f"[  OK  ] Started {unit.name} - {unit.description}.")
        return None

    def _arm(self, timer: Unit) -> None:
        """When the timer next fires: the earliest of its monotonic triggers still ahead."""
        now = time.monotonic()
        activated, _ = self._last[timer.name]
        service_on, service_off = self._last.get(timer.timer_target, (0.0, 0.0))
        bases = {
            "OnBootSec": self.booted,
            "OnStartupSec": self.booted,
            "OnActiveSec": activated,
            "OnUnitActiveSec": service_on or None,
            "OnUnitInactiveSec": service_off or None,
        }
        times = [
            bases[key] + (timespan(value) or 0)
            for key in TIMER_KEYS
            if bases[key] is not None
            for value in timer.values("Timer", key)
        ]
        ahead = [t for t in times if t > service_on] if service_on else times
        if ahead:
            self._due[timer.name] = max(min(ahead), now)

    # --- path units ---------------------------------------------------------------------------
    def _start_path(self, unit: Unit) -> None:
        other = [k for k in unit.sections.get("Path", {}) if k.startswith("Path")]
        for key in sorted(set(other) - set(PATH_KEYS)):
            self.notes.append(f"{unit.name}: {key} is not emulated; never triggers")
        self._paths[unit.name] = (unit, self._path_times(unit))
        self.order.append(unit.name)
        self._status(f"[  OK  ] Started {unit.name} - {unit.description}.")
        return None

    def _path_times(self, unit: Unit) -> list[float | None]:
        times: list[float | None] = []
        for key in PATH_KEYS:
            for value in unit.values("Path", key):
                try:
                    times.append((self.root / value.lstrip("/")).stat().st_mtime)
                except OSError:
                    times.append(None)
        return times

    # --- watching -----------------------------------------------------------------------------
    def poll(self) -> None:
        """What systemd does between jobs: notice exited services, restart them as Restart=
        says, fire timers. A caller that never polls gets no restarts (the cluster tier kills
        nodes on purpose and starts them itself)."""
        now = time.monotonic()
        for name, proc in list(self.main.items()):
            code = proc.popen.poll()
            if code is None:
                continue
            del self.main[name]
            if name in self.order:
                self.order.remove(name)
            self._last[name] = (self._last.get(name, (now, 0.0))[0], now)
            unit = self.unit(name)
            clean = code == 0 or (code < 0 and -code in CLEAN_SIGNALS)
            self.notes.append(f"{name}: main process exited ({code})")
            if self._restarts(unit, code, clean):
                recent = [t for t in self._starts.get(name, []) if now - t < START_LIMIT[1]]
                if len(recent) >= START_LIMIT[0]:
                    self.failed.add(name)
                    self._status(f"[FAILED] Failed to start {name} - {unit.description}.")
                else:
                    self._due[name] = now + unit.restart_sec
            elif not clean:
                self.failed.add(name)
        for name, when in list(self._due.items()):
            if when > now:
                continue
            del self._due[name]
            target = self._timers[name].timer_target if name in self._timers else name
            try:
                self.start(target)
            except UnitError as error:
                self.notes.append(str(error))
            if name in self._timers and name in self.order:
                self._arm(self._timers[name])
        for name, (unit, seen) in list(self._paths.items()):
            now_times = self._path_times(unit)
            if now_times == seen:
                continue
            self._paths[name] = (unit, now_times)
            try:
                self.start(unit.path_target)
            except UnitError as error:
                self.notes.append(str(error))

    @staticmethod
    def _restarts(unit: Unit, code: int, clean: bool) -> bool:
        signalled = code < 0
        return {
            "always": True,
            "on-success": clean,
            "on-failure": not clean,
            "on-abnormal": signalled and not clean,
            "on-abort": signalled and not clean,
        }.get(unit.restart, False)

    # --- stopping -----------------------------------------------------------------------------
    def stop(self, name: str) -> None:
        """`systemctl stop`: ExecStop (with $MAINPID), then KillSignal to what KillMode names,
        SIGKILL at TimeoutStopSec, then ExecStopPost."""
        self._due.pop(name, None)
        if name in self._timers or name in self._paths:
            self._timers.pop(name, None)
            self._paths.pop(name, None)
            self.order.remove(name)
            return
        unit = self.unit(name)
        proc = self.main.pop(name, None)
        running = proc is not None and alive(proc.pid, proc.started)
        if not running and name not in self.order:
            return
        limit = unit.timeout_stop
        deadline = time.monotonic() + (limit if limit is not None else ONESHOT_GUARD)
        try:
            env = self._environment(unit)
        except UnitError:
            env = {"PATH": DEFAULT_PATH}
        if running:
            env["MAINPID"] = str(proc.pid)
        for command in unit.commands("ExecStop"):
            self._stop_command(unit, command, env, deadline)
        if running:
            group = self._group(unit, proc)
            for pid, started in group:
                kill(pid, started, unit.kill_signal)
                kill(pid, started, signal.SIGCONT)
            waited = group if unit.kill_mode == "control-group" else group[:1]
            left = wait_gone(waited, max(0.0, deadline - time.monotonic()))
            if left and unit.send_sigkill:
                targets = group if unit.kill_mode in ("control-group", "mixed") else group[:1]
                for pid, started in targets:
                    kill(pid, started, signal.SIGKILL)
                wait_gone(targets, 10)
            proc.popen.poll()
        for command in unit.commands("ExecStopPost"):
            self._stop_command(unit, command, env, deadline + 30)
        if name in self.order:
            self.order.remove(name)
        self._last[name] = (self._last.get(name, (0.0, 0.0))[0], time.monotonic())
        self._status(f"[  OK  ] Stopped {name} - {unit.description}.")

    def _group(self, unit: Unit, proc: Started) -> list[tuple[int, int | None]]:
        if unit.kill_mode == "none":
            return []
        if unit.kill_mode == "process":
            return [(proc.pid, proc.started)]
        return [(pid, start_time(pid)) for pid in descendants(proc.pid)]

    def _stop_command(self, unit: Unit, command: Command, env, deadline: float) -> None:
        try:
            self._run_to_end(unit, command, env, max(1.0, deadline - time.monotonic()))
        except UnitError as error:
            self.notes.append(str(error))

    def stop_all(self) -> None:
        """Every active unit, in reverse start order (what a shutdown does before its final
        kill)."""
        for name in reversed(list(self.order)):
            self.stop(name)

    def forget(self) -> None:
        """The node lost power: nothing runs, nothing is due."""
        self.main.clear()
        self.order.clear()
        self._due.clear()
        self._timers.clear()
        self._paths.clear()
