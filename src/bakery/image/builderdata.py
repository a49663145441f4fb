"""The user-data of a builder: what `invoke bake` boots from the cloud's base image, and what
the local bake runs in its tree the same way.

It carries the staging of `run-elements` (the runner, its helpers, the definition's elements,
the Patroni lock) as one gzipped tarball, the build's inputs as a plain `build.env` (readable in
the server's user-data: no secret is ever in it), and `cloud-init/builder-run.sh`, which
unpacks and runs the elements, prints the BAKERY-RESULT line to the console and powers the VM
off. The local bake writes these files into its tree (`write_files_into`) and runs
builder-run there without the power-off, so the cloud's payload is exercised on every local
bake.
"""

from __future__ import annotations

import base64
import gzip
import io
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import checks
from ..errors import BakeryError
from ..node.bundle import USER_DATA_LIMIT
from ..templating import make_environment, render
from .definition import BUILDER_RUNNER, SCRIPTS_DIR, LoadedDefinition

STAGING = "/run/bakery"  # tmpfs in the VM: nothing of the staging ends up in the snapshot


@dataclass(frozen=True)
class BuilderUserData:
    text: str
    env: dict[str, str]  # the elements' inputs, as build.env holds them

    @property
    def base64_size(self) -> int:
        return len(base64.b64encode(self.text.encode()))


def stage_elements(
    loaded: LoadedDefinition,
    elements: list[str],
    staging: Path,
    env: dict[str, str],
    consul_artifacts: Path | None = None,
    extra: Path | None = None,
) -> None:
    """Lay out what `run-elements` needs in `staging` (/run/bakery in the target): the runner,
    its helpers, the elements, the lock, optional artifacts, and build.env. The builder's
    user-data carries the same layout (build.env apart) as its tarball."""
    staging.mkdir(mode=0o700, parents=True)
    shutil.copy2(SCRIPTS_DIR / "run-elements", staging / "run-elements")
    shutil.copytree(SCRIPTS_DIR / "bin", staging / "bin")
    for element in elements:
        shutil.copytree(SCRIPTS_DIR / element, staging / element)
    shutil.copy2(loaded.lock_path, staging / "patroni.lock")
    if consul_artifacts is not None:
        shutil.copytree(consul_artifacts, staging / "consul-artifacts")
    if extra is not None:
        shutil.copytree(extra, staging / "extra")
    (staging / "build.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))


def staged_element_env(
    loaded: LoadedDefinition, arch: str, build_id: str, consul_artifacts: bool = False
) -> dict[str, str]:
    """The elements' inputs, with the paths of what `stage_elements` lays out in STAGING."""
    return loaded.element_env(
        arch,
        build_id,
        lock_in_target=f"{STAGING}/patroni.lock",
        consul_artifacts_in_target=f"{STAGING}/consul-artifacts" if consul_artifacts else None,
    )


def elements_tarball(loaded: LoadedDefinition, env: dict[str, str]) -> bytes:
    """The staging as a .tar.gz with fixed owners and times, so equal inputs give equal bytes."""
    with tempfile.TemporaryDirectory(prefix="bakery-stage-") as tmp:
        staging = Path(tmp) / "stage"
        stage_elements(loaded, loaded.elements(), staging, env)
        (staging / "build.env").unlink()  # travels as a file of its own

        def normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            return info

        buffer = io.BytesIO()
        # gzip's header carries a time too: fixed to 0 like the members'.
        with (
            gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0) as compressed,
            tarfile.open(fileobj=compressed, mode="w") as tar,
        ):
            for path in sorted(staging.rglob("*")):
                name = path.relative_to(staging).as_posix()
                tar.add(path, arcname=name, recursive=False, filter=normalized)
        return buffer.getvalue()


def builder_user_data(
    loaded: LoadedDefinition, build_id: str, arch: str, template_overrides: Path | None = None
) -> BuilderUserData:
    """Render and check the builder's user-data; refuse it when Nova would (size limit)."""
    consul = loaded.definition.components.consul
    if consul is not None and consul.url is None and loaded.consul_artifacts_dir is not None:
        raise BakeryError(
            f"image definition {loaded.name}: components.consul.artifacts_dir is for offline "
            "local builds; a cloud builder downloads Consul: remove artifacts_dir or set url"
        )
    env = staged_element_env(loaded, arch, build_id)
    tarball = elements_tarball(loaded, env)
    write_files = [
        {
            "path": f"{STAGING}/elements.tar.gz",
            "owner": "root:root",
            "permissions": "0600",
            "encoding": "b64",
            "content": base64.b64encode(tarball).decode(),
        },
        {
            "path": f"{STAGING}/build.env",
            "owner": "root:root",
            "permissions": "0600",
            "content": "".join(f"{key}={value}\n" for key, value in env.items()),
        },
        {
            "path": f"{STAGING}/builder-run",
            "owner": "root:root",
            "permissions": "0700",
            "content": BUILDER_RUNNER.read_text(),
        },
    ]
    # Through bash: /run is mounted noexec on Debian and Ubuntu.
    runcmd = [["bash", f"{STAGING}/builder-run", "--build-id", build_id, *loaded.elements()]]
    text = render(
        make_environment(template_overrides),
        "builder.yaml.j2",
        definition=loaded.name,
        build_id=build_id,
        write_files=write_files,
        runcmd=runcmd,
    )
    checks.check_user_data(text, write_files, runcmd)
    user_data = BuilderUserData(text, env)
    if user_data.base64_size > USER_DATA_LIMIT:
        raise BakeryError(
            f"image definition {loaded.name}: the builder's user-data is {user_data.base64_size} "
            f"bytes in base64, over Nova's limit of {USER_DATA_LIMIT}"
        )
    return user_data


def write_files_into(user_data: str, root: Path) -> list[Path]:
    """Write the builder user-data's files below `root` as cloud-init's write_files does in
    the VM (decoded, with their permissions; the local build runs as root, the owner). The
    render tier checks this against cloud-init's own module."""
    written = []
    for entry in yaml.safe_load(user_data)["write_files"]:
        path = Path(entry["path"])
        if not path.is_relative_to(STAGING):
            raise BakeryError(f"builder user-data writes {path}, outside {STAGING}")
        content = entry["content"].encode()
        if entry.get("encoding") == "b64":
            content = base64.b64decode(content)
        target = root / path.relative_to("/")
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(int(entry["permissions"], 8))
        written.append(target)
    return written
