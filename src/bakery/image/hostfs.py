"""Host file-system work of a local build: chroot mounts, overlays, files swapped in for the
build, loop devices, and finding what is left. Each resource is registered with a Cleanup the
moment it exists.

Commands run through `run` (default `run_command`; the builder passes its own, which logs),
so a failed or hung mount, umount or losetup is a CommandError like any build command."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat as stat_mod
from collections.abc import Callable, Iterator
from pathlib import Path

from ..cleanup import Cleanup, ReleaseError
from .commands import CommandError, RunCommand, run_command


@contextlib.contextmanager
def chroot_mounts(tree: Path, cleanup: Cleanup, run: RunCommand = run_command) -> Iterator[None]:
    """/proc, /sys, /dev, /dev/pts, tmpfs /run in `tree`; resolv.conf, policy-rc.d and the CA
    bundle swapped in.

    Everything is registered with `cleanup` as soon as it exists and released on leaving.
    """
    with cleanup.scope():
        for target, command in [
            ("proc", ["mount", "-t", "proc", "proc"]),
            ("sys", ["mount", "-t", "sysfs", "-o", "ro", "sysfs"]),
            ("dev", ["mount", "--bind", "/dev"]),
            ("dev/pts", ["mount", "--bind", "/dev/pts"]),
            ("run", ["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs"]),
        ]:
            path = tree / target
            path.mkdir(parents=True, exist_ok=True)
            run([*command, str(path)], timeout=30)
            cleanup.push(f"mount {path} (umount {path})", lambda p=path: umount(p, run))
        swap_file(tree / "etc/resolv.conf", Path("/etc/resolv.conf").read_bytes(), 0o644, cleanup)
        swap_file(tree / "usr/sbin/policy-rc.d", b"#!/bin/sh\nexit 101\n", 0o755, cleanup)
        # The build host's trust, for the build only: where a proxy inspects TLS, its CA is in
        # the host's bundle, not in the image's (which is restored afterwards).
        host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        if host_bundle.is_file():
            swap_file(
                tree / "etc/ssl/certs/ca-certificates.crt", host_bundle.read_bytes(), 0o644, cleanup
            )
        yield


@contextlib.contextmanager
def overlay(
    lower: Path, workdir: Path, cleanup: Cleanup, run: RunCommand = run_command
) -> Iterator[tuple[Path, Path]]:
    """A writable copy-on-write view of `lower`; yields (merged, upper). `lower` stays as is."""
    upper, work, merged = workdir / "upper", workdir / "work", workdir / "merged"
    for path in (upper, work, merged):
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], timeout=30)
    cleanup.push(f"overlay {merged} (umount {merged})", lambda: umount(merged, run))
    yield merged, upper


def overlay_changes(lower: Path, upper: Path, merged: Path) -> list[str]:
    """What an overlay's upper layer changed compared with `lower`, ignoring times.

    Only what was written lands in `upper`, so only those paths need comparing: content
    (SHA-256), type, mode, owner, link target. A whiteout is a deletion.
    """
    changes = []
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            relative = path.relative_to(upper)
            st = path.lstat()
            if stat_mod.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                changes.append(f"deleted /{relative}")
                continue
            before = describe(lower / relative)
            after = describe(merged / relative)
            if before != after:
                changes.append(f"changed /{relative}: {before} -> {after}")
    return sorted(changes)


def describe(path: Path) -> tuple | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    kind = stat_mod.S_IFMT(st.st_mode)
    detail: object = None
    if stat_mod.S_ISLNK(st.st_mode):
        detail = os.readlink(path)
    elif stat_mod.S_ISREG(st.st_mode):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        detail = digest.hexdigest()
    elif stat_mod.S_ISCHR(st.st_mode) or stat_mod.S_ISBLK(st.st_mode):
        detail = st.st_rdev
    return (kind, stat_mod.S_IMODE(st.st_mode), st.st_uid, st.st_gid, detail)


def swap_file(path: Path, content: bytes, mode: int, cleanup: Cleanup) -> None:
    """Put a build-time file in place of `path`; restore the original (file or link) later."""
    saved = path.with_name(path.name + ".bakery-saved")
    existed = path.is_symlink() or path.exists()
    if existed:
        os.rename(path, saved)

    def restore() -> None:
        if path.is_symlink() or path.exists():
            path.unlink()
        if existed:
            os.rename(saved, path)

    cleanup.push(f"restore {path}", restore)
    path.write_bytes(content)
    path.chmod(mode)


def umount(path: Path, run: RunCommand = run_command) -> None:
    try:
        run(["umount", str(path)], timeout=60)
    except CommandError as error:
        # Mostly busy: detach lazily so nothing stays visible, and say so.
        run(["umount", "-l", str(path)], timeout=60)
        reason = " ".join(error.tail) or error.problem
        raise ReleaseError(
            f"{path} could not be unmounted and was detached lazily: {reason}"
        ) from None


def detach(loop: str, run: RunCommand = run_command) -> None:
    run(["losetup", "-d", loop], timeout=60)


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def kill_processes_in(tree: Path, log: Callable[[str], None]) -> None:
    """Processes left running inside the chroot (gpg-agent, dirmngr, …) would pin mounts."""
    root = str(tree.resolve())
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            if os.readlink(pid_dir / "root") == root:
                log(f"killing leftover process {pid_dir.name} in {root}")
                os.kill(int(pid_dir.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue
