"""How fast `invoke --list` answers, beside a bare Python start on the same machine.

Runs both commands alternately (so noise hits both alike) and prints medians and their ratio.
Goal: `invoke --list` under 0.5 s. Run: .venv/bin/python bench/cli_startup.py [runs]
"""

import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
INVOKE = Path(sys.executable).with_name("invoke")
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "invoke --list": [str(INVOKE), "--list"],
}


def main(runs: int) -> None:
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, cwd=PROJECT, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["python -c pass"])
    print(f"{'command':16} {'median':>8} {'min':>8} {'max':>8} {'x python':>9}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"{name:16} {median:8.3f} {min(samples):8.3f} {max(samples):8.3f} {median / base:9.1f}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
