"""The command line as a user meets it: the real `invoke` with config files."""

import json
import stat

from tests.helpers import PROJECT, base_config, invoke, merged, tree, write_config


def test_every_task_and_option_is_documented():
    listing = invoke("--list")
    assert listing.returncode == 0, listing.stderr
    for name in ("ca", "check", "render"):
        line = next(line for line in listing.stdout.splitlines() if line.strip().startswith(name))
        assert len(line.split()) > 1, f"task {name} has no help line"
    helped = invoke("--help", "render")
    assert "--az" in helped.stdout and "AZ label" in helped.stdout
    assert "--out" in helped.stdout and "directory" in helped.stdout


def test_render_writes_bundles_with_their_modes_and_no_secret_on_screen(tmp_path):
    config = write_config(tmp_path / "c.yaml", base_config(tmp_path))
    out = tmp_path / "out"
    result = invoke("-f", str(config), "ca", "render", "--az", "a", "--az", "b", "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [n["name"] for n in manifest["nodes"]] == ["prod1-postgresql-0", "prod4-postgresql-0"]
    for node in manifest["nodes"]:
        for entry in node["files"]:
            path = out / node["name"] / "files" / entry["path"].lstrip("/")
            assert oct(stat.S_IMODE(path.stat().st_mode)) == oct(int(entry["mode"], 8))
        user_data = out / node["name"] / "user-data"
        assert stat.S_IMODE(user_data.stat().st_mode) == 0o600
    secrets = {p.name: p.read_text().strip() for p in (tmp_path / "state/secrets").iterdir()}
    assert set(secrets) == {
        *("superuser", "replication", "rewind", "restapi", "admin", "admin.scram"),
        *("monitor", "monitor.scram"),
    }
    for secret in secrets.values():
        assert secret not in result.stdout + result.stderr
    env_file = (out / "prod1-postgresql-0/files/etc/patroni/patroni.env").read_text()
    assert f'PATRONI_SUPERUSER_PASSWORD="{secrets["superuser"]}"' in env_file
    # The administrator's password never reaches a node, only its SCRAM verifier.
    node_tree = tree(out / "prod1-postgresql-0")
    assert not any(secrets["admin"].encode() in content for content in node_tree.values())
    assert any(secrets["admin.scram"].encode() in content for content in node_tree.values())
    # The monitor's password is in postgres_exporter's own file only (post_bootstrap gets its
    # verifier), and the manifest says who may read that file.
    holding = sorted(
        p for p, content in node_tree.items() if secrets["monitor"].encode() in content
    )
    assert holding == ["files/etc/bakery/monitoring/postgres-exporter.password", "user-data"]
    entry = next(
        f
        for f in manifest["nodes"][0]["files"]
        if f["path"] == "/etc/bakery/monitoring/postgres-exporter.password"
    )
    assert (entry["owner"], entry["mode"]) == ("prometheus:prometheus", "0600")
    post_bootstrap = node_tree["files/etc/patroni/post-bootstrap.sh"].decode()
    assert secrets["monitor.scram"] in post_bootstrap


def test_rerender_is_stable(tmp_path):
    config = write_config(tmp_path / "c.yaml", base_config(tmp_path))
    first, second = tmp_path / "one", tmp_path / "two"
    assert invoke("-f", str(config), "ca", "render", "--out", str(first)).returncode == 0
    assert invoke("-f", str(config), "render", "--out", str(second)).returncode == 0
    assert tree(first) == tree(second)


def test_bad_config_reports_every_problem_and_writes_nothing(tmp_path):
    raw = merged(
        base_config(tmp_path),
        **{"azs.a.flavor": 42, "azs.b.colour": "red", "cluster.dcs.members": []},
    )
    config = write_config(tmp_path / "c.yaml", raw)
    out = tmp_path / "out"
    result = invoke("-f", str(config), "render", "--out", str(out))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "bakery: configuration has 3 problems:"
    assert (
        lines[1].strip().startswith("bakery.azs.a.flavor: Input should be a valid string (got 42)")
    )
    assert (
        lines[2].strip() == "bakery.azs.b.colour: unknown key (check the spelling; see examples/)"
    )
    assert lines[3].strip().startswith("bakery.cluster.dcs.members: ")
    assert "Traceback" not in result.stderr
    assert not out.exists() and not (tmp_path / "state").exists()


def test_unknown_az_and_missing_ca_change_nothing(tmp_path):
    config = write_config(tmp_path / "c.yaml", base_config(tmp_path))
    out = tmp_path / "out"
    result = invoke("-f", str(config), "render", "--az", "z", "--out", str(out))
    assert result.returncode == 1
    assert "--az: 'z' is not an AZ label of this config; known: a, b" in result.stderr
    result = invoke("-f", str(config), "render", "--out", str(out))
    assert result.returncode == 1
    assert "bakery.pki: CA certificate" in result.stderr and "invoke ca" in result.stderr
    assert not out.exists() and tree(tmp_path / "state") == {}


def test_malformed_yaml_is_a_clean_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("bakery:\n  azs: [\n")
    result = invoke("-f", str(config), "render", "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"bakery: {config}:3:1: not valid YAML: expected")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_render_refuses_to_overwrite_a_foreign_directory(tmp_path):
    config = write_config(tmp_path / "c.yaml", base_config(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    result = invoke("-f", str(config), "render", "--out", str(out))
    assert result.returncode == 1 and "refusing to overwrite" in result.stderr
    assert tree(out) == {"precious.txt": b"mine"}
    assert not (tmp_path / "state").exists()  # refused before any secret was made
    # A bake's output has a manifest.json too: it is not a render either.
    (out / "manifest.json").write_text('{"build_id": "local-test-1"}')
    result = invoke("-f", str(config), "render", "--out", str(out))
    assert result.returncode == 1 and "refusing to overwrite" in result.stderr
    (tmp_path / "file").write_text("x")
    result = invoke("-f", str(config), "render", "--out", str(tmp_path / "file"))
    assert result.returncode == 1 and "is a file, not a directory" in result.stderr


def test_check_task_reports_a_valid_config(tmp_path):
    config = write_config(tmp_path / "c.yaml", base_config(tmp_path))
    result = invoke("-f", str(config), "check")
    assert result.returncode == 0
    assert result.stdout.startswith("configuration valid: cluster patroni42")


def test_environment_overrides_project_config_and_runtime_file_wins(tmp_path):
    """Invoke's precedence: INVOKE_BAKERY_* beats invoke.yaml; `-f FILE` beats both."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "tasks.py").write_text((PROJECT / "tasks.py").read_text())
    write_config(project / "invoke.yaml", base_config(tmp_path))
    env = {"INVOKE_BAKERY_CLUSTER_SCOPE": "fromenv"}
    result = invoke("check", cwd=project, env=env, root=project)
    assert result.stdout.startswith("configuration valid: cluster fromenv"), result.stderr
    runtime = write_config(
        tmp_path / "runtime.yaml", merged(base_config(tmp_path), **{"cluster.scope": "fromfile"})
    )
    result = invoke("-f", str(runtime), "check", cwd=project, env=env, root=project)
    assert result.stdout.startswith("configuration valid: cluster fromfile"), result.stderr


def test_interrupts_end_with_the_usual_exit_codes():
    """Ctrl-C exits 130, SIGTERM 143 (128 + the signal), each after the task's cleanup."""
    import importlib.util

    import pytest
    from invoke import Exit

    from bakery.cleanup import Terminated

    spec = importlib.util.spec_from_file_location("bakery_tasks", PROJECT / "tasks.py")
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    for raised, code, text in (
        (KeyboardInterrupt(), 130, "bakery: interrupted"),
        (Terminated("signal 15"), 143, "bakery: terminated"),
    ):
        with pytest.raises(Exit) as caught, tasks._reported(None):
            raise raised
        assert (caught.value.code, caught.value.message) == (code, text)


def test_lifecycle_bad_input_is_one_line_and_touches_nothing(tmp_path):
    """Refused before any cloud is asked: a destroy without --yes, an unknown node."""
    config = write_config(tmp_path / "c.yaml", base_config(tmp_path))
    env = {"OS_CLIENT_CONFIG_FILE": str(tmp_path / "no-clouds.yaml")}
    # The error is the last line (configuration warnings may come first).
    destroy = invoke("-f", str(config), "destroy", "--az", "b", env=env)
    assert (destroy.returncode, destroy.stdout) == (1, "")
    assert destroy.stderr.splitlines()[-1] == (
        "bakery: destroy deletes the servers and ports of cluster patroni42 in AZ b: add --yes "
        "to do it; nothing was changed"
    )
    replace = invoke("-f", str(config), "replace", "prod9-postgresql-0", env=env)
    assert replace.returncode == 1
    assert replace.stderr.splitlines()[-1] == (
        "bakery: replace: no node 'prod9-postgresql-0' in this config; nodes: "
        "prod1-postgresql-0, prod4-postgresql-0"
    )
    assert not (tmp_path / "state").exists()
    for task, option in (("status", "--json"), ("roll", "--dry-run"), ("launch", "--no-wait")):
        helped = invoke("--help", task)
        assert helped.returncode == 0 and option in helped.stdout, task
