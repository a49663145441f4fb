"""deploy/prometheus with Debian's promtool: the rules and both scrape configurations check,
with the target lists `invoke render` writes; the alert rules, fed with series of a healthy
cluster and of clusters in trouble, fire exactly the expected alerts and nothing else.

Each scenario below is the healthy two-member cluster with some series changed. For every
scenario, every alert of the rules file is asserted at the evaluation time: the expected ones
with their labels, all the others as not firing. An alert added to the rules later is thereby
checked to stay silent on a healthy cluster without touching this file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.helpers import PROJECT

DEPLOY = PROJECT / "deploy" / "prometheus"
RULES = DEPLOY / "rules" / "bakery.rules.yml"
SCOPE = "bkt"
MIB = 1024 * 1024


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool missing: run tests/render/setup (Debian's prometheus package)")
    return path


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def alert_names(rules: Path = RULES) -> list[str]:
    groups = yaml.safe_load(rules.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


# --- the cluster's series -------------------------------------------------------------------


def member(name: str) -> dict[str, str]:
    return {"scope": SCOPE, "name": name}


def target(job: str, name: str, port: int) -> dict[str, str]:
    address = {"a": "198.19.0.11", "b": "198.19.0.12"}[name]
    return {"job": job, "instance": f"{address}:{port}"}


def patroni(name: str) -> dict[str, str]:
    """Patroni's own labels plus those of its scrape target."""
    return {**member(name), **target("patroni", name, 8008)}


def exporter(job: str, name: str) -> dict[str, str]:
    """An exporter's series: the target list gives scope and name."""
    return {**member(name), **target(job, name, {"node": 9100, "postgres": 9187}[job])}


def healthy(steps: int, step_seconds: int) -> dict[tuple, str]:
    """a is primary, b streams; WAL grows by 1 MB a step and b keeps up; the DCS is seen every
    step; a backup succeeds every step on a (its time follows the clock)."""
    wal = f"0+1000000x{steps}"
    clock = f"0+{step_seconds}x{steps}"
    series = {}
    for name, primary in (("a", 1), ("b", 0)):
        labels = patroni(name)
        for metric, values in {
            "patroni_version": f"40105x{steps}",
            "patroni_primary": f"{primary}x{steps}",
            "patroni_replica": f"{1 - primary}x{steps}",
            "patroni_xlog_location": wal if primary else f"0x{steps}",
            "patroni_xlog_received_location": f"0x{steps}" if primary else wal,
            "patroni_postgres_running": f"1x{steps}",
            "patroni_postgres_timeline": f"1x{steps}",
            "patroni_dcs_last_seen": clock,
            "patroni_pending_restart": f"0x{steps}",
            "patroni_is_paused": f"0x{steps}",
        }.items():
            series[(metric, frozenset(labels.items()))] = values
        series[("pg_up", frozenset(exporter("postgres", name).items()))] = f"1x{steps}"
        series[("node_load1", frozenset(exporter("node", name).items()))] = f"0.5x{steps}"
    backup = frozenset({**exporter("node", "a"), "bakery_job": "backup"}.items())
    series[("bakery_job_ok", backup)] = f"1x{steps}"
    series[("bakery_job_last_run_timestamp_seconds", backup)] = clock
    return series


def key(metric: str, labels: dict[str, str]) -> tuple:
    return (metric, frozenset(labels.items()))


@dataclass
class Scenario:
    name: str
    eval_time: str
    # metric, labels -> values (promtool's expanding notation), over the healthy series
    changes: dict[tuple, str] = field(default_factory=dict)
    # alertname -> the label sets it fires with (severity and alertname are added)
    expected: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    steps: int = 80
    step: str = "1m"
    step_seconds: int = 60
    extra: dict[tuple, str] = field(default_factory=dict)

    def series(self) -> dict[tuple, str]:
        return healthy(self.steps, self.step_seconds) | self.changes | self.extra


def gone(name: str, at: int, steps: int = 80) -> dict[tuple, str]:
    """Every series of member `name` (Patroni's and its exporters') ends at step `at`: the
    node is gone and Prometheus marks them stale."""
    return {
        key: f"{values.rsplit('x', 1)[0]}x{at - 1} stale"
        for key, values in healthy(steps, 60).items()
        if ("name", name) in key[1]
    }


