"""Progress lines of environments that work in parallel (one thread each) never run together
on one line: each is written whole."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

from tests.helpers import PROJECT


def test_lines_logged_from_parallel_threads_stay_whole():
    # In a child process whose stdout is a pipe, as in CI and under systemd.
    script = textwrap.dedent(
        f"""
        import importlib.util, threading
        spec = importlib.util.spec_from_file_location("tasks", {str(PROJECT / "tasks.py")!r})
        tasks = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tasks)
        def log(env):
            for n in range(300):
                tasks._progress(f"{{env}}: step {{n}} " + "x" * 40)
        threads = [threading.Thread(target=log, args=(f"e{{i}}",)) for i in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 8 * 300
    broken = [line for line in lines if not re.fullmatch(r"bakery: e\d: step \d+ x{40}", line)]
    assert broken == []
