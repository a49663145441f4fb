#!/bin/bash
# The image manifest: component versions as installed, build id, inputs hash. Written into the
# image (one line of sorted JSON) and printed at every boot by bakery-manifest.service.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

files=$(dirname "$0")/files
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
python3 - "$tmp" <<'PY'
import json, os, platform, subprocess, sys

def run(*cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()

def deb(package):
    status = run("dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", package)
    if not status or not status.startswith("installed "):
        return None
    return status.split(" ", 1)[1]

def os_release():
    values = {}
    with open("/etc/os-release") as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep:
                values[key] = value.strip('"')
    return values

env = os.environ
rel = os_release()
kernels = sorted(n[len("vmlinuz-"):] for n in os.listdir("/boot") if n.startswith("vmlinuz-"))
components = {}
major = env["BAKERY_PG_MAJOR"]
if major and deb(f"postgresql-{major}"):
    postgres = f"/usr/lib/postgresql/{major}/bin/postgres"
    components["postgresql"] = {
        "major": int(major),
        "source": env["BAKERY_PG_SOURCE"],
        "package": deb(f"postgresql-{major}"),
        # "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)" -> "15.20"
        "version": (run(postgres, "--version") or "").partition("(PostgreSQL) ")[2].split(" ")[0],
    }
venv_python = os.path.join(env["BAKERY_PATRONI_VENV"], "bin", "python")
if os.path.exists(venv_python):
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d: m.version(d) for d in ('patroni', 'psycopg2-binary')}))")
    versions = json.loads(run(venv_python, "-c", code) or "{}")
    components["patroni"] = {"version": versions.get("patroni"), "venv": env["BAKERY_PATRONI_VENV"]}
    components["psycopg2"] = {"version": versions.get("psycopg2-binary")}
for name in ("pgbackrest", "nebula", "cloud-init", "prometheus-node-exporter",
             "prometheus-postgres-exporter"):
    if deb(name):
        components[name] = {"package": deb(name)}
if os.path.exists("/usr/local/bin/consul"):
    first = (run("/usr/local/bin/consul", "version") or "").splitlines()
    components["consul"] = {"version": first[0].removeprefix("Consul v") if first else None}

manifest = {
    "schema": 1,
    "image": env["BAKERY_IMAGE_NAME"],
    "build_id": env["BAKERY_BUILD_ID"],
    "inputs_hash": env["BAKERY_INPUTS_HASH"],
    "base": {
        "distribution": rel.get("ID"),
        "release": rel.get("VERSION_ID"),
        "codename": rel.get("VERSION_CODENAME"),
        "architecture": run("dpkg", "--print-architecture"),
        "kernel": kernels[-1] if kernels else platform.release(),
    },
    "components": components,
}
with open(sys.argv[1], "w") as f:
    f.write(json.dumps(manifest, sort_keys=True, separators=(",", ":")) + "\n")
PY
install-if-changed "$tmp" "$BAKERY_MANIFEST_PATH" root:root 0644
install-if-changed "$files/print-manifest" /usr/lib/bakery/print-manifest root:root 0755
install-if-changed "$files/bakery-manifest.service" /etc/systemd/system/bakery-manifest.service root:root 0644
systemctl is-enabled --quiet bakery-manifest.service 2>/dev/null || systemctl enable bakery-manifest.service
