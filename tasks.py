"""bakery's command line: thin Invoke tasks.

Each task parses its arguments, calls the bakery package and turns a BakeryError into a short
message and a non-zero exit. Heavy imports happen inside the tasks, so `invoke --list` stays
fast. Settings come from Invoke's configuration under `bakery:` (invoke.yaml, `invoke -f FILE`,
INVOKE_BAKERY_* variables); BAKERY_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from invoke import Collection, Exit, task


def _plain(value):
    """Invoke's config proxies as plain dicts and lists, for validation."""
    if hasattr(value, "keys"):
        return {key: _plain(value[key]) for key in value}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@contextmanager
def _reported(c):
    """Turn bakery's errors into a clean exit; Ctrl-C into exit code 130, SIGTERM 143."""
    from bakery.cleanup import Terminated
    from bakery.errors import BakeryError

    try:
        yield
    except BakeryError as error:
        if os.environ.get("BAKERY_DEBUG"):
            raise
        raise Exit(f"bakery: {error}", code=1) from None
    except Terminated:
        raise Exit("bakery: terminated", code=143) from None
    except KeyboardInterrupt:
        raise Exit("bakery: interrupted", code=130) from None


def _clear_yaml_errors() -> None:
    """Invoke reads the `-f FILE` config after loading this module and answers a YAML syntax
    error with a traceback. Make it one line with the file and position, like any bad input."""
    from invoke.config import Config
    from invoke.util import yaml

    def load_yaml(self, path):
        try:
            with open(path) as handle:
                return yaml.safe_load(handle)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            problem = getattr(error, "problem", None) or str(error)
            raise Exit(f"bakery: {where}: not valid YAML: {problem}", code=1) from None

    Config._load_yaml = Config._load_yml = load_yaml


_clear_yaml_errors()


def _settings(c):
    from bakery.config import config_warnings, load_settings

    settings = load_settings(_plain(c.config.get("bakery")))
    for warning in config_warnings(settings):
        print(f"bakery: warning: {warning}", file=sys.stderr)
    return settings


@task(
    help={
        "az": "AZ label from the config (repeat for several); default: every AZ",
        "out": "directory for the bundles (replaced if it holds an earlier render)",
    },
    iterable=["az"],
)
def render(c, az, out="out/render"):
    """Render every node's bundle and user-data, without any cloud access."""
    with _reported(c):
        from bakery.node.render import (
            check_output,
            prometheus_files,
            render_cluster,
            write_bundles,
        )

        settings = _settings(c)
        check_output(Path(out))
        bundles = render_cluster(settings, az)
        extra = prometheus_files(settings, bundles)
        write_bundles(bundles, Path(out), settings.cluster.scope, extra)
        for bundle in bundles:
            print(
                f"{bundle.node.name}: {len(bundle.files)} files, services "
                f"{', '.join(bundle.services)}, user-data {bundle.user_data_base64_size} "
                "bytes in base64"
            )
        print(f"rendered {len(bundles)} node(s) into {out} (Prometheus targets: {out}/prometheus)")
        if settings.cluster.restore is not None:
            from bakery.node.backup import describe_restore

            print(describe_restore(settings))


@task
def ca(c):
    """Create the CAs (and Consul trial keys) the config points to, where missing."""
    with _reported(c):
        from bakery.ca import create_missing

        created = create_missing(_settings(c))
        for line in created:
            print(f"created {line}")
        if not created:
            print("nothing to create: every CA and key the config names exists")


@task
def check(c):
    """Validate the configuration and report every problem."""
    with _reported(c):
        settings = _settings(c)
        print(
            f"configuration valid: cluster {settings.cluster.scope}, "
            f"{len(settings.environments)} environment(s), AZs {', '.join(settings.azs)}"
        )


@task(
    help={
        "target": "'cloud' (default: every environment of the config) or 'local' (this "
        "machine, as root: raw + qcow2)",
        "definition": "image definition name or path; default: the config's image.definition",
        "environment": "cloud: only this environment (repeat for several); default: all",
        "out": "local: output directory; default: build/<definition>",
    },
    iterable=["environment"],
)
def bake(c, environment, target="cloud", definition=None, out=None):
    """Bake the golden image: the elements of images/<definition>.yaml, verified, released."""
    with _reported(c):
        _check_target("bake", target)
        if target == "local":
            _bake_local(c, definition, out, environment)
            return
        from bakery.cloud.bake import bake as bake_in_cloud

        result = bake_in_cloud(_settings(c), definition, environment or None, log=_progress)
        for image in result.images:
            print(f"{image.environment}: {image.name} {image.image_id} released")
        print(f"baked {result.build_id} in {len(result.images)} environment(s)")


