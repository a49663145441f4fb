"""Elements run again on the built tree, through an overlay so the build stays untouched:
a second run changes nothing, and the Consul element verifies its artifact or fails closed."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import BUILD_ROOT, FIGURES

from bakery import localbuild
from bakery.imagedef import IMAGES_DIR, load_definition

pytestmark = pytest.mark.slow
CONSUL_VERSION = "1.20.2"


def test_second_run_of_the_elements_changes_nothing(built):
    import time

    start = time.monotonic()
    changes = localbuild.rerun_elements(
        BUILD_ROOT / "local-test", IMAGES_DIR / "local-test.yaml", BUILD_ROOT / "rerun"
    )
    FIGURES["second run of the elements"] = (
        f"{time.monotonic() - start:.0f} s, {len(changes)} changes"
    )
    assert changes == [], "\n".join(changes)
    assert not localbuild._mounts_under(BUILD_ROOT)


def fake_consul_zip(directory: Path) -> Path:
    """A stand-in release zip (Consul cannot be downloaded here): a `consul` that reports its
    version like the real one."""
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        info = zipfile.ZipInfo("consul")
        info.external_attr = 0o755 << 16
        z.writestr(info, f'#!/bin/sh\necho "Consul v{CONSUL_VERSION}"\necho "Revision fake"\n')
    path = directory / f"consul_{CONSUL_VERSION}_linux_amd64.zip"
    path.write_bytes(buffer.getvalue())
    return path


def consul_definition(tmp_path: Path, artifacts: Path, sha256: str) -> Path:
    """local-test plus Consul taken from an offline artifacts directory."""
    raw = yaml.safe_load((IMAGES_DIR / "local-test.yaml").read_text())
    raw["name"] = "consul-test"
    raw["components"]["patroni"]["lock"] = str(IMAGES_DIR / raw["components"]["patroni"]["lock"])
    raw["components"]["consul"] = {
        "version": CONSUL_VERSION,
        "sha256": {"amd64": sha256},
        "artifacts_dir": str(artifacts),
    }
    path = tmp_path / "consul-test.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_wrong_consul_checksum_fails_the_build_before_any_work(tmp_path):
    artifact = fake_consul_zip(tmp_path / "artifacts")
    wrong = "0" * 64
    definition = consul_definition(tmp_path, artifact.parent, wrong)
    with pytest.raises(localbuild.BuildError) as caught:
        localbuild.build(definition, tmp_path / "out", use_cache=False, echo=False)
    message = str(caught.value)
    assert "consul: SHA-256 MISMATCH" in message
    assert f"expected {wrong}" in message
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() in message
    assert not (tmp_path / "out" / "tree").exists()


def run_consul_element(built, tmp_path: Path, sha256: str, artifacts: Path) -> list[str]:
    """Run the base/consul elements in an overlay of the built tree; return the changes."""
    loaded = load_definition(consul_definition(tmp_path, artifacts, sha256))
    builder = localbuild.Builder(loaded, tmp_path / "work", cache_dir=None, echo=False)
    builder.out.mkdir(parents=True)
    with open(builder.log_path, "w") as builder._log_file:
        cleanup = localbuild.Cleanup(builder.log)
        try:
            with localbuild.overlay(built.tree, tmp_path / "overlay", cleanup) as (merged, upper):
                builder.run_elements(merged, ["consul"], cleanup)
                return localbuild.overlay_changes(built.tree, upper, merged)
        finally:
            cleanup.run()
            assert not cleanup.leftovers


def test_consul_element_installs_a_verified_artifact(built, tmp_path):
    artifact = fake_consul_zip(tmp_path / "artifacts")
    good = hashlib.sha256(artifact.read_bytes()).hexdigest()
    changes = run_consul_element(built, tmp_path, good, artifact.parent)
    joined = "\n".join(changes)
    assert "changed /usr/local/bin/consul: None -> " in joined
    assert "changed /etc/consul.d: None -> " in joined
    assert "changed /opt/consul: None -> " in joined
    log = (tmp_path / "work" / "build.log").read_text()
    assert f"consul: installed {CONSUL_VERSION} from /run/bakery/consul-artifacts/" in log


def test_consul_element_fails_closed_on_a_checksum_mismatch(built, tmp_path):
    artifact = fake_consul_zip(tmp_path / "artifacts")
    wrong = "f" * 64
    with pytest.raises(localbuild.BuildError) as caught:
        run_consul_element(built, tmp_path, wrong, artifact.parent)
    log = (tmp_path / "work" / "build.log").read_text()
    assert "consul: SHA-256 MISMATCH for /run/bakery/consul-artifacts/" in log
    assert f"expected {wrong}, got {hashlib.sha256(artifact.read_bytes()).hexdigest()}" in log
    assert "refusing to install it" in log
    assert "FAILED consul/24-install-consul.sh" in str(caught.value) or "FAILED" in log
    assert not localbuild._mounts_under(tmp_path)
