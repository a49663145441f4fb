"""The built image booted under QEMU with one node's launch user-data from `invoke render`.

The guest reaches etcd on the namespace's bridge; the test looks inside through the QEMU guest
agent (root in the guest, no SSH and nothing added to the user-data).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time

import imagetest_harness as harness
import pytest
import yaml

from bakery.image.definition import load_definition
from bakery.image.manifest import console_objects
from bakery.node import monitoring
from bakery.node.report import NodeReport, judge, last_report

pytestmark = pytest.mark.slow

# Services a booted node may run: the base system's, the guest agent the test talks through,
# and what the node bundle starts. Anything else running is a surprise in a golden image.
ALLOWED_RUNNING = {
    "patroni.service",
    "bakery-reporter.service",
    "prometheus-node-exporter.service",
    "prometheus-postgres-exporter.service",
    "ssh.service",
    "qemu-guest-agent.service",
    "systemd-journald.service",
    "systemd-logind.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    "systemd-timesyncd.service",
    "systemd-udevd.service",
    "dbus.service",
    "getty@tty1.service",
    "serial-getty@ttyS0.service",
}
# Bundle timing: cloud-init's work on the node bundle (write_files, runcmd via scripts_user).
BUNDLE_EVENTS = ("config-write-files", "config-runcmd", "config-scripts-user")


def test_cloud_init_finished_without_errors(guest):
    status = guest.agent.sh("cloud-init status --long --wait || true", timeout=120)
    assert re.search(r"^status: done$", status, re.M), status
    result = json.loads(guest.agent.sh("cat /run/cloud-init/result.json"))
    assert result["v1"]["errors"] == [], result
    assert "DataSourceNoCloud" in result["v1"]["datasource"]


def test_written_files_have_declared_owner_mode_and_content(guest, rendered):
    user_data = yaml.safe_load(rendered["user_data"].read_text())
    files = user_data["write_files"]
    assert files, "the user-data writes no files"
    for entry in files:
        path = entry["path"]
        owner = entry.get("owner", "root:root")
        mode = entry.get("permissions", "0644")
        got = guest.agent.sh(f"stat -c '%U:%G %a' '{path}'").strip()
        assert got == f"{owner} {int(mode, 8):o}", f"{path}: {got}, declared {owner} {mode}"
        digest = guest.agent.sh(f"sha256sum '{path}'").split()[0]
        assert digest == hashlib.sha256(entry["content"].encode()).hexdigest(), path
    # The render manifest says the same as the user-data.
    declared = {f["path"]: (f["owner"], f["mode"]) for f in rendered["node"]["files"]}
    assert declared == {
        f["path"]: (f.get("owner", "root:root"), f.get("permissions", "0644")) for f in files
    }


def test_only_intended_services_are_enabled_and_running(guest, rendered):
    wanted = set(rendered["node"]["services"])
    assert wanted == {"patroni.service", *monitoring.SERVICES}
    for unit in (
        *("patroni.service", "consul.service", "nebula.service", "postgresql.service"),
        *("bakery-backup-full.timer", "bakery-backup-diff.timer"),
        *monitoring.SERVICES,
    ):
        state = guest.agent.exec(["systemctl", "is-enabled", unit])[1].strip()
        expected = "enabled" if unit in wanted else "disabled"
        assert state == expected, f"{unit} is {state}"
    running = set(
        guest.agent.sh(
            "systemctl list-units --type=service --state=running --no-legend --plain"
            " | awk '{print $1}'"
        ).split()
    )
    # The guard is a oneshot (exited), the path unit waits: neither shows as running.
    assert wanted - {"bakery-scrape-guard.service", "bakery-job-metrics.path"} <= running
    assert running <= ALLOWED_RUNNING, f"unexpected: {running - ALLOWED_RUNNING}"
    # The reporter is the image's own, enabled there; it runs once the bundle names the node.
    assert guest.agent.exec(["systemctl", "is-enabled", "bakery-reporter.service"])[1].strip() == (
        "enabled"
    )
    assert "bakery-reporter.service" in running
    # The image's own units pass systemd's checks (consul's binary is not in this image), and
    # so do Debian's exporter units with the image's drop-ins. A timer's verification loads the
    # backup service it starts (and checks its ExecStart).
    for unit in (
        "patroni.service",
        "nebula.service",
        "bakery-metadata-guard.service",
        "bakery-scrape-guard.service",
        "bakery-job-metrics.service",
        "bakery-job-metrics.path",
        "bakery-backup-full.timer",
        "bakery-backup-diff.timer",
        "bakery-reporter.service",
    ):
        code, out, err = guest.agent.exec(
            ["systemd-analyze", "verify", f"/etc/systemd/system/{unit}"], timeout=60
        )
        assert code == 0 and unit not in err, f"{unit}: {out}{err}"
    for unit in ("prometheus-node-exporter.service", "prometheus-postgres-exporter.service"):
        code, out, err = guest.agent.exec(["systemd-analyze", "verify", unit], timeout=60)
        assert code == 0 and unit not in err and "bakery.conf" not in err, f"{unit}: {out}{err}"
    failed = guest.agent.sh("systemctl list-units --state=failed --no-legend --plain").strip()
    assert failed == "", failed
    # PostgreSQL runs under Patroni, not under the distribution's unit.
    cgroup = guest.agent.sh("cat /proc/$(pgrep -o -u postgres -x postgres)/cgroup")
    assert "patroni.service" in cgroup


def test_patroni_answers_and_bootstrapped_as_leader(guest, rendered):
    ca = rendered["dir"] / "files/etc/patroni/tls/ca.pem"
    probe = guest.in_netns(
        [
            "curl",
            "-s",
            "-m",
            "10",
            "--cacert",
            str(ca),
            f"https://{harness.GUEST_ADDRESS}:8008/patroni",
        ]
    )
    status = json.loads(probe.stdout)
    assert status["role"] == "primary", status
    assert status["state"] == "running"
    assert status["patroni"]["version"] == "4.1.5"
    assert status["patroni"]["scope"] == rendered["config"]["cluster"]["scope"]
    assert status["server_version"] // 10000 == 15
    members = guest.agent.sh(
        "su -s /bin/sh postgres -c 'patronictl -c /etc/patroni/patroni.yml list -f json'"
    )
    (member,) = json.loads(members)
    assert member["Role"] == "Leader" and member["State"] == "running", member


def test_reporter_writes_the_rest_apis_role_to_the_serial_console(guest, rendered, built):
    """What bakery reads from a cloud's console log: BAKERY-NODE lines (journald's prefix on
    the serial console and all) with the role Patroni's REST API reports, and the image's
    build id."""
    ca = rendered["dir"] / "files/etc/patroni/tls/ca.pem"
    name = rendered["node"]["name"]
    url = f"https://{harness.GUEST_ADDRESS}:8008/patroni"

    def agreeing() -> NodeReport | None:
        probe = guest.in_netns(["curl", "-s", "-m", "10", "--cacert", str(ca), url])
        role = json.loads(probe.stdout).get("role") if probe.returncode == 0 else None
        report = last_report(guest.console_text(), name)
        return report if report is not None and role and report.role == role else None

    deadline = time.monotonic() + 180
    while (report := agreeing()) is None:
        assert time.monotonic() < deadline, "no BAKERY-NODE line with the REST API's role"
        time.sleep(2)
    assert report.role == "primary" and report.state == "running" and report.is_leader
    assert report.build_id == built.build_id
    assert report.error is None and report.failed_jobs == ()
    health = judge({name: report}, 1048576, dt.datetime.now(dt.UTC))
    assert health.healthy, health.problems
    lines = [line for line in guest.console_text().splitlines() if "BAKERY-NODE {" in line]
    assert all(len(line) < 400 for line in lines)  # journald's prefix included


def scrape(guest, port: int) -> str:
    """/metrics from the bridge (10.213.7.1: inside node.yaml's allowed networks, which are
    the monitoring networks by default), as Prometheus would ('' and the error: no answer)."""
    url = f"http://{harness.GUEST_ADDRESS}:{port}/metrics"
    probe = guest.in_netns(["curl", "-sS", "-f", "-m", "60", url], timeout=90)
    return probe.stdout or probe.stderr


def wait_for_metric(guest, port: int, pattern: str, timeout: float = 240) -> str:
    """Scrape until `pattern` shows (an emulated guest answers its first scrapes slowly)."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, text := scrape(guest, port), re.M):
        assert time.monotonic() < deadline, f"no {pattern!r} from port {port}: {text[-500:]}"
        time.sleep(3)
    return text


