"""The result line and the manifest check that decide whether a build becomes an image."""

from __future__ import annotations

import copy

import pytest

from bakery.image.definition import load_definition
from bakery.image.manifest import console_objects, last_result, manifest_problems

BUILD_ID = "postgresql14-patroni-20261126T000000Z-0123abcd"


@pytest.fixture(scope="module")
def loaded():
    return load_definition("postgresql14-patroni")


@pytest.fixture
def manifest(loaded):
    """What a build that installed exactly the pins reports (as scripts/manifest writes it)."""
    return {
        "schema": 1,
        "image": "postgresql14-patroni",
        "build_id": BUILD_ID,
        "inputs_hash": loaded.inputs_hash(),
        "components": {
            "postgresql": {"major": 14, "package": "14.20-1.pgdg120+1", "version": "14.20"},
            "patroni": {"version": "4.1.5", "venv": "/opt/patroni"},
            "psycopg2": {"version": "2.9.10"},
            "pgbackrest": {"package": "2.57.0-1.pgdg120+1"},
            "consul": {"version": "1.20.2"},
            "nebula": {"package": "1.6.1+dfsg-3+b4"},
            "prometheus-node-exporter": {"package": "1.5.0-1+b6"},
            "prometheus-postgres-exporter": {"package": "0.15.0-1.pgdg120+1"},
        },
    }


def test_the_pinned_manifest_of_this_build_is_accepted(loaded, manifest):
    assert manifest_problems(loaded, BUILD_ID, manifest) == []


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("build_id", "other", "build_id is 'other', expected"),
        ("inputs_hash", "0" * 64, "inputs_hash is '000"),
        ("components.patroni.version", "4.0.0", "patroni version is '4.0.0', the definition pins"),
        ("components.postgresql.major", 15, "postgresql major is 15, the definition pins '14'"),
        ("components.consul", None, "consul version is None"),
        ("components.nebula.package", "1.9.0-1", "nebula package is '1.9.0-1', the definition"),
        ("components.nebula.package", "1.60-1", "nebula package is '1.60-1', the definition"),
        (
            "components.prometheus-node-exporter.package",
            "1.7.0-1",
            "prometheus-node-exporter package is '1.7.0-1', the definition pins a version",
        ),
        (
            "components.prometheus-postgres-exporter",
            None,
            "prometheus-postgres-exporter package is None",
        ),
    ],
)
def test_each_contradiction_is_named(loaded, manifest, path, value, problem):
    broken = copy.deepcopy(manifest)
    *parents, last = path.split(".")
    node = broken
    for key in parents:
        node = node[key]
    node[last] = value
    problems = manifest_problems(loaded, BUILD_ID, broken)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


@pytest.mark.parametrize("manifest", [None, {}, "text"])
def test_no_manifest_is_a_problem(loaded, manifest):
    assert manifest_problems(loaded, BUILD_ID, manifest) == ["the build printed no manifest"]


def test_last_result_skips_noise_and_cut_lines():
    console = "\n".join(
        [
            '[  OK  ] BAKERY-RESULT {"status": "failed", "build_id": "old"}',
            'cloud-init[812]: BAKERY-RESULT {"status": "ok", "build_id": "b"}',
            'BAKERY-RESULT {"status": "ok", "buil',  # cut off by a power-off
            "reboot: Power down",
        ]
    )
    assert last_result(console) == {"status": "ok", "build_id": "b"}
    assert last_result("no result here\nBAKERY-RESULT [1, 2]\n") is None


def test_console_objects_survive_interleaved_output():
    text = (
        "[  12.3] kernel line\n"
        'getty login: BAKERY-MANIFEST {"a": 1}Debian GNU/Linux 12 node ttyS0\n'
        'BAKERY-MANIFEST {"cut": \n'
        'BAKERY-MANIFEST {"b": 2}\n'
    )
    assert console_objects(text, "BAKERY-MANIFEST ") == [{"a": 1}, {"b": 2}]
    assert last_result('x BAKERY-RESULT {"status": "ok"} trailing') == {"status": "ok"}
