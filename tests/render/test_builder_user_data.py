"""The cloud builder's user-data, read back by cloud-init itself and unpacked as the VM would."""

from __future__ import annotations

import base64
import io
import subprocess
import tarfile

import pytest
import yaml

from bakery.checks import parse_envfile
from bakery.image.builderdata import builder_user_data, write_files_into
from bakery.image.definition import load_definition
from tests.render.validators import cloud_init_schema

BUILD_ID = "postgresql14-patroni-20261126T000000Z-0123abcd"


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_builder_user_data_is_valid_cloud_config_with_the_whole_staging(tmp_path, arch):
    loaded = load_definition("postgresql14-patroni")
    user_data = builder_user_data(loaded, BUILD_ID, arch)
    path = tmp_path / "user-data"
    path.write_text(user_data.text)
    assert cloud_init_schema(path).startswith("Valid cloud-config")

    files = {f["path"]: f for f in yaml.safe_load(user_data.text)["write_files"]}
    assert {f["permissions"] for f in files.values()} <= {"0600", "0700"}
    env = parse_envfile(files["/run/bakery/build.env"]["content"])
    assert env == user_data.env
    assert env["BAKERY_BUILD_ID"] == BUILD_ID
    assert env["BAKERY_CONSUL_SHA256"] == loaded.definition.components.consul.sha256[arch]
    tarball = base64.b64decode(files["/run/bakery/elements.tar.gz"]["content"])
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        names = set(tar.getnames())
    expected = {"run-elements", "patroni.lock", "bin/install-pinned"}
    expected |= {f"{element}/README.md" for element in loaded.elements()}
    assert expected <= names
    # The runner gets the build id and the elements, in the definition's order.
    (runcmd,) = yaml.safe_load(user_data.text)["runcmd"]
    assert runcmd == ["bash", "/run/bakery/builder-run", "--build-id", BUILD_ID, *loaded.elements()]


_CLOUD_INIT_WRITE_FILES = """
import sys, yaml
from cloudinit.config.cc_write_files import write_files
root, user_data = sys.argv[1], open(sys.argv[2]).read()
files = yaml.safe_load(user_data)["write_files"]
for entry in files:
    entry["path"] = root + entry["path"]
write_files("write_files", files, "root:root")
"""


def test_the_local_bake_writes_the_builder_files_as_cloud_init_does(tmp_path):
    """The local bake runs the builder's payload through `write_files_into`; the VM's
    cloud-init writes it with its own module. Both must give the same bytes and modes."""
    user_data = builder_user_data(load_definition("local-test"), BUILD_ID, "amd64")
    (tmp_path / "user-data").write_text(user_data.text)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    write_files_into(user_data.text, ours)
    subprocess.run(
        [
            "/usr/bin/python3",
            "-c",
            _CLOUD_INIT_WRITE_FILES,
            str(theirs),
            str(tmp_path / "user-data"),
        ],
        check=True,
        timeout=60,
    )

    def files(root):
        return {
            p.relative_to(root): (p.read_bytes(), p.stat().st_mode & 0o7777)
            for p in root.rglob("*")
            if p.is_file()
        }

    assert files(ours) == files(theirs)
    assert len(files(ours)) == 3
