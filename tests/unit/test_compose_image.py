"""The image every queuewatch service runs (infra/Dockerfile), checked without a Docker engine.

The Dockerfile is parsed with BuildKit's own parser and linted with hadolint; the wheel the
image installs is built here, offline, and unpacked alone (no checkout, no site-packages) to
show that it carries the Avro schemas and the ClickHouse migrations and that
``queuewatch.resources`` finds them there, as it must inside the image.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import dockerfile
import pytest

from queuewatch.resources import REPO_ROOT
from queuewatch.settings import all_settings

DOCKERFILE = REPO_ROOT / "infra" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
#: Checkout folder -> where the wheel carries it (pyproject's force-include).
BUNDLED = {
    "schemas": "queuewatch/_bundled/schemas",
    "infra/clickhouse": "queuewatch/_bundled/clickhouse",
}


@pytest.fixture(scope="module")
def instructions() -> list[dockerfile.Command]:
    """The Dockerfile, as BuildKit parses it."""
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def _stages(instructions: list[dockerfile.Command]) -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _build_args(instructions: list[dockerfile.Command]) -> dict[str, str]:
    args = {}
    for ins in instructions:
        if ins.cmd == "ARG" and "=" in ins.value[0]:
            name, _, default = ins.value[0].partition("=")
            args[name] = default
    return args


def test_hadolint_finds_nothing_to_fix_in_the_dockerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    proc = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_both_stages_start_from_one_pinned_slim_python(
    instructions: list[dockerfile.Command],
) -> None:
    bases = [ins.value[0] for ins in instructions if ins.cmd == "FROM"]
    assert len(bases) == 2, "a build stage and a runtime stage"
    assert set(bases) == {"${PYTHON_IMAGE}"}, "the copied venv needs the same interpreter"
    base = _build_args(instructions)["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.1[1-9]\.\d+-slim-[a-z]+", base), f"not pinned: {base}"


def test_the_runtime_stage_runs_as_an_unprivileged_user(
    instructions: list[dockerfile.Command],
) -> None:
    runtime = _stages(instructions)[-1]
    users = [ins.value[0] for ins in runtime if ins.cmd == "USER"]
    assert users, "the runtime stage never leaves root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"USER {users[-1]}"


def test_the_runtime_stage_installs_nothing_and_takes_only_the_built_venv(
    instructions: list[dockerfile.Command],
) -> None:
    runtime = _stages(instructions)[-1]
    copies = [ins for ins in runtime if ins.cmd in {"COPY", "ADD"}]
    assert [(c.flags, c.value) for c in copies] == [
        (("--from=build",), ("/opt/queuewatch", "/opt/queuewatch"))
    ]
    for ins in runtime:
        if ins.cmd == "RUN":
            for tool in ("pip", "apt-get", "apk", "gcc", "make", "build-essential"):
                assert tool not in ins.value[0], f"runtime stage runs {tool}: {ins.value[0]}"


def test_the_entrypoint_is_queuewatch_in_exec_form(
    instructions: list[dockerfile.Command],
) -> None:
    entrypoints = [ins for ins in instructions if ins.cmd == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    assert entrypoints[0].json and entrypoints[0].value == ("queuewatch",)


def test_every_queuewatch_variable_the_image_sets_is_a_setting(
    instructions: list[dockerfile.Command],
) -> None:
    names = {doc.env for doc in all_settings()}
    for ins in instructions:
        if ins.cmd == "ENV":
            keys = ins.value[0::2]
            unknown = {k for k in keys if k.startswith("QUEUEWATCH_")} - names
            assert not unknown, f"the image sets unknown settings {unknown}"


def _dockerignore_allows(path: str) -> bool:
    """Whether .dockerignore lets ``path`` into the build context (last matching rule wins)."""
    allowed = True
    for raw in DOCKERIGNORE.read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or fnmatch.fnmatch(path, pattern):
            allowed = negate
    return allowed


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_local_state(
    instructions: list[dockerfile.Command],
) -> None:
    sources = [
        src
        for ins in instructions
        if ins.cmd == "COPY" and not any(f.startswith("--from") for f in ins.flags)
        for src in ins.value[:-1]
    ]
    assert sources
    for src in sources:
        assert (REPO_ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert _dockerignore_allows(src), f"COPY {src}: excluded by .dockerignore"
    for private in (".env", ".venv/bin/python", "var/kafka", ".git/config", "tests/conftest.py"):
        assert not _dockerignore_allows(private), f"{private} would be sent to the build"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline with the hatchling in this venv."""
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO_ROOT),
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("queuewatch-*.whl")
    return built


def test_the_wheel_bundles_every_schema_and_migration_of_the_checkout(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for folder, target in BUNDLED.items():
            files = [p for p in (REPO_ROOT / folder).rglob("*") if p.is_file()]
            assert files, f"{folder} is empty in the checkout"
            for path in files:
                inside = f"{target}/{path.relative_to(REPO_ROOT / folder).as_posix()}"
                assert inside in names, f"{inside} missing from the wheel"
                assert archive.read(inside) == path.read_bytes(), f"{inside} differs"


def test_the_installed_wheel_finds_its_bundled_files_without_a_checkout(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    script = (
        "import queuewatch, queuewatch.resources as r\n"
        "print(queuewatch.__file__)\n"
        "print(r.schemas_dir())\n"
        "print(r.migrations_dir())\n"
        "print(len(list(r.schemas_dir().glob('*.avsc'))))\n"
        "print(len(list(r.migrations_dir().glob('*.sql'))))\n"
    )
    # -S: no site-packages, so neither the editable install nor the checkout can answer.
    proc = subprocess.run(
        [sys.executable, "-S", "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    package, schemas, migrations, n_schemas, n_migrations = proc.stdout.split("\n")[:5]
    assert Path(package).is_relative_to(site)
    assert Path(schemas) == site / "queuewatch" / "_bundled" / "schemas"
    assert Path(migrations) == site / "queuewatch" / "_bundled" / "clickhouse"
    assert int(n_schemas) == len(list((REPO_ROOT / "schemas").glob("*.avsc")))
    assert int(n_migrations) == len(list((REPO_ROOT / "infra" / "clickhouse").glob("*.sql")))