def _bake_local(c, definition, out, environment):
    from bakery.errors import BakeryError
    from bakery.image.localbuild import build

    if environment:
        raise BakeryError("bake --environment is for --target cloud; a local bake has none")
    if definition is None and c.config.get("bakery") is None:
        raise BakeryError(
            "bake: no image definition: give --definition NAME (images/NAME.yaml; "
            "local-test builds here without a cloud) or a config with image.definition"
        )
    name = definition or _settings(c).image.definition
    result = build(name, Path(out or f"build/{Path(str(name)).stem}"))
    print(f"baked {result.build_id}: {result.qcow2} ({result.sizes['qcow2']} bytes), {result.raw}")


@task(
    help={
        "az": "AZ label from the config (repeat: --az a --az b); default: every AZ",
        "target": "'cloud' (default: the newest released image) or 'local' (QEMU VMs of the "
        "local bake on this machine, as root)",
        "no_wait": "cloud: return once the servers are ACTIVE, without waiting for health",
        "dry_run": "local: print the plan and create nothing",
    },
    iterable=["az"],
)
def launch(c, az, target="cloud", no_wait=False, dry_run=False):
    """Start the nodes of the chosen AZs (those missing) and wait for a healthy cluster."""
    with _reported(c):
        _check_target("launch", target)
        if target == "local":
            _only_for("launch", "cloud", no_wait=no_wait)
            _launch_local(c, az, dry_run)
            return
        _only_for("launch", "local", dry_run=dry_run)
        from bakery.cloud.launch import launch as launch_nodes

        result = launch_nodes(
            _settings(c), az, log=_progress, wait=not no_wait, progress=_progress_display()
        )
        for node in result.nodes:
            what = "launched" if node.created else "existed"
            print(f"{node.name}: AZ {node.az}, {node.address}, server {node.server_id} ({what})")
        created = [n for n in result.nodes if n.created]
        print(f"launched {len(created)} node(s), {len(result.nodes) - len(created)} existed")
        if result.view is not None:
            from bakery.cloud.status import as_text, status_of

            print(as_text(status_of(result.view)))


@task(
    help={
        "az": "cloud: only the nodes of this AZ (repeat for several); default: every AZ",
        "json": "cloud: print the stable JSON document (docs/lifecycle.md) instead of the table",
        "target": "'cloud' (default) or 'local' (the cluster `invoke launch --target local` "
        "started here)",
    },
    iterable=["az"],
)
def status(c, az, json=False, target="cloud"):
    """Each node's server, image and last report; exit 0 healthy, 1 degraded, 2 unreadable."""
    with _reported(c):
        _check_target("status", target)
        if target == "local":
            _only_for("status", "cloud", az=az, json=json)
            _status_local(c)
            return
        from bakery.cloud.status import as_json, as_text
        from bakery.cloud.status import status as cluster_status

        result = cluster_status(_settings(c), az)
        if json:
            import json as json_module

            print(json_module.dumps(as_json(result), indent=2))
        else:
            print(as_text(result))
        if result.exit_code:
            raise Exit(code=result.exit_code)


@task(help={"dry_run": "only print the plan: which node, in which order, from which image"})
def roll(c, dry_run=False):
    """Move every node onto the newest released generation: replicas first, the leader last."""
    with _reported(c):
        from bakery.cloud.roll import roll as roll_cluster
        from bakery.cloud.roll import summary

        result = roll_cluster(
            _settings(c), dry_run=dry_run, log=_progress, progress=_progress_display()
        )
        print("dry run: nothing was changed" if dry_run else summary(result))


@task(help={"node": "the node's name (`invoke status` lists them)"})
def replace(c, node):
    """Give a node a new server from the newest released generation on its port."""
    with _reported(c):
        from bakery.cloud.replace import replace as replace_node

        done = replace_node(_settings(c), node, log=_progress, progress=_progress_display())
        old = done.old_image or "no server"
        print(f"{done.node}: {old} -> {done.new_image} in {done.seconds:.0f} s")


