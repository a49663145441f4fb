"""cloud-init/builder-run.sh, run for real by bash on a small staging: whatever happens, one
BAKERY-RESULT line reaches the console."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

from bakery.image.manifest import last_result
from tests.helpers import PROJECT

RUNNER = PROJECT / "cloud-init/builder-run.sh"


def _stage(tmp: Path, script: str) -> Path:
    """A staging like the builder's: elements.tar.gz (the real run-elements and one element
    'hello' running `script`) and a build.env."""
    staging = tmp / "run-bakery"
    staging.mkdir()
    manifest = tmp / "manifest.json"
    manifest.write_text(json.dumps({"image": "hello"}))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(PROJECT / "scripts/run-elements", arcname="run-elements")
        for name, text in {
            "hello/10-say-hello.sh": script,
            "hello/environment": "BAKERY_GREETING\n",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (staging / "elements.tar.gz").write_bytes(buffer.getvalue())
    (staging / "build.env").write_text(
        f"BAKERY_BUILD_ID=b-1\nBAKERY_GREETING=hi\nBAKERY_MANIFEST_PATH={manifest}\n"
    )
    return staging


def _run(staging: Path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    console = staging / "console"
    console.touch()
    result = subprocess.run(
        ["bash", str(RUNNER), "--dir", str(staging), "--console", str(console), "--no-poweroff"]
        + list(args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, console.read_text()


def test_a_good_build_reports_ok_with_the_manifest(tmp_path):
    staging = _stage(tmp_path, 'echo "greeting=$BAKERY_GREETING"\n')
    result, console = _run(staging, "--build-id", "b-1", "hello")
    assert result.returncode == 0
    assert "greeting=hi" in result.stdout
    assert console.count("BAKERY-RESULT") == 1
    assert last_result(console) == {
        "status": "ok",
        "build_id": "b-1",
        "manifest": {"image": "hello"},
    }


def test_a_failing_element_is_reported_with_its_script(tmp_path):
    staging = _stage(tmp_path, "exit 7\n")
    _, console = _run(staging, "--build-id", "b-1", "hello")
    result = last_result(console)
    assert result["status"] == "failed"
    assert (result["element"], result["script"]) == ("hello", "10-say-hello.sh")


def test_a_missing_tarball_or_bad_arguments_still_give_one_result_line(tmp_path):
    staging = _stage(tmp_path, "true\n")
    (staging / "elements.tar.gz").write_bytes(b"not a tarball")
    _, console = _run(staging, "--build-id", "b-1", "hello")
    assert last_result(console)["error"].startswith("could not unpack")

    (tmp_path / "other").mkdir()
    fresh = _stage(tmp_path / "other", "true\n")
    _, console = _run(fresh, "--build-id", "b-1; rm -rf /", "hello")
    failed = {"status": "failed", "build_id": "unknown", "manifest": None}
    assert last_result(console) == {**failed, "error": "bad or missing --build-id"}
    _, console = _run(fresh, "--build-id", "b-1")
    assert last_result(console)["error"] == "no elements given"
    _, console = _run(fresh, "hello", "--build-id")  # set -u must not end it without a line
    assert last_result(console) == {**failed, "error": "option --build-id needs a value"}
