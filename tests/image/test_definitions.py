"""Image definitions, element conventions and the element runner: fast, no build needed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bakery.image import definition as imagedef
from bakery.image.definition import (
    IMAGES_DIR,
    SCRIPTS_DIR,
    ImageDefinitionError,
    declared_inputs,
    load_definition,
    validate_definition,
)

DEFINITIONS = sorted(p.stem for p in IMAGES_DIR.glob("*.yaml"))
ELEMENTS = sorted(p.name for p in SCRIPTS_DIR.iterdir() if p.is_dir() and p.name != "bin")
HEADER = [
    "#!/bin/bash",
    "",  # a one-line purpose comment, checked below
    'if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi',
    "set -eu -o pipefail",
]


def raw_definition(name: str = "local-test") -> dict:
    return yaml.safe_load((IMAGES_DIR / f"{name}.yaml").read_text())


def problems_of(raw: dict, name: str = "local-test") -> list[str]:
    with pytest.raises(ImageDefinitionError) as caught:
        validate_definition(raw, IMAGES_DIR / f"{name}.yaml")
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize("name", DEFINITIONS)
def test_definitions_load(name):
    loaded = load_definition(name)
    assert loaded.elements()[0] == "base"
    assert loaded.elements()[-1] == "generalize"
    assert len(loaded.inputs_hash()) == 64


def test_cloud_definition_pins_consul_per_arch_and_pgdg():
    d = load_definition("postgresql14-patroni").definition
    assert d.components.postgresql.major == 14
    assert d.components.postgresql.source == "pgdg"
    assert set(d.components.consul.sha256) == {"amd64", "arm64"}
    assert "consul" in load_definition("postgresql14-patroni").elements()


def test_local_definition_is_offline_capable():
    loaded = load_definition("local-test")
    assert loaded.definition.components.postgresql.source == "distro"
    assert loaded.definition.components.consul is None
    assert "consul" not in loaded.elements()


def test_every_problem_is_reported_with_its_field_path():
    raw = raw_definition("postgresql14-patroni")
    raw["components"]["consul"]["sha256"]["amd64"] = "abc"
    raw["components"]["postgresql"]["source"] = "ppa"
    raw["components"]["psycopg2"] = {}
    raw["base"]["mirorr"] = "http://example.invalid"
    problems = problems_of(raw, "postgresql14-patroni")
    joined = "\n".join(problems)
    assert "components.consul.sha256.amd64: String should match pattern" in joined
    assert "components.postgresql.source:" in joined
    assert "components.psycopg2.version: required, but missing" in joined
    assert "base.mirorr: unknown key" in joined
    assert len(problems) == 4


def test_lock_must_pin_the_definitions_versions():
    raw = raw_definition()
    raw["components"]["patroni"]["version"] = "4.0.0"
    raw["components"]["psycopg2"]["version"] = "2.9.9"
    problems = problems_of(raw)
    assert any(p.startswith("components.patroni: ") and "4.0.0" in p for p in problems)
    assert any(p.startswith("components.psycopg2.version: ") for p in problems)


def test_distro_source_must_match_what_debian_ships():
    raw = raw_definition()
    raw["components"]["postgresql"]["major"] = 14
    (problem,) = problems_of(raw)
    assert problem.startswith("components.postgresql.major: Debian 12 ships PostgreSQL 15")


def test_consul_needs_a_checksum_for_every_architecture():
    raw = raw_definition("postgresql14-patroni")
    del raw["components"]["consul"]["sha256"]["arm64"]
    (problem,) = problems_of(raw, "postgresql14-patroni")
    assert problem == "components.consul.sha256: no checksum for arm64"


@pytest.mark.parametrize("name", DEFINITIONS)
def test_env_sets_every_required_input_of_every_element(name):
    loaded = load_definition(name)
    env = loaded.element_env("amd64", "build-1", "/run/bakery/patroni.lock", "/run/x")
    for element in loaded.elements():
        for variable, default in declared_inputs(element).items():
            assert default is not None or variable in env, f"{element} needs {variable}"
    declared = {v for e in loaded.elements() for v in declared_inputs(e)}
    assert set(env) <= declared, f"set but declared by no element: {set(env) - declared}"


def test_inputs_hash_follows_element_content(tmp_path, monkeypatch):
    loaded = load_definition("local-test")
    before = loaded.inputs_hash()
    scripts = tmp_path / "scripts"
    shutil.copytree(SCRIPTS_DIR, scripts)
    monkeypatch.setattr(imagedef, "SCRIPTS_DIR", scripts)
    assert loaded.inputs_hash() == before
    target = scripts / "generalize" / "99-generalize-image.sh"
    target.write_text(target.read_text() + "\n# changed\n")
    assert loaded.inputs_hash() != before
    # An element the definition does not use does not count.
    target.write_text((SCRIPTS_DIR / "generalize" / "99-generalize-image.sh").read_text())
    consul = scripts / "consul" / "24-install-consul.sh"
    consul.write_text(consul.read_text() + "\n# changed\n")
    assert loaded.inputs_hash() == before


@pytest.mark.parametrize("element", ELEMENTS)
def test_element_conventions(element):
    directory = SCRIPTS_DIR / element
    assert (directory / "README.md").is_file(), f"{element} has no README.md"
    scripts = sorted(directory.glob("*.sh"))
    assert scripts, f"{element} has no scripts"
    for script in scripts:
        assert re.fullmatch(r"[0-9]{2}-[a-z0-9]+(-[a-z0-9]+)+\.sh", script.name), script.name
        lines = script.read_text().splitlines()
        assert lines[0] == HEADER[0], script
        assert lines[1].startswith("# "), f"{script}: line 2 says what the script does"
        # The strict header, after the purpose comment (which may span a few lines).
        body = [line for line in lines[1:] if not line.startswith("#")]
        assert body[:2] == HEADER[2:], f"{script}: header is not the strict one"
        # Inputs come only from declared variables.
        used = set(re.findall(r"\$\{?(BAKERY_[A-Z0-9_]+)", script.read_text()))
        undeclared = used - set(declared_inputs(element)) - {"BAKERY_DEBUG_TRACE"}
        assert not undeclared, f"{script} reads undeclared {undeclared}"


def test_generalization_is_last_and_manifest_before_it():
    listing = subprocess.run(
        [str(SCRIPTS_DIR / "run-elements"), "--list", *load_definition("local-test").elements()],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listing[-1] == "generalize/99-generalize-image.sh"
    assert listing[-2] == "manifest/90-write-manifest.sh"
    numbers = [int(Path(entry).name[:2]) for entry in listing]
    assert numbers == sorted(numbers)
    assert listing.index("patroni/30-create-venv.sh") < listing.index(
        "psycopg2/35-install-psycopg2.sh"
    )


def make_elements(root: Path) -> Path:
    """Two toy elements whose scripts interleave by number and print what they see."""
    for element, scripts in {
        "one": ["10-say-one.sh", "30-say-three.sh"],
        "two": ["20-say-two.sh"],
    }.items():
        (root / element).mkdir(parents=True)
        (root / element / "environment").write_text(
            f"BAKERY_{element.upper()}_NEEDED  required\nBAKERY_{element.upper()}_OPT=dflt\n"
        )
        for name in scripts:
            (root / element / name).write_text(
                "#!/bin/bash\nset -eu -o pipefail\n"
                f'echo "{element}/{name}" $(env | grep ^BAKERY_ | sort | tr "\\n" " ")\n'
            )
    shutil.copy(SCRIPTS_DIR / "run-elements", root / "run-elements")
    (root / "bin").mkdir()
    return root


def test_runner_orders_scripts_and_passes_only_declared_inputs(tmp_path):
    root = make_elements(tmp_path / "elements")
    env_file = tmp_path / "build.env"
    env_file.write_text("BAKERY_ONE_NEEDED=1\nBAKERY_TWO_NEEDED=2\nBAKERY_BUILD_ID=b-1\n")
    proc = subprocess.run(
        [str(root / "run-elements"), "--env-file", str(env_file), "one", "two"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "BAKERY_STRAY": "x"},
    )
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stdout.splitlines() if line.startswith(("one/", "two/"))]
    assert [line.split()[0] for line in said] == [
        "one/10-say-one.sh",
        "two/20-say-two.sh",
        "one/30-say-three.sh",
    ]
    assert said[0].split()[1:] == [
        "BAKERY_DEBUG_TRACE=0",
        "BAKERY_ONE_NEEDED=1",
        "BAKERY_ONE_OPT=dflt",
    ]
    assert "BAKERY_STRAY" not in proc.stdout
    last = proc.stdout.splitlines()[-1]
    assert last == 'BAKERY-RESULT {"status":"ok","build_id":"b-1","manifest":null}'


def test_runner_refuses_missing_inputs_and_reports_failures(tmp_path):
    root = make_elements(tmp_path / "elements")
    proc = subprocess.run(
        [str(root / "run-elements"), "one", "two"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "BAKERY_ONE_NEEDED": "1"},
    )
    assert proc.returncode == 2
    assert "missing input: two needs BAKERY_TWO_NEEDED" in proc.stderr
    (root / "two" / "20-say-two.sh").write_text("#!/bin/bash\nexit 3\n")
    proc = subprocess.run(
        [str(root / "run-elements"), "one", "two"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "BAKERY_ONE_NEEDED": "1", "BAKERY_TWO_NEEDED": "2"},
    )
    assert proc.returncode == 1
    assert "FAILED two/20-say-two.sh (exit 3)" in proc.stderr
    assert proc.stdout.splitlines()[-1].startswith(
        'BAKERY-RESULT {"status":"failed","build_id":"unknown","element":"two"'
    )


def test_invoke_bake_reports_bad_target_and_definition():
    import sys

    invoke = str(Path(sys.executable).parent / "invoke")
    root = IMAGES_DIR.parent

    def bake(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [invoke, "bake", *args], cwd=root, capture_output=True, text=True, timeout=60
        )

    proc = bake("--target", "space", "--definition", "local-test")
    assert proc.returncode == 1
    assert "bake --target 'space': allowed are 'cloud' and 'local'" in proc.stderr
    proc = bake("--target", "local", "--definition", "no-such-image")
    assert proc.returncode == 1
    assert "image definition" in proc.stderr and "no-such-image.yaml" in proc.stderr
    # The cloud bake (the default) needs a config naming the environments.
    proc = bake("--definition", "local-test")
    assert proc.returncode == 1
    assert "bakery: section missing" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_lock_must_fit_the_bases_python():
    raw = raw_definition("postgresql14-patroni")
    raw["base"].update(distribution="ubuntu", release="22.04", codename="jammy")
    (problem,) = problems_of(raw, "postgresql14-patroni")
    assert problem.startswith("components.patroni.lock: ubuntu 22.04 has Python 3.10")
    raw["base"].update(release="20.04", codename="focal")
    (problem,) = problems_of(raw, "postgresql14-patroni")
    assert problem.startswith("base.release: ubuntu 20.04 is not one of debian 12")
