"""Install the OpenStack services into cached venvs outside the work tree.

One venv per service group (keystone, glance, nova+placement, neutron) avoids dependency
clashes. The cache directory is keyed by the pins, the lock files and the Python version, so
changing a pin installs afresh and a second run on the same machine installs nothing.

    python -m tests.cloud.install [--freeze]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements"
CACHE_ROOT = Path(os.environ.get("BAKERY_CLOUD_CACHE", "/var/cache/bakery-test/openstack"))
VENVS = ("keystone", "glance", "nova", "neutron")
UV_VERSION = "0.13.8"
MARKER = ".bakery-complete"


def base_python() -> str:
    """The interpreter the project's venv was made from (venvs of venvs break on moves)."""
    exe = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(exe if exe.exists() else sys.executable)


def cache_key() -> str:
    digest = hashlib.sha256()
    digest.update(f"{sys.version_info[:3]} uv {UV_VERSION} compiled".encode())
    for path in sorted(REQUIREMENTS.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def venv_root() -> Path:
    return CACHE_ROOT / cache_key()


def venv(name: str) -> Path:
    return venv_root() / name


def is_installed() -> bool:
    return all((venv(name) / MARKER).exists() for name in VENVS)


def _uv() -> Path:
    tool = CACHE_ROOT / f"uv-{UV_VERSION}"
    uv = tool / "bin" / "uv"
    if not uv.exists():
        subprocess.run([base_python(), "-m", "venv", str(tool)], check=True)
        subprocess.run(
            [str(tool / "bin" / "pip"), "install", "--quiet", f"uv=={UV_VERSION}"], check=True
        )
    return uv


def _install_one(uv: Path, name: str) -> float:
    start = time.monotonic()
    target = venv(name)
    if (target / MARKER).exists():
        return 0.0
    shutil.rmtree(target, ignore_errors=True)
    env = dict(os.environ, UV_CACHE_DIR=str(CACHE_ROOT / "uv-cache"), UV_NO_PROGRESS="1")
    subprocess.run(
        [str(uv), "venv", "--quiet", "--seed", "--python", base_python(), str(target)],
        check=True,
        env=env,
    )
    # Bytecode at install time: the services start many Python processes, and with
    # PYTHONDONTWRITEBYTECODE set (as on these machines) each would compile Nova from source.
    cmd = [str(uv), "pip", "install", "--quiet", "--compile-bytecode"]
    cmd += ["--python", str(target / "bin" / "python")]
    cmd += ["-r", str(REQUIREMENTS / f"{name}.txt")]
    lock = REQUIREMENTS / f"{name}.lock"
    if lock.exists():
        cmd += ["-c", str(lock)]
    subprocess.run(cmd, check=True, env=env)
    (target / MARKER).write_text(f"{cache_key()}\n")
    return time.monotonic() - start


def install() -> None:
    if is_installed():
        print(f"cloud install: cached venvs in {venv_root()} (nothing to do)")
        return
    start = time.monotonic()
    venv_root().mkdir(parents=True, exist_ok=True)
    uv = _uv()
    with ThreadPoolExecutor(max_workers=len(VENVS)) as pool:
        took = dict(zip(VENVS, pool.map(lambda n: _install_one(uv, n), VENVS), strict=True))
    parts = ", ".join(f"{name} {secs:.0f} s" for name, secs in took.items())
    print(f"cloud install: {time.monotonic() - start:.0f} s into {venv_root()} ({parts})")


def freeze() -> None:
    """Write the exact versions of each venv to requirements/<name>.lock (used as constraints)."""
    uv = _uv()
    venvs = {name: venv(name) for name in VENVS}  # before a lock file changes the key
    frozen = {
        name: subprocess.run(
            [str(uv), "pip", "freeze", "--python", str(path / "bin" / "python")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for name, path in venvs.items()
    }
    for name, text in frozen.items():
        # Our plugins' own metadata (plugins.py) is no package to pin.
        pins = [line for line in text.splitlines(True) if not line.startswith("bakery-")]
        (REQUIREMENTS / f"{name}.lock").write_text("".join(pins))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--freeze", action="store_true", help="write lock files from the venvs")
    args = parser.parse_args()
    if args.freeze:
        freeze()
    else:
        install()
        from . import schema  # imports this module

        schema.ensure({name: venv(name) for name in VENVS})


if __name__ == "__main__":
    main()