def test_exporters_answer_after_first_boot(guest):
    """Installed in the image, enabled by the bundle's runcmd: no package work at boot (the
    dpkg log stays empty, test below), only the node's address, only the scrape guard's
    networks."""
    wait_for_metric(guest, monitoring.NODE_EXPORTER_PORT, r"^node_load1 [0-9.e+-]+$")
    # postgres_exporter logs in as monitor once Patroni has bootstrapped.
    wait_for_metric(guest, monitoring.POSTGRES_EXPORTER_PORT, r"^pg_up 1$")
    listening = guest.agent.sh("ss -ltnH").split("\n")
    for port in (monitoring.NODE_EXPORTER_PORT, monitoring.POSTGRES_EXPORTER_PORT):
        local = {
            line.split()[3]
            for line in listening
            if line.split()[3:4] and line.split()[3].endswith(f":{port}")
        }
        assert local == {f"{harness.GUEST_ADDRESS}:{port}"}, local
    guard = guest.agent.sh("nft list table inet bakery_scrape_guard")
    assert "10.213.7.0/24" in guard and "reject with tcp reset" in guard
    mode = guest.agent.sh(f"stat -c '%U %a' {monitoring.PASSWORD_FILE}").strip()
    assert mode == "prometheus 600"


def test_job_status_files_become_metrics(guest):
    """The contract of bakery's jobs: a status file written (temp file + rename) into
    /var/lib/bakery/status shows up as metrics of node_exporter's textfile collector."""
    guest.agent.sh(
        'printf \'%s\' \'{"ok": false, "at": "2026-12-01T10:00:00Z", "detail": "t"}\''
        " > /var/lib/bakery/status/.bkt-test.tmp"
        " && mv /var/lib/bakery/status/.bkt-test.tmp /var/lib/bakery/status/bkt-test.json"
    )
    pattern = r'^(bakery_job_\w+)\{bakery_job="bkt-test"\} (\S+)$'
    text = wait_for_metric(guest, monitoring.NODE_EXPORTER_PORT, pattern, timeout=120)
    found = dict(re.findall(pattern, text, re.M))
    assert float(found["bakery_job_ok"]) == 0
    assert float(found["bakery_job_last_run_timestamp_seconds"]) == 1796119200  # its "at"


