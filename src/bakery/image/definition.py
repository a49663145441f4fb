"""Image definitions (`images/<name>.yaml`): load, validate, map to the elements' inputs.

A definition says what goes into a golden image: the base (distribution, release, mirrors),
the pinned components (PostgreSQL major and source, Patroni with its hash-pinned lock,
psycopg2, pgBackRest, Consul with its SHA-256 per architecture, Nebula, the metrics exporters)
and extra packages.
From it follow the elements to run (`scripts/<element>/NN-verb-noun.sh`), the environment
variables they read (each element declares them in its `environment` file) and `inputs_hash`,
a hash over the definition and every file of the elements it uses, so a rebuild can tell
whether anything changed.

Every problem is reported at once with its field path, like the bakery configuration.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, StringConstraints, ValidationError

from ..errors import BakeryError, Problem
from ..validation import Label, Model, problem_of

PROJECT_ROOT = Path(__file__).resolve().parents[3]
IMAGES_DIR = PROJECT_ROOT / "images"
SCRIPTS_DIR = PROJECT_ROOT / "scripts"
# What a builder (cloud VM or local chroot) runs first; it starts run-elements.
BUILDER_RUNNER = PROJECT_ROOT / "cloud-init" / "builder-run.sh"

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Version = Annotated[str, StringConstraints(pattern=r"^[0-9][0-9A-Za-z.+~-]{0,40}$")]
DebPackage = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9+.-]{1,62}$")]
Url = Annotated[str, StringConstraints(pattern=r"^https?://[^\s'\"]+$")]
Arch = Literal["amd64", "arm64"]
# The system Python of each supported base (Patroni's venv is made from it).
PYTHON_OF_RELEASE = {
    ("debian", "12"): "311",
    ("debian", "13"): "313",
    ("ubuntu", "22.04"): "310",
    ("ubuntu", "24.04"): "312",
}


class ImageDefinitionError(BakeryError):
    """A definition with one or more problems; all of them are listed."""

    def __init__(self, source: str, problems: list[Problem]):
        self.problems = problems
        count = len(problems)
        heading = f"image definition {source} has {count} problem{'s' if count != 1 else ''}:"
        super().__init__("\n".join([heading, *(f"  {p}" for p in problems)]))


class Base(Model):
    distribution: Literal["debian", "ubuntu"]
    release: Annotated[str, StringConstraints(pattern=r"^[0-9][0-9.]*$")]
    codename: Label
    architectures: Annotated[list[Arch], Field(min_length=1)] = ["amd64"]
    # Used by the local builder (mmdebstrap); a cloud bake starts from the cloud's base image.
    mirror: Url = "http://deb.debian.org/debian"
    security_mirror: Url | None = "http://deb.debian.org/debian-security"


class Pgdg(Model):
    mirror: Url = "http://apt.postgresql.org/pub/repos/apt"
    key_url: Url = "https://www.postgresql.org/media/keys/ACCC4CF8.asc"
    key_fingerprint: Annotated[str, StringConstraints(pattern=r"^[0-9A-F]{40}$")] = (
        "B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8"
    )


class Postgresql(Model):
    major: Annotated[int, Field(ge=12, le=18)] = 14
    source: Literal["pgdg", "distro"] = "pgdg"
    pgdg: Pgdg = Pgdg()


class Patroni(Model):
    version: Version
    extras: list[Literal["consul", "etcd3"]] = ["consul", "etcd3"]
    # Requirements file with every package pinned and hashed, relative to images/.
    lock: Path


class Psycopg2(Model):
    version: Version


class PinnedPackage(Model):
    # A prefix of the Debian package version (upstream part), e.g. "2.45" or "1.6".
    version: Version | None = None


class Consul(Model):
    version: Version
    sha256: Annotated[dict[Arch, Sha256], Field(min_length=1)]
    url: Url | None = None
    # Offline builds: the release zips come from this directory (relative to images/).
    artifacts_dir: Path | None = None


class Exporters(Model):
    """Debian's metrics exporters; prefixes of the Debian versions (e.g. "1.5", "0.11")."""

    node_exporter: Version | None = None
    postgres_exporter: Version | None = None


class Components(Model):
    postgresql: Postgresql = Postgresql()
    patroni: Patroni
    psycopg2: Psycopg2
    pgbackrest: PinnedPackage | None = PinnedPackage()
    consul: Consul | None = None
    nebula: PinnedPackage | None = PinnedPackage()
    # node_exporter and postgres_exporter, disabled until a node bundle enables them.
    exporters: Exporters | None = Exporters()


class ImageDefinition(Model):
    name: Label
    description: str = ""
    base: Base
    components: Components
    extra_packages: list[DebPackage] = []
    # MiB a VM of this image needs to boot and run (the image's min_ram in the cloud, as
    # SCS-0102 demands); unset: the RAM of the flavor the builder ran on.
    min_ram: Annotated[int, Field(ge=64, le=4 * 1024 * 1024)] | None = None


