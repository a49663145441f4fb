"""Running a build's commands: real timeouts, the whole process group ended however a command
ends, and every failure a BuildError with the command, how it ended, its last lines and the log.

Timing bounds are generous on purpose: the machine may be loaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bakery.cleanup import Cleanup, ReleaseError, interrupt_on_sigterm
from bakery.errors import BakeryError, BuildError
from bakery.image import commands
from bakery.image.commands import CommandError, live_members, run_command
from bakery.image.definition import IMAGES_DIR, load_definition
from bakery.image.hostfs import chroot_mounts, umount
from bakery.image.localbuild import Builder


@pytest.fixture
def started(monkeypatch) -> list[int]:
    """The PIDs of the commands run_command starts: each is its process group's ID."""
    pids = []
    popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        proc = popen(*args, **kwargs)
        pids.append(proc.pid)
        return proc

    monkeypatch.setattr(commands.subprocess, "Popen", recording_popen)
    return pids


def assert_group_gone(pgid: int) -> None:
    """No process of the group runs. This machine's PID 1 may not reap orphans, so a member
    that was reparented can linger as a zombie: dead, but still counted by killpg."""
    assert live_members(pgid) == []


def read_pid(path: Path) -> int:
    deadline = time.monotonic() + 20
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return int(path.read_text())


def test_output_is_returned_stdout_and_stderr_together():
    output = run_command(["sh", "-c", "echo one; echo two >&2; printf three"], timeout=20)
    assert output == "one\ntwo\nthree"


def test_each_line_is_passed_on_as_it_comes():
    seen = []
    run_command(["sh", "-c", "echo a; echo b"], timeout=20, on_line=seen.append)
    assert seen == ["a\n", "b\n"]


def test_stdin_is_fed_when_given_and_empty_otherwise():
    assert run_command(["cat"], timeout=20, stdin="script\n") == "script\n"
    assert run_command(["cat"], timeout=20) == ""


def test_a_silent_command_times_out_and_its_group_is_killed(tmp_path, started):
    start = time.monotonic()
    with pytest.raises(BuildError) as caught:
        run_command(["sleep", "30"], timeout=1, log_path=tmp_path / "build.log")
    assert time.monotonic() - start < 20
    error = caught.value
    assert isinstance(error, CommandError) and error.timed_out
    assert str(error) == (
        "sleep 30: timed out after 1 s (process group killed)\n"
        "(no output)\n"
        f"full log: {tmp_path / 'build.log'}"
    )
    with pytest.raises(ProcessLookupError):  # the leader is reaped, nothing else was in it
        os.killpg(started[0], 0)


def test_a_timeout_kills_children_that_ignore_sigterm(monkeypatch, started):
    monkeypatch.setattr(commands, "TERM_GRACE", 0.5)
    # The shell and its background child ignore SIGTERM: only SIGKILL ends them.
    start = time.monotonic()
    with pytest.raises(CommandError, match="timed out after 2 s"):
        run_command(["sh", "-c", "trap '' TERM; sleep 30 & wait"], timeout=2)
    assert time.monotonic() - start < 20
    assert_group_gone(started[0])


def test_what_a_finished_command_left_in_its_group_is_ended(started):
    # The leader exits at once; its background child would run on for 30 s, holding the
    # output pipe open.
    start = time.monotonic()
    output = run_command(["sh", "-c", "sleep 30 & echo done"], timeout=60)
    assert time.monotonic() - start < 20
    assert output == "done\n"
    assert_group_gone(started[0])