def test_metadata_address_is_blocked_for_everyone_but_root(guest):
    # The test network has no route to the metadata address, and a connect without a route
    # fails before netfilter sees it: give it one, as a cloud network would.
    guest.agent.sh(f"ip route replace 169.254.169.254/32 dev {harness.GUEST_NIC} || true")
    probe = (
        "import socket; s = socket.socket(); s.settimeout(3)\n"
        "try:\n    s.connect(('169.254.169.254', 80)); print('connected')\n"
        "except OSError as e:\n    print(type(e).__name__, e.errno)\n"
    )
    as_nobody = guest.agent.exec(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "python3", "-c", probe]
    )[1]
    blocked = ("PermissionError", "ConnectionRefusedError", "OSError 113")
    assert as_nobody.startswith(blocked), as_nobody
    as_postgres = guest.agent.exec(
        [
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "python3",
            "-c",
            probe,
        ]
    )[1]
    assert as_postgres.startswith(blocked), as_postgres
    # Root is not blocked by the guard: its connect goes out (and times out: nothing answers).
    as_root = guest.agent.exec(["python3", "-c", probe])[1]
    assert as_root.startswith("TimeoutError"), as_root
    rules = guest.agent.sh("nft list table inet bakery_metadata_guard")
    assert re.search(r"169\.254\.169\.254 counter packets [1-9]", rules), rules


def test_image_is_generalized(guest):
    # The guest made its own identity at first boot: nothing came from the build.
    machine_id = guest.agent.sh("cat /etc/machine-id").strip()
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id)
    keys = guest.agent.sh("ls /etc/ssh/").split()
    assert "ssh_host_ed25519_key" in keys
    assert guest.agent.sh("ls -A /var/lib/postgresql/15/patroni | head -1").strip() != ""