@task(
    help={
        "az": "cloud: only the nodes of this AZ (repeat for several); default: the whole cluster",
        "yes": "cloud: really delete the servers and ports",
        "target": "'cloud' (default) or 'local' (the cluster `invoke launch --target local` "
        "started here: its VMs, namespaces, disks and logs)",
    },
    iterable=["az"],
)
def destroy(c, az, yes=False, target="cloud"):
    """Stop and delete the cluster's servers, then its ports (images stay); or the local one."""
    with _reported(c):
        _check_target("destroy", target)
        if target == "local":
            _only_for("destroy", "cloud", az=az)
            _destroy_local(c)
            return
        from bakery.cloud.destroy import destroy as destroy_cluster

        result = destroy_cluster(_settings(c), az, yes, log=_progress)
        print(f"deleted {len(result.servers)} server(s) and {len(result.ports)} port(s)")


@task(
    help={
        "force": "bake a new generation even if nothing changed",
        "dry_run": "only say what would be baked, retired and deleted",
        "roll": "then roll the cluster onto the newest generation if it is healthy (fail if not)",
    }
)
def rebuild(c, force=False, dry_run=False, roll=False):
    """Bake a new generation if inputs, base image or age call for it; retire old ones."""
    with _reported(c):
        from bakery.cloud.rebuild import rebuild as run_rebuild

        result = run_rebuild(
            _settings(c), force=force, dry_run=dry_run, log=_progress, roll=roll and not dry_run
        )
        if result.rolled:
            print(result.rolled)
        if result.baked is not None:
            print(f"baked {result.baked.build_id}")
        elif any(result.reasons.values()):
            print("a new generation is due (dry run: nothing baked)")
        else:
            print("every environment's newest released image is current")
        for label, names in result.deleted.items():
            if names:
                print(f"{label}: {'would delete' if dry_run else 'deleted'} {', '.join(names)}")


def _check_target(name: str, target: str) -> None:
    if target not in ("cloud", "local"):
        from bakery.errors import BakeryError

        raise BakeryError(f"{name} --target {target!r}: allowed are 'cloud' and 'local'")


def _only_for(name: str, target: str, **options) -> None:
    """Refuse options given (truthy) that only the other target has."""
    given = [k for k, v in options.items() if v]
    if given:
        from bakery.errors import BakeryError

        shown = ", ".join("--" + k.replace("_", "-") for k in given)
        raise BakeryError(f"{name} {shown}: only with --target {target}")


def _launch_local(c, az, dry_run):
    from bakery.local.launch import launch as launch_local

    result = launch_local(_settings(c), az, dry_run=dry_run, log=_progress)
    if dry_run:
        print("\n".join(result.lines()))
        print("dry run: nothing was created")
        return
    print(result.table)
    print(f"local cluster {result.run}: healthy after {result.seconds:.0f} s")
    print(f"tear it down: {_invocation(c)} destroy --target local")


def _invocation(c) -> str:
    """How this command was called, to print the next one (same program, same -f file)."""
    import shlex

    program = sys.argv[0] if "/" in sys.argv[0] else "invoke"
    config = c.config._runtime_path
    return shlex.join([program, *(["-f", str(config)] if config else [])])


def _status_local(c):
    from bakery.local.status import status as local_status

    result = local_status(_settings(c))
    print(result.heading)
    if result.table:
        print(result.table)
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(result.verdict)
    if result.exit_code:
        raise Exit(code=result.exit_code)


def _destroy_local(c):
    from bakery.local.destroy import destroy as destroy_local

    run = destroy_local(_settings(c), log=_progress)
    print(f"destroyed {run}" if run else "no local cluster of this config: nothing to destroy")


_PROGRESS = threading.Lock()


def _progress(line: str) -> None:
    """One whole line at a time: environments that work in parallel log from their own
    threads, and print() writes a line and its newline separately."""
    with _PROGRESS:
        sys.stdout.write(f"bakery: {line}\n")
        sys.stdout.flush()


def _progress_display():
    """Waits redraw one line per node on a terminal, and log changed lines elsewhere."""
    import sys

    from bakery.cloud.watch import Progress

    return Progress(_progress, sys.stdout)


ns = Collection(render, ca, check, bake, launch, status, roll, replace, destroy, rebuild)