def switch(before: str, after: str, at: int, steps: int) -> str:
    """`before` for `at` steps, then `after` until the end."""
    return f"{before}x{at - 1} {after}x{steps - at}"


SCENARIOS = [
    Scenario("healthy, early", "5m"),
    Scenario("healthy, after an hour", "70m"),
    Scenario(
        "leaderless: the primary stepped down and no replica was promoted",
        "20m",
        changes={
            key("patroni_primary", patroni("a")): switch("1", "0", 10, 80),
            key("patroni_replica", patroni("a")): switch("0", "1", 10, 80),
            # Only the leader reports a WAL position.
            key("patroni_xlog_location", patroni("a")): "0+1000000x9 0x70",
        },
        expected={"PatroniNoLeader": [{"scope": SCOPE}]},
    ),
    Scenario(
        "leaderless: the primary's node is gone",
        "20m",
        changes=gone("a", 10),
        expected={
            "PatroniNoLeader": [{"scope": SCOPE}],
            "PatroniMemberMissing": [member("a")],
        },
    ),
    Scenario(
        "a lagging replica",
        "20m",
        # b stops receiving at minute 5, 15 MB behind at minute 20.
        changes={key("patroni_xlog_received_location", patroni("b")): "0+1000000x5 5000000x74"},
        expected={"PatroniReplicaLagging": [patroni("b")]},
    ),
    Scenario(
        "a lagging replica within this cluster's larger maximum_lag_on_failover",
        "20m",
        changes={key("patroni_xlog_received_location", patroni("b")): "0+1000000x5 5000000x74"},
        # What `invoke render`'s thresholds.rules.yml records for the scope.
        extra={
            key("bakery_patroni_maximum_lag_on_failover_bytes", {"scope": SCOPE}): "100000000x80"
        },
    ),
    Scenario(
        "two primaries: b was promoted while a still holds on",
        "15m",
        changes={
            key("patroni_primary", patroni("b")): switch("0", "1", 10, 80),
            key("patroni_replica", patroni("b")): switch("1", "0", 10, 80),
            key("patroni_xlog_location", patroni("b")): "0x9 9000000+1000000x70",
            key("patroni_postgres_timeline", patroni("b")): switch("1", "2", 10, 80),
        },
        expected={
            "PatroniMultiplePrimaries": [{"scope": SCOPE}],
            # A promotion is a timeline switch, reported for ten minutes.
            "PatroniTimelineSwitch": [{"scope": SCOPE}],
        },
    ),
    Scenario(
        "a planned switchover: one timeline switch, nothing else",
        "25m",
        changes={
            key("patroni_primary", patroni("a")): switch("1", "0", 20, 80),
            key("patroni_replica", patroni("a")): switch("0", "1", 20, 80),
            key("patroni_xlog_location", patroni("a")): "0+1000000x19 0x60",
            key("patroni_xlog_received_location", patroni("a")): "0x19 20000000+1000000x60",
            key("patroni_primary", patroni("b")): switch("0", "1", 20, 80),
            key("patroni_replica", patroni("b")): switch("1", "0", 20, 80),
            key("patroni_xlog_location", patroni("b")): "0x19 20000000+1000000x60",
            key("patroni_xlog_received_location", patroni("b")): "0+1000000x19 0x60",
            key("patroni_postgres_timeline", patroni("a")): switch("1", "2", 21, 80),
            key("patroni_postgres_timeline", patroni("b")): switch("1", "2", 20, 80),
        },
        expected={"PatroniTimelineSwitch": [{"scope": SCOPE}]},
    ),
    Scenario(
        "PostgreSQL stopped under a running Patroni",
        "20m",
        changes={key("patroni_postgres_running", patroni("b")): switch("1", "0", 10, 80)},
        expected={"PatroniPostgresNotRunning": [patroni("b")]},
    ),
    Scenario(
        "the DCS unreachable from b",
        "20m",
        changes={key("patroni_dcs_last_seen", patroni("b")): "0+60x9 540x70"},
        expected={"PatroniDCSLastSeen": [patroni("b")]},
    ),
    Scenario(
        "a pending restart for over half an hour",
        "45m",
        changes={key("patroni_pending_restart", patroni("a")): switch("0", "1", 10, 80)},
        expected={"PatroniPendingRestart": [patroni("a")]},
    ),
    Scenario(
        "paused for over a quarter of an hour",
        "30m",
        changes={
            key("patroni_is_paused", patroni(name)): switch("0", "1", 10, 80) for name in "ab"
        },
        expected={"PatroniPaused": [{"scope": SCOPE}]},
    ),
    Scenario(
        "four failovers within the hour",
        "55m",
        changes={
            key("patroni_postgres_timeline", patroni(name)): "1x9 2x9 3x9 4x9 5x39" for name in "ab"
        },
        expected={"PatroniRapidTimelineSwitches": [{"scope": SCOPE}]},
    ),
    Scenario(
        "a replica's node gone",
        "30m",
        changes=gone("b", 20),
        expected={"PatroniMemberMissing": [member("b")]},
    ),
    Scenario(
        "postgres_exporter cannot log in",
        "20m",
        changes={key("pg_up", exporter("postgres", "b")): switch("1", "0", 10, 80)},
        expected={"PostgresExporterCannotLogIn": [exporter("postgres", "b")]},
    ),
    Scenario(
        "the backup job failed",
        "20m",
        changes={
            key("bakery_job_ok", {**exporter("node", "a"), "bakery_job": "backup"}): switch(
                "1", "0", 10, 80
            )
        },
        expected={"BakeryJobFailed": [{**exporter("node", "a"), "bakery_job": "backup"}]},
    ),
    Scenario(
        "the last good backup is 27 hours old",
        "27h",
        steps=60,
        step="30m",
        step_seconds=1800,
        changes={
            key(
                "bakery_job_last_run_timestamp_seconds",
                {**exporter("node", "a"), "bakery_job": "backup"},
            ): "0x60"
        },
        expected={"BakeryBackupTooOld": [{"scope": SCOPE}]},
    ),
    Scenario(
        "the primary's backups stopped while a replica records its skipped runs",
        "27h",
        steps=60,
        step="30m",
        step_seconds=1800,
        changes={
            key(
                "bakery_job_last_run_timestamp_seconds",
                {**exporter("node", "a"), "bakery_job": "backup"},
            ): "0x60"
        },
        extra={
            key("bakery_job_ok", {**exporter("node", "b"), "bakery_job": "backup"}): "1x60",
            key(
                "bakery_job_last_run_timestamp_seconds",
                {**exporter("node", "b"), "bakery_job": "backup"},
            ): "0+1800x60",
        },
        expected={"BakeryBackupTooOld": [{"scope": SCOPE}]},
    ),
]