@dataclass(frozen=True)
class LoadedDefinition:
    """A validated definition plus what follows from it."""

    path: Path
    definition: ImageDefinition
    lock_path: Path
    consul_artifacts_dir: Path | None

    @property
    def name(self) -> str:
        return self.definition.name

    def elements(self) -> list[str]:
        """The elements to run, in the order of their dependencies (scripts sort by number)."""
        c = self.definition.components
        chosen = ["base", "postgresql"]
        chosen += ["pgbackrest"] if c.pgbackrest is not None else []
        chosen += ["consul", "consul-dns"] if c.consul is not None else []
        chosen += ["nebula"] if c.nebula is not None else []
        chosen += ["patroni", "psycopg2", "units", "reporter"]
        chosen += ["exporters"] if c.exporters is not None else []
        chosen += ["metadata-guard", "manifest", "generalize"]
        return chosen

    def element_env(
        self,
        arch: str,
        build_id: str,
        lock_in_target: str,
        consul_artifacts_in_target: str | None = None,
    ) -> dict[str, str]:
        """The variables the elements declare, as the definition sets them for one build."""
        d = self.definition
        c = d.components
        pg = c.postgresql
        env = {
            "BAKERY_IMAGE_NAME": d.name,
            "BAKERY_BUILD_ID": build_id,
            "BAKERY_INPUTS_HASH": self.inputs_hash(),
            "BAKERY_EXTRA_PACKAGES": " ".join(d.extra_packages),
            "BAKERY_PG_MAJOR": str(pg.major),
            "BAKERY_PG_SOURCE": pg.source,
            "BAKERY_PGDG_MIRROR": pg.pgdg.mirror if pg.source == "pgdg" else "",
            "BAKERY_PGDG_KEY_URL": pg.pgdg.key_url if pg.source == "pgdg" else "",
            "BAKERY_PGDG_KEY_FINGERPRINT": pg.pgdg.key_fingerprint if pg.source == "pgdg" else "",
            "BAKERY_PATRONI_VERSION": c.patroni.version,
            "BAKERY_PATRONI_EXTRAS": ",".join(c.patroni.extras),
            "BAKERY_PATRONI_LOCK": lock_in_target,
            "BAKERY_PSYCOPG2_VERSION": c.psycopg2.version,
        }
        if c.pgbackrest is not None:
            env["BAKERY_PGBACKREST_VERSION"] = c.pgbackrest.version or ""
        if c.nebula is not None:
            env["BAKERY_NEBULA_VERSION"] = c.nebula.version or ""
        if c.exporters is not None:
            env["BAKERY_NODE_EXPORTER_VERSION"] = c.exporters.node_exporter or ""
            env["BAKERY_POSTGRES_EXPORTER_VERSION"] = c.exporters.postgres_exporter or ""
        if c.consul is not None:
            if arch not in c.consul.sha256:
                raise ImageDefinitionError(
                    str(self.path),
                    [Problem("components.consul.sha256", f"no checksum for architecture {arch}")],
                )
            env["BAKERY_CONSUL_VERSION"] = c.consul.version
            env["BAKERY_CONSUL_SHA256"] = c.consul.sha256[arch]
            env["BAKERY_CONSUL_URL"] = c.consul.url or ""
            env["BAKERY_CONSUL_ARTIFACTS_DIR"] = consul_artifacts_in_target or ""
        return env

    def element_files(self) -> list[Path]:
        """Every file the build runs: the builder's runner, run-elements and its helpers, the
        chosen elements' files."""
        files = [BUILDER_RUNNER, SCRIPTS_DIR / "run-elements"]
        files += sorted((SCRIPTS_DIR / "bin").iterdir())
        for element in self.elements():
            files += sorted(p for p in (SCRIPTS_DIR / element).rglob("*") if p.is_file())
        return files

    def inputs_hash(self) -> str:
        """SHA-256 over the definition, the Patroni lock and every element file it uses."""
        digest = hashlib.sha256()
        canonical = json.dumps(self.definition.model_dump(mode="json"), sort_keys=True)
        digest.update(b"definition\0" + canonical.encode() + b"\0")
        digest.update(b"lock\0" + self.lock_path.read_bytes() + b"\0")
        for path in self.element_files():
            inside = path.is_relative_to(SCRIPTS_DIR)
            relative = path.relative_to(SCRIPTS_DIR).as_posix() if inside else path.name
            digest.update(f"file\0{relative}\0".encode() + path.read_bytes() + b"\0")
        return digest.hexdigest()


