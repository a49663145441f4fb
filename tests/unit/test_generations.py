"""Which generations a rebuild retires and deletes, and that only one rebuild runs at a time."""

from __future__ import annotations

import datetime as dt
import fcntl
import os

import pytest

from bakery.cloud import rebuild as rebuild_module
from bakery.cloud.generations import Generation, plan_retirement
from bakery.config import load_settings
from bakery.errors import BakeryError
from tests.helpers import base_config

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
GRACE = dt.timedelta(hours=3)


def _gen(name: str, status: str, hours_ago: float) -> Generation:
    return Generation(name, name, status, name, "hash", "base", NOW - dt.timedelta(hours=hours_ago))


def _names(gens) -> list[str]:
    return [g.name for g in gens]


def test_the_newest_released_stay_older_ones_go():
    gens = [_gen("r3", "released", 1), _gen("r2", "released", 20), _gen("r1", "released", 40)]
    plan = plan_retirement(gens, set(), keep=2, now=NOW, candidate_grace=GRACE)
    assert _names(plan.retire) == ["r1"] and _names(plan.delete) == ["r1"]
    assert plan_retirement(gens, set(), 3, NOW, GRACE).delete == []


def test_an_image_in_use_is_retired_but_never_deleted():
    gens = [_gen("r2", "released", 1), _gen("r1", "released", 20), _gen("old", "retired", 90)]
    plan = plan_retirement(gens, in_use={"r1", "old"}, keep=1, now=NOW, candidate_grace=GRACE)
    assert _names(plan.retire) == ["r1"]
    assert plan.delete == []
    assert _names(plan.kept_in_use) == ["r1", "old"]


def test_candidates_go_only_when_no_bake_can_still_be_running():
    gens = [_gen("fresh", "candidate", 1), _gen("stale", "candidate", 4)]
    plan = plan_retirement(gens, set(), keep=3, now=NOW, candidate_grace=GRACE)
    assert _names(plan.delete) == ["stale"] and plan.retire == []


def test_a_second_rebuild_stops_before_baking_or_retiring(tmp_path, monkeypatch):
    settings = load_settings(base_config(tmp_path))
    # What the clouds say is beside the point here: every environment is due.
    monkeypatch.setattr(rebuild_module, "_read", lambda *_: {})
    monkeypatch.setattr(rebuild_module, "_reasons", lambda *_: {"prod1": ["due"]})
    monkeypatch.setattr(rebuild_module.cloudbake, "bake", _must_not_run)
    monkeypatch.setattr(rebuild_module, "_retire", _must_not_run)
    settings.state_dir.mkdir(parents=True)
    fd = os.open(settings.state_dir / "rebuild.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(BakeryError, match="another run holds .*rebuild.lock; nothing was done"):
            rebuild_module.rebuild(settings)
    finally:
        os.close(fd)


def test_an_unreachable_cloud_leaves_the_state_directory_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "no-clouds.yaml"))
    settings = load_settings(base_config(tmp_path))
    with pytest.raises(BakeryError, match="clouds.yaml entry 'prod1'"):
        rebuild_module.rebuild(settings)
    assert not settings.state_dir.exists()


def _must_not_run(*_args, **_kwargs):
    raise AssertionError("ran although another rebuild holds the lock")


def test_only_builders_older_than_any_running_bake_are_stale():
    from types import SimpleNamespace

    from bakery.cloud.generations import builder_ports, split_by_age

    def port(name, tags, hours_ago, server="srv"):
        created = (NOW - dt.timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return SimpleNamespace(id=name, name=name, tags=tags, device_id=server, created_at=created)

    ports = [
        port("old-builder", ["bakery", "bakery-builder"], 4),
        port("old-builder-without-server", ["bakery", "bakery-builder"], 4, server=""),
        port("running-builder", ["bakery", "bakery-builder"], 1),
        port("old-node", ["bakery", "bakery-cluster-x"], 40),
    ]
    stale, recent = split_by_age(builder_ports(ports), NOW, GRACE)
    assert [(b.name, b.server_id) for b in stale] == [
        ("old-builder", "srv"),
        ("old-builder-without-server", None),
    ]
    assert [b.name for b in recent] == ["running-builder"]


def test_rebuild_roll_rolls_after_the_bake_and_fails_after_retiring_when_refused(
    tmp_path, monkeypatch
):
    from bakery.cloud import roll as roll_module

    settings = load_settings(base_config(tmp_path))
    calls = []
    monkeypatch.setattr(rebuild_module, "_read", lambda *_: {})
    monkeypatch.setattr(rebuild_module, "_reasons", lambda *_: {"prod1": ["due"]})
    monkeypatch.setattr(rebuild_module.cloudbake, "bake", lambda *a, **k: calls.append("bake"))
    monkeypatch.setattr(rebuild_module, "_retire", lambda *a: calls.append("retire"))

    def refused(*_args, **_kwargs):
        calls.append("roll")
        raise roll_module.RollRefused("roll refused: the cluster is not healthy: no leader")

    monkeypatch.setattr(roll_module, "roll", refused)
    with pytest.raises(roll_module.RollRefused, match="no leader"):
        rebuild_module.rebuild(settings, roll=True, log=lambda _: None)
    assert calls == ["bake", "roll", "retire"]  # a scheduled run fails, old images still go

    calls.clear()

    def nothing(*_args, **_kwargs):
        raise roll_module.NothingToRoll("nothing to roll: every node runs gen-2")

    monkeypatch.setattr(roll_module, "roll", nothing)
    result = rebuild_module.rebuild(settings, roll=True, log=lambda _: None)
    assert result.rolled == "nothing to roll: every node runs gen-2"
    assert calls == ["bake", "retire"]
