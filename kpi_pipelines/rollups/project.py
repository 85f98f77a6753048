"""Where the dbt project is, which `dbt` runs it, and its manifest, prepared on load.

dagster-dbt builds the rollup assets from `dbt_project/target/manifest.json`. That file is
not committed: `prepare_manifest` writes it with `dbt parse` when it is missing or older
than a file of the project, so a fresh clone (or an edited model) loads without a manual
step, and under `dagster dev` it re-parses on every load, as `DbtProject.prepare_if_dev()`
does. The parse runs in a private target directory and the manifest is moved into place
atomically, under a file lock, so processes loading the definitions together (the
webserver's code server, the daemon, a run worker) neither parse twice nor read half a file.

dbt's parse state (`partial_parse.<target>-<digest>.msgpack`, one per warehouse profile) is
kept beside the manifest: written by that parse and by every successful dbt step
(`keep_parse_state`). Every dbt step copies it into its own target directory (dagster-dbt
gives each invocation one), so dbt re-reads only the files changed since instead of parsing
the whole project again (about 3 s of each step); the first step on a new warehouse parses
in full and leaves the state for the others. Loading the definitions parses nothing more.
That is why the run's window reaches dbt as environment variables (`DBT_MIN_DATE`,
`DBT_MAX_DATE`, read at execution only) rather than `--vars`: dbt throws its saved state
away whenever the command line's vars differ from the parse's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from dagster_dbt import DbtProject

logger = logging.getLogger("kpi_pipelines.rollups")

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"
# the files whose change makes the manifest stale
PARTIAL_PARSE_FILE = "partial_parse.msgpack"
KEPT_PARSE_STATES = 8
_PROJECT_GLOBS = ("dbt_project.yml", "profiles.yml", "models/**/*", "macros/**/*", "tests/**/*")


def dbt_executable() -> str:
    """The `dbt` of this interpreter's environment.

    dagster-dbt runs the `dbt` it finds on PATH, which fails (or runs another installation)
    when the virtual environment is not activated: a console script started by its full
    path, the daemon, a run worker. The script installed beside `sys.executable` is the one
    that belongs to the dbt-core, dbt-duckdb and dbt-postgres this project pins.
    """
    name = "dbt.exe" if os.name == "nt" else "dbt"
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("dbt")
    if found:
        return found
    raise FileNotFoundError(
        f"no dbt executable beside {sys.executable} or on PATH; install the project (pip install -e .)"
    )


dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def partial_parse_path(env: Mapping[str, str], project: DbtProject = dbt_project) -> Path:
    """dbt's saved parse state for the profile the DBT_* variables `env` select, written
    beside the manifest by `parse_project`. One file per profile, named by a digest of those
    variables: dbt discards a state parsed with another target or other connection values
    (path, host, schema: "profile has changed")."""
    digest = hashlib.sha256(json.dumps(sorted(env.items())).encode()).hexdigest()[:12]
    return project.manifest_path.with_name(f"partial_parse.{env.get('DBT_TARGET', 'duckdb')}-{digest}.msgpack")


def _keep_newest_parse_states(project: DbtProject) -> None:
    # states of warehouses no longer used (a test's temporary one) do not pile up
    states = sorted(project.manifest_path.parent.glob("partial_parse.*.msgpack"), key=lambda p: p.stat().st_mtime)
    for old in states[:-KEPT_PARSE_STATES]:
        old.unlink(missing_ok=True)


def _newest_project_mtime(project_dir: Path) -> float:
    newest = 0.0
    for pattern in _PROJECT_GLOBS:
        for path in project_dir.glob(pattern):
            if path.is_file():
                newest = max(newest, path.stat().st_mtime)
    return newest


def manifest_is_stale(project: DbtProject = dbt_project) -> bool:
    """The manifest is missing or older than a file of the dbt project."""
    manifest = project.manifest_path
    if not manifest.exists():
        return True
    return manifest.stat().st_mtime < _newest_project_mtime(project.project_dir)


def using_dagster_dev() -> bool:
    return bool(os.environ.get("DAGSTER_IS_DEV_CLI"))


def parse_project(project: DbtProject = dbt_project, env: Mapping[str, str] | None = None) -> float:
    """Run `dbt parse` into a private target directory, then move its manifest into place
    atomically. Returns the seconds it took."""
    started = time.perf_counter()
    target_dir = project.project_dir / project.target_path
    target_dir.mkdir(parents=True, exist_ok=True)
    scratch = target_dir / f".parse-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    # partial parsing on: the scratch directory has no earlier state, so this is a full
    # parse, and it leaves the state (partial_parse.msgpack) every dbt step starts from
    command = [dbt_executable(), "parse", "--quiet", "--partial-parse"]
    process_env = {
        **os.environ,
        **(env or {}),
        "DBT_TARGET_PATH": str(scratch),
        "DBT_LOG_PATH": str(scratch),
        "DBT_PROFILES_DIR": str(project.profiles_dir),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    try:
        completed = subprocess.run(
            command, cwd=project.project_dir, env=process_env, capture_output=True, text=True, timeout=300, check=False
        )
        if completed.returncode != 0 or not (scratch / "manifest.json").exists():
            detail = (completed.stdout + completed.stderr).strip().splitlines()
            raise RuntimeError(
                f"dbt parse of {project.project_dir} failed (exit {completed.returncode}): "
                + (" | ".join(detail[-5:]) if detail else "no output")
            )
        if (scratch / PARTIAL_PARSE_FILE).exists():
            os.replace(scratch / PARTIAL_PARSE_FILE, partial_parse_path(env or {}, project))
            _keep_newest_parse_states(project)
        os.replace(scratch / "manifest.json", project.manifest_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return time.perf_counter() - started


def prepare_manifest(
    project: DbtProject = dbt_project, env: Mapping[str, str] | None = None, force: bool = False
) -> bool:
    """Parse the project when its manifest is missing or stale (always under `dagster dev`).
    Returns whether it parsed. A failed parse raises when there is no manifest at all, and
    otherwise logs a warning and leaves the previous manifest in place."""
    from filelock import FileLock

    if not (force or using_dagster_dev() or manifest_is_stale(project)):
        return False
    target_dir = project.project_dir / project.target_path
    target_dir.mkdir(parents=True, exist_ok=True)
    before = project.manifest_path.stat().st_mtime if project.manifest_path.exists() else 0.0
    with FileLock(str(target_dir / ".manifest.lock"), timeout=300):
        # another process may have parsed while this one waited for the lock
        after = project.manifest_path.stat().st_mtime if project.manifest_path.exists() else 0.0
        if after > before and not manifest_is_stale(project):
            return False
        try:
            seconds = parse_project(project, env)
        except Exception as error:
            if not project.manifest_path.exists():
                raise
            # keep the code location loadable on the last good manifest; the dbt steps
            # parse the project again when they run and report the error there
            logger.warning("dbt parse failed, using the previous manifest: %s", error)
            return False
    logger.info("parsed the dbt project %s in %.1f s", project.project_dir, seconds)
    return True


def keep_parse_state(invocation_target: Path, env: Mapping[str, str], project: DbtProject = dbt_project) -> None:
    """Keep the parse state a successful dbt invocation (without --vars) left in its target
    directory as the state of its profile, for the next steps (atomically: another step may
    be copying the previous one)."""
    state = invocation_target / PARTIAL_PARSE_FILE
    if state.exists():
        os.replace(state, partial_parse_path(env, project))
        _keep_newest_parse_states(project)