def test_manifest_on_console_matches_definition(guest, built):
    # A getty prompt may share the console line with it (seen under load).
    printed = console_objects(guest.console_text(), "BAKERY-MANIFEST ")
    assert printed, "no BAKERY-MANIFEST line on the console"
    manifest = printed[-1]
    loaded = load_definition("local-test")
    d = loaded.definition
    assert manifest["image"] == d.name
    assert manifest["inputs_hash"] == loaded.inputs_hash()
    assert manifest["build_id"] == built.build_id
    assert manifest == built.manifest
    assert manifest["base"]["distribution"] == d.base.distribution
    assert manifest["base"]["release"] == d.base.release
    assert manifest["base"]["codename"] == d.base.codename
    c = manifest["components"]
    assert c["postgresql"]["major"] == d.components.postgresql.major
    assert c["postgresql"]["source"] == d.components.postgresql.source
    assert c["postgresql"]["version"].startswith(f"{d.components.postgresql.major}.")
    assert c["patroni"]["version"] == d.components.patroni.version
    assert c["psycopg2"]["version"] == d.components.psycopg2.version
    assert c["pgbackrest"]["package"].startswith(d.components.pgbackrest.version)
    assert c["nebula"]["package"].startswith(d.components.nebula.version)
    assert "consul" not in c
    # The same manifest is in the image.
    assert json.loads(guest.agent.sh("cat /etc/bakery/manifest.json")) == manifest


def test_cloud_init_spends_little_on_the_bundle(guest):
    """`cloud-init analyze`: time in the modules that handle the bundle; no package work."""
    dump = json.loads(guest.agent.sh("cloud-init analyze dump", timeout=60))
    finished = [e for e in dump if e.get("event_type") == "finish"]
    started = {e["name"]: e["timestamp"] for e in dump if e.get("event_type") == "start"}
    bundle = {}
    for event in finished:
        module = event["name"].rsplit("/", 1)[-1]
        if module in BUNDLE_EVENTS and event["name"] in started:
            bundle[module] = event["timestamp"] - started[event["name"]]
    assert set(bundle) >= {"config-write-files", "config-scripts-user"}, bundle
    total = sum(bundle.values())
    harness.FIGURES["cloud-init on the node bundle"] = (
        f"{total:.2f} s ({', '.join(f'{k} {v:.2f}' for k, v in sorted(bundle.items()))})"
    )
    stages = guest.agent.sh("cloud-init analyze show | grep -E '^Total Time|Finished stage'")
    harness.FIGURES["cloud-init stages"] = " | ".join(stages.split("\n")).strip(" |")
    # No package work at boot: dpkg wrote nothing since generalization emptied its log.
    # (How long the bundle takes is a figure for bench/image-bench, not an assertion.)
    assert guest.agent.sh("cat /var/log/dpkg.log 2>/dev/null | wc -c").strip() == "0"


def test_a_backup_schedule_written_after_boot_is_honoured_without_a_reload(guest):
    """What a bundle with backups does: cloud-init writes the timer's drop-in after systemd has
    booted, and runcmd starts the (never loaded) timer without `daemon-reload`."""
    dropin = "/etc/systemd/system/bakery-backup-full.timer.d/bakery-schedule.conf"
    guest.agent.sh(
        f"mkdir -p {dropin.rsplit('/', 1)[0]} && "
        f"printf '[Timer]\\nOnCalendar=\\nOnCalendar=Wed *-*-* 04:30:00\\n' > {dropin}"
    )
    try:
        guest.agent.sh("systemctl start bakery-backup-full.timer")
        shown = guest.agent.sh("systemctl show -p TimersCalendar bakery-backup-full.timer")
        assert "OnCalendar=Wed *-*-* 04:30:00" in shown, shown
        assert "Sun" not in shown, shown  # the image's calendar was replaced, not added to
    finally:
        guest.agent.exec(["systemctl", "stop", "bakery-backup-full.timer"])
        guest.agent.exec(["rm", "-rf", dropin.rsplit("/", 1)[0]])
