"""Build a golden image on this machine: a bootable raw disk and its qcow2.

The host kernel here has no device-mapper, nbd or partition-table support, so the disk is made
without any of them (see images/README.md):

1. mmdebstrap a Debian base (kernel, systemd, cloud-init, ssh, …) into a tarball, cached
   outside the work tree, keyed by its inputs; unpack it into ``OUT/tree``;
2. run the definition's elements in the tree with ``scripts/run-elements`` through chroot, with
   /proc, /sys, /dev, /dev/pts and a tmpfs /run mounted (always unmounted again);
3. ``mkfs.ext4 -d`` the tree straight into the partition's place inside the raw disk file,
   ``sfdisk`` one bootable partition, syslinux's MBR code, ``extlinux --install`` through a loop
   device (always detached); ``qemu-img convert`` to qcow2.

Every resource a step creates (mounts, loop devices, files swapped in the tree, processes) is
recorded when created and released in reverse order whatever happens, Ctrl-C and SIGTERM
included; a release that fails is reported with what to remove by hand and never hides the
first error. Every command runs through `bakery.commands.run_command`: its own process group,
killed whole however it ends, and a CommandError (a BuildError) for any failure or timeout.

    python -m bakery.image.localbuild --definition images/local-test.yaml --out build/local-test
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ..cleanup import Cleanup, Terminated, interrupt_on_sigterm, shielded_from_interrupts
from ..errors import BakeryError, BuildError
from .builderdata import (
    STAGING,
    builder_user_data,
    stage_elements,
    staged_element_env,
    write_files_into,
)
from .commands import CommandError, run_command
from .definition import LoadedDefinition, load_definition
from .hostfs import (
    chroot_mounts,
    detach,
    kill_processes_in,
    mounts_under,
    overlay,
    overlay_changes,
    umount,
)
from .manifest import last_result, manifest_problems

ROOT_LABEL = "bakery-root"
PARTITION_OFFSET = 1024 * 1024
# What a distribution cloud image brings before any element runs: the local stand-in for the
# cloud's base image (kernel, init, cloud-init, ssh, a network stack cloud-init can render to).
BASE_PACKAGES = [
    "systemd-sysv",
    "udev",
    "kmod",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "cloud-init",
    "openssh-server",
    "systemd-resolved",
    "sudo",
    "ca-certificates",
    "iproute2",
    "netbase",
    "curl",
    "python3",
]
# As the base element configures for later installs: no manuals, docs or translations.
DPKG_EXCLUDES = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
]
BASE_CACHE_MAX_AGE = dt.timedelta(days=7)
HOST_TOOLS = ["mmdebstrap", "chroot", "mkfs.ext4", "sfdisk", "losetup", "extlinux", "qemu-img"]
MBR_CANDIDATES = [Path("/usr/lib/syslinux/mbr/mbr.bin"), Path("/usr/lib/EXTLINUX/mbr.bin")]


PATH_FIELDS = ("raw", "qcow2", "tree", "log")


@dataclass
class BuildResult:
    definition: str
    build_id: str
    inputs_hash: str
    raw: Path
    qcow2: Path
    tree: Path | None
    log: Path
    manifest: dict
    timings: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        data = asdict(self)
        for key in PATH_FIELDS:
            data[key] = str(data[key]) if data[key] is not None else None
        return data


def load_result(out: Path) -> BuildResult:
    """The finished build in `out` (what `invoke bake --target local` wrote there)."""
    path = out / "build.json"
    try:
        data = json.loads(path.read_text())
        paths = {key: Path(data[key]) if data[key] is not None else None for key in PATH_FIELDS}
        return BuildResult(**{**data, **paths})
    except FileNotFoundError:
        raise BuildError(
            f"{out}: no finished local build (no build.json): run `invoke bake --target local`"
        ) from None
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise BuildError(f"{path}: unreadable ({error}); bake again") from None


def _now() -> float:
    return time.monotonic()


class Builder:
    def __init__(
        self,
        loaded: LoadedDefinition,
        out: Path,
        cache_dir: Path | None,
        disk_gib: int = 3,
        keep_tree: bool = True,
        echo: bool = True,
        elements_timeout: int = 1800,
    ):
        self.loaded = loaded
        self.out = out.resolve()
        self.cache_dir = cache_dir
        self.disk_gib = disk_gib
        self.keep_tree = keep_tree
        self.echo = echo
        self.elements_timeout = elements_timeout
        self.tree = self.out / "tree"
        self.log_path = self.out / "build.log"
        self.timings: dict[str, float] = {}
        self.arch = _host_arch()
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.inputs_hash = loaded.inputs_hash()
        self.build_id = f"{loaded.name}-{stamp}-{self.inputs_hash[:8]}"
        self._log_file = None

    # -- logging and commands ---------------------------------------------------------------
    def log(self, message: str) -> None:
        line = f"[localbuild] {message}"
        if self.echo:
            print(line, flush=True)
        if self._log_file:
            self._log_file.write(line + "\n")
            self._log_file.flush()

    def run(
        self,
        command: Sequence[str],
        timeout: float = 600,
        capture: bool = False,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
    ) -> str:
        """Run a command of the build, its output logged (and echoed unless `capture`);
        raise CommandError if it cannot start, fails or times out."""
        self.log("$ " + shlex.join(command))

        def output_line(line: str) -> None:
            if self._log_file:
                self._log_file.write(line)
                self._log_file.flush()
            if self.echo and not capture:
                sys.stdout.write(line)

        try:
            return run_command(
                command,
                timeout=timeout,
                on_line=output_line,
                log_path=self.log_path,
                env=env,
                stdin=stdin,
            )
        except CommandError as error:
            self.log(f"{shlex.join(command[:1])}: {error.problem}")
            raise

    # -- the build --------------------------------------------------------------------------
    def build(self) -> BuildResult:
        self.out.mkdir(parents=True, exist_ok=True)
        started = _now()
        with open(self.log_path, "w") as self._log_file, interrupt_on_sigterm():
            self.log(f"build {self.build_id} of {self.loaded.path} into {self.out}")
            self._preflight()
            cleanup = Cleanup(self.log)
            try:
                with self._timed("base"):
                    tarball = self._base_tarball()
                    self._unpack(tarball)
                with self._timed("elements"):
                    if self.loaded.consul_artifacts_dir is None:
                        result_line = self.run_as_cloud_builder(cleanup)
                    else:  # offline Consul artifacts are staged from the host
                        result_line = self.run_elements(self.tree, self.loaded.elements(), cleanup)
                manifest = result_line.get("manifest")
                if problems := manifest_problems(self.loaded, self.build_id, manifest):
                    raise BuildError("the image's manifest does not match: " + "; ".join(problems))
                cleanup.run()
                self._check_clean_tree()
                with self._timed("disk"):
                    raw, qcow2 = self._assemble(cleanup)
                cleanup.run()
            finally:
                with shielded_from_interrupts():
                    cleanup.run()
                if cleanup.leftovers:
                    self.log("left behind, remove by hand: " + "; ".join(cleanup.leftovers))
            manifest = result_line.get("manifest") or {}
            if not self.keep_tree:
                shutil.rmtree(self.tree)
            self.timings["total"] = round(_now() - started, 1)
            result = BuildResult(
                definition=self.loaded.name,
                build_id=self.build_id,
                inputs_hash=self.inputs_hash,
                raw=raw,
                qcow2=qcow2,
                tree=self.tree if self.keep_tree else None,
                log=self.log_path,
                manifest=manifest,
                timings=self.timings,
                sizes=_sizes(raw, qcow2),
            )
            (self.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            (self.out / "build.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
            self.log(f"done in {self.timings['total']} s: {raw} {qcow2} {result.sizes}")
            return result

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        start = _now()
        try:
            yield
        finally:
            self.timings[name] = round(_now() - start, 1)
            self.log(f"{name}: {self.timings[name]} s")

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise BuildError("the local build needs root (chroot, mounts, loop devices)")
        missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
        if missing:
            raise BuildError(
                f"missing host tools: {', '.join(missing)} (dev/install-build-tools installs them)"
            )
        if self.arch not in self.loaded.definition.base.architectures:
            raise BuildError(
                f"definition {self.loaded.name} does not list architecture {self.arch}"
            )
        consul = self.loaded.definition.components.consul
        if consul is not None and self.loaded.consul_artifacts_dir is not None:
            # Fail before minutes of work; the consul element checks again, fail-closed.
            zip_name = f"consul_{consul.version}_linux_{self.arch}.zip"
            artifact = self.loaded.consul_artifacts_dir / zip_name
            if not artifact.is_file():
                raise BuildError(f"consul: offline artifact {artifact} not found")
            got = hashlib.sha256(artifact.read_bytes()).hexdigest()
            want = consul.sha256[self.arch]  # type: ignore[index]
            if got != want:
                raise BuildError(
                    f"consul: SHA-256 MISMATCH for {artifact}: expected {want}, got {got}; "
                    "refusing to build (fix components.consul.sha256 or the artifact)"
                )
        if mounts_under(self.tree):
            raise BuildError(
                f"{self.tree} has mounts from an earlier build: {mounts_under(self.tree)}"
            )

    # -- base -------------------------------------------------------------------------------
    def _mmdebstrap_args(self) -> tuple[list[str], str, list[str]]:
        """Options, suite and mirrors: `mmdebstrap OPTIONS SUITE TARGET MIRRORS`."""
        base = self.loaded.definition.base
        suite = base.codename
        mirrors = [
            f"deb {base.mirror} {suite} main",
            f"deb {base.mirror} {suite}-updates main",
        ]
        if base.security_mirror:
            mirrors.append(f"deb {base.security_mirror} {suite}-security main")
        options = [
            "--variant=minbase",
            "--format=tar",
            f"--architectures={self.arch}",
            "--include=" + ",".join(BASE_PACKAGES),
            *(f"--dpkgopt={rule}" for rule in DPKG_EXCLUDES),
            # What a cloud image enables: networkd, which cloud-init renders the network to.
            '--customize-hook=chroot "$1" systemctl enable systemd-networkd.service',
        ]
        return options, suite, mirrors

    def _base_tarball(self) -> Path:
        options, suite, mirrors = self._mmdebstrap_args()
        key = hashlib.sha256(json.dumps([options, suite, mirrors]).encode()).hexdigest()[:16]
        if self.cache_dir is None:
            target = self.out / f"base-{suite}-{key}.tar"
        else:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            target = self.cache_dir / f"base-{suite}-{key}.tar"
        if target.exists():
            age = dt.datetime.now() - dt.datetime.fromtimestamp(target.stat().st_mtime)
            if self.cache_dir is not None and age < BASE_CACHE_MAX_AGE:
                self.log(f"base: cached {target} ({int(age.total_seconds())} s old)")
                return target
            target.unlink()
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        try:
            self.run(["mmdebstrap", *options, suite, str(partial), *mirrors], timeout=900)
            partial.rename(target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def _unpack(self, tarball: Path) -> None:
        if self.tree.exists():
            shutil.rmtree(self.tree)
        self.tree.mkdir(parents=True)
        self.run(
            [
                "tar",
                "-xpf",
                str(tarball),
                "-C",
                str(self.tree),
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
            ],
            timeout=600,
        )

    # -- elements ---------------------------------------------------------------------------
    def element_env(self, tree_has_artifacts: bool) -> dict[str, str]:
        return staged_element_env(self.loaded, self.arch, self.build_id, tree_has_artifacts)

    def run_as_cloud_builder(self, cleanup: Cleanup) -> dict:
        """Run the elements as a cloud builder VM does: the files of the builder's user-data
        written into the tree's /run/bakery, then its builder-run (without the power-off)."""
        user_data = builder_user_data(self.loaded, self.build_id, self.arch)
        with chroot_mounts(self.tree, cleanup, self.run):  # /run is a fresh tmpfs in there
            write_files_into(user_data.text, self.tree)
            (self.out / "elements.env").write_text(
                "".join(f"{k}={v}\n" for k, v in user_data.env.items())
            )
            (runner,) = yaml.safe_load(user_data.text)["runcmd"]
            command = ["chroot", str(self.tree), *runner, "--no-poweroff", "--console", "/dev/null"]
            return self._run_in_tree(command)

    def run_elements(
        self,
        tree: Path,
        elements: list[str],
        cleanup: Cleanup,
        env: dict[str, str] | None = None,
        extra: Path | None = None,
    ) -> dict:
        """Run elements in `tree` through chroot; return the BAKERY-RESULT object.

        `extra`, a host directory, is staged at /run/bakery/extra (tests use it for local
        repositories and artifacts)."""
        has_artifacts = self.loaded.consul_artifacts_dir is not None
        env = env if env is not None else self.element_env(has_artifacts)
        with chroot_mounts(tree, cleanup, self.run):
            stage_elements(
                self.loaded,
                elements,
                tree / STAGING.lstrip("/"),
                env,
                consul_artifacts=self.loaded.consul_artifacts_dir if has_artifacts else None,
                extra=extra,
            )
            (self.out / "elements.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
            command = [
                "chroot",
                str(tree),
                "/bin/bash",
                f"{STAGING}/run-elements",
                "--env-file",
                f"{STAGING}/build.env",
                *elements,
            ]
            return self._run_in_tree(command, tree)

    def _run_in_tree(self, command: list[str], tree: Path | None = None) -> dict:
        """Run a chroot command with a clean environment; return its BAKERY-RESULT object."""
        tree = tree or self.tree
        clean_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        if os.environ.get("BAKERY_DEBUG_TRACE"):
            clean_env["BAKERY_DEBUG_TRACE"] = os.environ["BAKERY_DEBUG_TRACE"]
        try:
            output = self.run(command, timeout=self.elements_timeout, env=clean_env)
        except BuildError as error:
            raise BuildError(f"elements failed in {tree}: {error}") from None
        finally:
            kill_processes_in(tree, self.log)
        return _result_line(output)

    def _check_clean_tree(self) -> None:
        leftovers = (
            [p.name for p in (self.tree / "run").iterdir()] if (self.tree / "run").exists() else []
        )
        if mounts_under(self.tree):
            raise BuildError(f"mounts left under {self.tree}: {mounts_under(self.tree)}")
        if leftovers:
            self.log(f"note: {self.tree}/run holds {leftovers} (from the base)")

    # -- disk -------------------------------------------------------------------------------
    def _assemble(self, cleanup: Cleanup) -> tuple[Path, Path]:
        kernels = sorted((self.tree / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise BuildError(f"no kernel in {self.tree}/boot")
        version = kernels[-1].name.removeprefix("vmlinuz-")
        (self.tree / "boot/extlinux").mkdir(exist_ok=True)
        (self.tree / "boot/extlinux/extlinux.conf").write_text(
            "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\n"
            "LABEL linux\n"
            f"  LINUX /boot/vmlinuz-{version}\n"
            f"  INITRD /boot/initrd.img-{version}\n"
            f"  APPEND root=LABEL={ROOT_LABEL} ro console=tty0 console=ttyS0,115200n8\n"
        )
        (self.tree / "etc/fstab").write_text(
            f"LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1\n"
        )
        name = self.loaded.name
        raw = self.out / f"{name}.raw"
        qcow2 = self.out / f"{name}.qcow2"
        for path in (raw, qcow2):
            path.unlink(missing_ok=True)
        size = self.disk_gib * 1024**3
        with open(raw, "wb") as f:
            f.truncate(size)
        fs_bytes = size - PARTITION_OFFSET
        # The filesystem goes straight into the partition's place: no copy, no partition device.
        self.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                ROOT_LABEL,
                "-O",
                "^64bit,^metadata_csum_seed",
                "-E",
                f"offset={PARTITION_OFFSET}",
                "-d",
                str(self.tree),
                str(raw),
                f"{fs_bytes // 1024}k",
            ],
            timeout=900,
        )
        self._sfdisk(raw)
        mbr = next((p for p in MBR_CANDIDATES if p.exists()), None)
        if mbr is None:
            raise BuildError("syslinux mbr.bin not found (install syslinux-common)")
        with open(raw, "r+b") as f:
            f.write(mbr.read_bytes()[:440])
        # Unmounted and detached before the copy: a qcow2 of a mounted file system is unclean.
        with cleanup.scope():
            self._install_extlinux(raw, fs_bytes, cleanup)
        self.run(["qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(qcow2)], timeout=900)
        return raw, qcow2

    def _sfdisk(self, raw: Path) -> None:
        script = f"label: dos\nstart={PARTITION_OFFSET // 512}, type=83, bootable\n"
        self.log(f"sfdisk script: {script!r}")
        self.run(
            ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(raw)], timeout=60, stdin=script
        )

    def _install_extlinux(self, raw: Path, fs_bytes: int, cleanup: Cleanup) -> None:
        loop = self.run(
            [
                "losetup",
                "--find",
                "--show",
                "--offset",
                str(PARTITION_OFFSET),
                "--sizelimit",
                str(fs_bytes),
                str(raw),
            ],
            capture=True,
            timeout=60,
        ).strip()
        cleanup.push(f"loop device {loop} (losetup -d {loop})", lambda: detach(loop, self.run))
        mnt = self.out / "mnt"
        mnt.mkdir(exist_ok=True)
        self.run(["mount", loop, str(mnt)], timeout=60)
        cleanup.push(f"mount {mnt} (umount {mnt})", lambda: umount(mnt, self.run))
        self.run(["extlinux", "--install", str(mnt / "boot/extlinux")], timeout=120)


def rerun_elements(build_dir: Path, definition: str | Path, workdir: Path) -> list[str]:
    """Run a finished build's elements a second time, with the same inputs, on an overlay of
    its tree, and return every difference from the tree as built (empty: idempotent)."""
    build_dir = build_dir.resolve()
    tree = build_dir / "tree"
    env = dict(
        line.split("=", 1) for line in (build_dir / "elements.env").read_text().splitlines() if line
    )
    loaded = load_definition(definition)
    builder = Builder(loaded, workdir, cache_dir=None, echo=False)
    workdir.mkdir(parents=True, exist_ok=True)
    builder.log_path = workdir / "rerun.log"  # what errors name as the full log
    with open(builder.log_path, "w") as builder._log_file:
        cleanup = Cleanup(builder.log)
        try:
            with overlay(tree, workdir, cleanup, builder.run) as (merged, upper):
                builder.run_elements(merged, loaded.elements(), cleanup, env=env)
                return overlay_changes(tree, upper, merged)
        finally:
            cleanup.run()
            if cleanup.leftovers:
                raise BuildError("could not release: " + "; ".join(cleanup.leftovers))


def _result_line(output: str) -> dict:
    result = last_result(output)
    if result is None:
        raise BuildError("run-elements printed no BAKERY-RESULT line")
    if result.get("status") != "ok":
        raise BuildError(f"elements reported {result}")
    return result


def _sizes(raw: Path, qcow2: Path) -> dict[str, int]:
    return {
        "raw_virtual": raw.stat().st_size,
        "raw_allocated": raw.stat().st_blocks * 512,
        "qcow2": qcow2.stat().st_size,
    }


def _host_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def default_cache_dir() -> Path:
    base = os.environ.get("BAKERY_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "bakery" if base else Path.home() / ".cache" / "bakery"


def build(
    definition: str | Path,
    out: Path,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    keep_tree: bool = True,
    echo: bool = True,
) -> BuildResult:
    """Build `definition` into `out`: the entry point for `invoke bake --target local`."""
    loaded = load_definition(definition)
    cache = (cache_dir or default_cache_dir()) / "base" if use_cache else None
    return Builder(loaded, out, cache, keep_tree=keep_tree, echo=echo).build()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bakery.image.localbuild", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--definition", required=True, help="images/<name>.yaml or a name")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--no-cache", action="store_true", help="mmdebstrap afresh, cache nothing")
    parser.add_argument("--drop-tree", action="store_true", help="remove OUT/tree afterwards")
    args = parser.parse_args(argv)
    try:
        result = build(
            args.definition, args.out, use_cache=not args.no_cache, keep_tree=not args.drop_tree
        )
    except BakeryError as error:
        print(f"bakery: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:
        how, code = ("terminated", 143) if isinstance(stop, Terminated) else ("interrupted", 130)
        print(f"bakery: {how}; mounts and loop devices were released", file=sys.stderr)
        return code
    print(json.dumps(result.to_json(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