def promtool_tests(rules: Path, scenarios: list[Scenario]) -> dict:
    """One promtool test group per scenario; every alert asserted at the evaluation time."""
    names = alert_names(rules)
    tests = []
    for scenario in scenarios:
        unknown = set(scenario.expected) - set(names)
        assert not unknown, f"{scenario.name}: no such alert {unknown}"
        tests.append(
            {
                "name": scenario.name,
                "interval": scenario.step,
                "input_series": [
                    {"series": _series_name(metric, dict(labels)), "values": values}
                    for (metric, labels), values in scenario.series().items()
                ],
                "alert_rule_test": [
                    {
                        "eval_time": scenario.eval_time,
                        "alertname": name,
                        "exp_alerts": [
                            {"exp_labels": {**labels, "severity": _severity(rules, name)}}
                            for labels in scenario.expected.get(name, [])
                        ],
                    }
                    for name in names
                ],
            }
        )
    return {"rule_files": [str(rules)], "evaluation_interval": "15s", "tests": tests}


def _series_name(metric: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{metric}{{{inner}}}"


def _severity(rules: Path, alert: str) -> str:
    for group in yaml.safe_load(rules.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                return rule["labels"]["severity"]
    raise KeyError(alert)


def test_rules_check():
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def without_annotations(rules: Path, tmp_path: Path) -> Path:
    """The rules minus their annotations: promtool compares annotations too, and these
    scenarios are about which alerts fire (the texts are checked once, below)."""
    doc = yaml.safe_load(rules.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path = tmp_path / rules.name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_every_scenario_fires_exactly_the_expected_alerts(tmp_path):
    rules = without_annotations(RULES, tmp_path)
    tests = tmp_path / "bakery.test.yml"
    tests.write_text(yaml.safe_dump(promtool_tests(rules, SCENARIOS), sort_keys=False))
    result = run_promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_scenarios_can_fail_a_rule_written_for_patroni_3(tmp_path):
    """The widely copied "no leader" rule used patroni_master, which Patroni 4 no longer
    exports: the same scenarios catch such a rule as dead."""
    old = tmp_path / "patroni3.rules.yml"
    current = without_annotations(RULES, tmp_path).read_text()
    old.write_text(current.replace("patroni_primary", "patroni_master"))
    tests = tmp_path / "patroni3.test.yml"
    leaderless = [s for s in SCENARIOS if s.name.startswith("leaderless")]
    tests.write_text(yaml.safe_dump(promtool_tests(old, leaderless), sort_keys=False))
    result = run_promtool("test", "rules", str(tests))
    assert result.returncode != 0
    assert "alertname: PatroniNoLeader" in result.stdout + result.stderr


def deployment(tmp_path: Path, out: Path) -> Path:
    """deploy/prometheus as an operator lays it out: the render's prometheus/ as cluster/ (the
    static configuration) and, for the Consul one, its CA and thresholds by scope."""
    root = tmp_path / "prometheus"
    shutil.copytree(DEPLOY, root)
    shutil.copytree(out / "prometheus", root / "cluster")
    shutil.copy(out / "prometheus" / "ca.pem", root / "ca.pem")
    (root / "thresholds").mkdir()
    shutil.copy(out / "prometheus" / "thresholds.rules.yml", root / "thresholds" / "c.rules.yml")
    return root


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-consul.yml"])
def test_shipped_configurations_check_with_the_rendered_targets(rendered, tmp_path, config):
    _, _, out = rendered
    root = deployment(tmp_path, out)
    result = run_promtool("check", "config", config, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "thresholds.rules.yml" in result.stdout or "c.rules.yml" in result.stdout


def test_static_targets_are_what_the_render_says(rendered, tmp_path):
    """`promtool check service-discovery` reads the rendered target lists through the shipped
    configuration: every node's exporters on its monitoring address, labelled like Patroni."""
    _, config, out = rendered
    manifest = json.loads((out / "manifest.json").read_text())
    root = deployment(tmp_path, out)
    found = {}
    for job in ("patroni", "node", "postgres"):
        # File discovery answers at once; the check waits its whole timeout (30 s by default).
        argv = ("check", "service-discovery", "--timeout=3s", "prometheus.yml", job)
        result = run_promtool(*argv, cwd=root)
        assert result.returncode == 0, result.stdout + result.stderr
        found[job] = json.loads(result.stdout[result.stdout.index("[") :])
    nodes = manifest["nodes"]
    exporters = config.get("monitoring", {}).get("exporters", True)
    for job, port in (("patroni", 8008), ("node", 9100), ("postgres", 9187)):
        got = {t["labels"]["instance"]: t["labels"] for t in found[job]}
        if job != "patroni" and not exporters:
            assert got == {}
            continue
        wanted = {f"{n['overlay_address'] or n['private_address']}:{port}": n for n in nodes}
        assert set(got) == set(wanted)
        for instance, node in wanted.items():
            labels = got[instance]
            assert (labels["az"], labels["environment"]) == (node["az"], node["environment"])
            if job != "patroni":  # Patroni brings scope and name itself
                assert (labels["scope"], labels["name"]) == ("patroni42", node["name"])
            else:
                assert "scope" not in labels and "name" not in labels


def test_alert_texts_render(tmp_path):
    """The annotations' templates, once: a lagging replica is named with its lag."""
    (lagging,) = [s for s in SCENARIOS if s.name == "a lagging replica"]
    doc = promtool_tests(RULES, [lagging])
    tests = doc["tests"][0]["alert_rule_test"]
    (check,) = [t for t in tests if t["alertname"] == "PatroniReplicaLagging"]
    check["exp_alerts"][0]["exp_annotations"] = {
        "summary": "Replica b of bkt lags 14.31MiB",
        "description": "b is further behind the primary than maximum_lag_on_failover: if the "
        "primary fails now, Patroni will not promote it.",
    }
    doc["tests"][0]["alert_rule_test"] = [check]
    tests = tmp_path / "texts.test.yml"
    tests.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = run_promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