def definition_path(name_or_path: str | Path) -> Path:
    """`postgresql14-patroni` names images/postgresql14-patroni.yaml; a path is taken as is."""
    text = str(name_or_path)
    if "/" in text or text.endswith((".yaml", ".yml")):
        return Path(text)
    return IMAGES_DIR / f"{text}.yaml"


def load_definition(name_or_path: str | Path) -> LoadedDefinition:
    """Read and validate a definition; raise ImageDefinitionError listing every problem."""
    path = definition_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ImageDefinitionError(str(path), [Problem("file", str(error))]) from None
    except yaml.YAMLError as error:
        raise ImageDefinitionError(str(path), [Problem("file", f"not YAML: {error}")]) from None
    return validate_definition(raw, path)


def validate_definition(raw: Any, path: Path) -> LoadedDefinition:
    if not isinstance(raw, Mapping):
        raise ImageDefinitionError(str(path), [Problem("(top)", "expected a mapping")])
    try:
        definition = ImageDefinition.model_validate(dict(raw))
    except ValidationError as error:
        raise ImageDefinitionError(
            str(path), [problem_of(e, None, "images/README.md") for e in error.errors()]
        ) from None
    base_dir = path.resolve().parent
    problems: list[Problem] = []
    c = definition.components
    if path.stem != definition.name:
        problems.append(Problem("name", f"'{definition.name}' differs from the file name"))
    lock_path = (base_dir / c.patroni.lock).resolve()
    if not lock_path.is_file():
        problems.append(Problem("components.patroni.lock", f"no such file: {lock_path}"))
    else:
        problems += _lock_problems(definition, lock_path)
    artifacts = None
    if c.consul is not None and c.consul.artifacts_dir is not None:
        artifacts = (base_dir / c.consul.artifacts_dir).resolve()
        if not artifacts.is_dir():
            problems.append(
                Problem("components.consul.artifacts_dir", f"no such directory: {artifacts}")
            )
    if c.consul is not None:
        missing = [a for a in definition.base.architectures if a not in c.consul.sha256]
        if missing:
            problems.append(
                Problem("components.consul.sha256", f"no checksum for {', '.join(missing)}")
            )
    python = PYTHON_OF_RELEASE.get((definition.base.distribution, definition.base.release))
    if python is None:
        problems.append(
            Problem(
                "base.release",
                f"{definition.base.distribution} {definition.base.release} is not one of "
                f"{', '.join(f'{d} {r}' for d, r in PYTHON_OF_RELEASE)}",
            )
        )
    elif f"-py{python}" not in Path(c.patroni.lock).name:
        # Binary wheels in the lock are built for one Python: they install nowhere else.
        problems.append(
            Problem(
                "components.patroni.lock",
                f"{definition.base.distribution} {definition.base.release} has Python "
                f"{python[0]}.{python[1:]}: use a lock named *-py{python}.txt",
            )
        )
    if c.postgresql.source == "distro" and definition.base.distribution == "debian":
        shipped = {"11": 13, "12": 15, "13": 17}.get(definition.base.release)
        if shipped is not None and shipped != c.postgresql.major:
            problems.append(
                Problem(
                    "components.postgresql.major",
                    f"Debian {definition.base.release} ships PostgreSQL {shipped}, not "
                    f"{c.postgresql.major}: use source 'pgdg' or major {shipped}",
                )
            )
    if problems:
        raise ImageDefinitionError(str(path), problems)
    return LoadedDefinition(path, definition, lock_path, artifacts)


def _lock_problems(definition: ImageDefinition, lock_path: Path) -> list[Problem]:
    """The lock must pin what the definition says: Patroni (with extras) and psycopg2."""
    pins: dict[str, str] = {}
    for line in lock_path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement = line.split()[0]
        if "==" not in requirement or "--hash=sha256:" not in line:
            return [Problem("components.patroni.lock", f"not pinned with a hash: {requirement}")]
        name, version = requirement.split("==", 1)
        pins[name.lower()] = version
    c = definition.components
    problems = []
    extras = ",".join(c.patroni.extras)
    want = f"patroni[{extras}]" if extras else "patroni"
    if pins.get(want) != c.patroni.version:
        problems.append(
            Problem(
                "components.patroni", f"{lock_path.name} does not pin {want}=={c.patroni.version}"
            )
        )
    if pins.get("psycopg2-binary") != c.psycopg2.version:
        problems.append(
            Problem(
                "components.psycopg2.version",
                f"{lock_path.name} does not pin psycopg2-binary=={c.psycopg2.version}",
            )
        )
    return problems


def declared_inputs(element: str) -> dict[str, str | None]:
    """An element's declared variables: name -> default (None when required)."""
    declared: dict[str, str | None] = {}
    env_file = SCRIPTS_DIR / element / "environment"
    if not env_file.exists():
        return declared
    for line in env_file.read_text().splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        name, sep, default = fields[0].partition("=")
        declared[name] = default if sep else None
    return declared