def test_a_daemon_that_left_the_group_holding_the_output_does_not_hang_the_run(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(commands, "READER_GRACE", 0.5)
    pid_file = tmp_path / "daemon"
    daemon = (
        "import os, sys, time; os.setsid(); "
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(30)"
    )
    script = f'{sys.executable} -c "{daemon}" & while [ ! -s {pid_file} ]; do sleep 0.05; done'
    start = time.monotonic()
    try:
        run_command(["sh", "-c", script], timeout=60)
        assert time.monotonic() - start < 20
    finally:
        os.kill(read_pid(pid_file), signal.SIGKILL)


def test_a_failing_command_reports_its_exit_and_last_lines(tmp_path):
    script = "for i in $(seq 1 40); do echo line $i; done; echo oops >&2; exit 3"
    with pytest.raises(BuildError) as caught:
        run_command(["sh", "-c", script], timeout=20, log_path=tmp_path / "build.log")
    error = caught.value
    assert isinstance(error, CommandError)
    assert error.returncode == 3
    message = str(error)
    assert "failed with exit 3" in message
    assert "seq 1 40" in message
    assert "  oops" in message and "  line 40" in message
    assert "line 20\n" not in message  # only the tail
    assert message.endswith(f"full log: {tmp_path / 'build.log'}")


def test_a_command_killed_by_a_signal_says_so():
    with pytest.raises(CommandError, match="killed by SIGKILL"):
        run_command(["sh", "-c", "kill -9 $$"], timeout=20)


def test_a_missing_executable_is_a_build_error(tmp_path):
    with pytest.raises(BakeryError) as caught:
        run_command(["no-such-tool-bakery", "--flag"], timeout=20, log_path=tmp_path / "log")
    assert isinstance(caught.value, BuildError)
    message = str(caught.value)
    assert "no-such-tool-bakery --flag: could not start" in message
    assert "No such file or directory" in message


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_while_a_command_runs_ends_its_group(signum, started):
    def signal_once_started(line: str) -> None:
        os.kill(os.getpid(), signum)  # handled in the main thread, like Ctrl-C or a stop

    start = time.monotonic()
    # As in a build: SIGTERM unwinds like Ctrl-C.
    with pytest.raises(KeyboardInterrupt), interrupt_on_sigterm():
        run_command(
            ["sh", "-c", "echo started; exec sleep 30"], timeout=60, on_line=signal_once_started
        )
    assert time.monotonic() - start < 20
    with pytest.raises(ProcessLookupError):
        os.killpg(started[0], 0)


def test_a_long_command_is_shortened_in_the_message():
    with pytest.raises(CommandError) as caught:
        run_command(["sh", "-c", "exit 1", "x" * 500], timeout=20)
    first_line = str(caught.value).splitlines()[0]
    assert len(first_line) < commands.SHOWN_CHARS + 40
    assert "…" in first_line


# -- the builder's run: logged, echoed, the log named ----------------------------------------
@pytest.fixture
def builder(tmp_path):
    loaded = load_definition(IMAGES_DIR / "local-test.yaml")
    built = Builder(loaded, tmp_path / "out", cache_dir=None, echo=False)
    built.out.mkdir(parents=True)
    with open(built.log_path, "w") as built._log_file:
        yield built


def test_builder_logs_the_command_and_its_output(builder):
    assert builder.run(["sh", "-c", "echo hello"], timeout=20) == "hello\n"
    builder._log_file.flush()
    log = builder.log_path.read_text()
    assert "[localbuild] $ sh -c 'echo hello'\nhello\n" in log


def test_builder_timeout_names_the_command_the_seconds_and_its_log(builder):
    start = time.monotonic()
    with pytest.raises(BuildError) as caught:
        builder.run(["sleep", "30"], timeout=1)
    assert time.monotonic() - start < 20
    message = str(caught.value)
    assert message.startswith("sleep 30: timed out after 1 s")
    assert f"full log: {builder.log_path}" in message
    assert "[localbuild] sleep: timed out after 1 s" in builder.log_path.read_text()


def test_a_failing_build_step_is_a_build_error_with_the_tools_words(builder, tmp_path):
    with pytest.raises(BuildError) as caught:
        builder._unpack(tmp_path / "missing.tar")  # the step that unpacks the base
    message = str(caught.value)
    assert message.startswith(f"tar -xpf {tmp_path / 'missing.tar'} -C ")
    assert "failed with exit 2" in message
    assert "Cannot open: No such file or directory" in message
    assert f"full log: {builder.log_path}" in message


def test_builder_echoes_unless_capturing(builder, capsys):
    builder.echo = True
    builder.run([sys.executable, "-c", "print('shown')"], timeout=20)
    builder.run([sys.executable, "-c", "print('quiet')"], timeout=20, capture=True)
    out = capsys.readouterr().out
    assert "shown\n" in out
    assert "quiet\n" not in out


# -- host helpers: their commands fail the same way, and Cleanup still unwinds ---------------
def test_a_failed_mount_releases_the_earlier_mounts_and_keeps_its_error(tmp_path):
    ran = []

    def run(command, *, timeout):
        ran.append(command[:2] if command[0] == "mount" else command)
        if command[-1].endswith("/sys"):
            raise CommandError(command, "failed with exit 32", ["mount: permission denied"], None)
        return ""

    cleanup = Cleanup(lambda _: None)
    failed = pytest.raises(CommandError, match="mount: permission denied")
    with failed, chroot_mounts(tmp_path / "tree", cleanup, run):
        pytest.fail("the block must not run")
    assert ran == [["mount", "-t"], ["mount", "-t"], ["umount", str(tmp_path / "tree/proc")]]
    assert cleanup.leftovers == []


def test_a_busy_mount_is_detached_lazily_and_reported(tmp_path):
    ran = []

    def run(command, *, timeout):
        ran.append(command)
        if command == ["umount", str(tmp_path)]:
            raise CommandError(command, "failed with exit 32", ["target is busy."], None)
        return ""

    with pytest.raises(ReleaseError, match="detached lazily: target is busy."):
        umount(tmp_path, run)
    assert ran == [["umount", str(tmp_path)], ["umount", "-l", str(tmp_path)]]
