"""The feature-store handle every stage uses, built from the feature repo's profile YAML plus Settings.

Plain ``feast`` commands read the same YAML files from ``feature_repo/``; this module only points the
per-deployment parts (project, registry and online-store locations, Redis connection) at Settings, so tests and
jobs can run against their own project and data directory without editing the repo.
"""

import glob
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from feast import FeatureService, FeatureStore, FileSource, Project
from feast.errors import FeatureServiceNotFoundException
from feast.repo_config import RepoConfig
from feast.repo_contents import RepoContents
from feast.repo_operations import apply_total_with_repo_instance, parse_repo

from churn_common.errors import ConfigurationError, FeatureServiceNotFound
from churn_common.names import TODAY_TABLE
from churn_common.settings import Settings

logger = logging.getLogger(__name__)


class _MaterializingFlagWarning(logging.Filter):
    """Feast warns that ``serve_features_while_materializing`` "typically has no effect" with a file registry. It
    does have one: without it, online reads of views a materialisation marked MATERIALIZING fail, file registry
    or not (tests/feature_repo/test_online_redis.py::test_reads_keep_working_while_materializing shows both)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "serve_features_while_materializing" not in record.getMessage()


logging.getLogger("feast.repo_config").addFilter(_MaterializingFlagWarning())

PROFILE_FILES = {
    "embedded": "feature_store.yaml",
    "redis": "feature_store.redis.yaml",
    "production": "feature_store.production.yaml",
}
DEFINITION_MODULES = ("entities", "data_sources", "feature_views", "feature_services")
_DEFINITION_ENV = ("CHURN_DATA_DIR", "CHURN_CATALOG")
_ENV_REFERENCE = re.compile(r"\$\{(\w+)\}")


def profile_yaml(settings: Settings) -> Path:
    return settings.feature_repo / PROFILE_FILES[settings.feast_profile]


def _expansion_values(settings: Settings) -> dict[str, str]:
    """What ``${VAR}`` in the YAML may name: the environment, plus values Settings already knows."""
    values = dict(os.environ)
    values["CHURN_REDIS_CONNECTION_STRING"] = _yaml_quoted(settings.redis_connection_string)
    if settings.registry_url:
        values["CHURN_REGISTRY_URL"] = settings.registry_url
    return values


def _yaml_quoted(text: str) -> str:
    """``text`` escaped for where the profiles substitute it: inside a YAML double-quoted scalar, in which ``"``
    ends the value, ``\\`` starts an escape and a line break folds into a space (a password may hold any of them)."""
    return "".join(_yaml_char(char) for char in text)


def _yaml_char(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    if char.isprintable():
        return char
    return f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}"


def _expand(text: str, values: Mapping[str, str], source: Path) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ConfigurationError(f"{source.name} needs ${{{name}}}, which is not set")
        return values[name]

    return _ENV_REFERENCE.sub(substitute, text)


def _in_data_dir(settings: Settings, path: str) -> str:
    """A YAML path (relative to the feature repo, under its ``../data``) as this run must spell it.

    Feast records each SQLite table with the path it was created at (repo path joined to the YAML's), and a later
    ``feast apply`` that spells the same file differently drops the tables and creates them again: the online store
    emptied by an apply that changed nothing. With the default data directory the YAML's own spelling is kept, so
    ``churn`` and plain ``feast`` commands run from the repo spell it alike; another data directory gets the
    absolute path of the same file under it."""
    default_root = (settings.feature_repo / "../data").resolve()
    target = (settings.feature_repo / path).resolve()
    if settings.paths.root == default_root or not target.is_relative_to(default_root):
        return path
    return str(settings.paths.root / target.relative_to(default_root))


def _apply_overrides(raw: dict[str, Any], settings: Settings) -> dict[str, Any]:
    raw["project"] = settings.feast_project
    raw.setdefault("materialization", {})["online_write_batch_size"] = settings.online_write_batch_size
    registry = raw["registry"]
    if registry.get("registry_type", "file") == "file":
        registry["path"] = _in_data_dir(settings, registry["path"])
    if raw["online_store"].get("type") == "sqlite":
        raw["online_store"]["path"] = _in_data_dir(settings, raw["online_store"]["path"])
    return raw


def repo_config(settings: Settings) -> RepoConfig:
    source = profile_yaml(settings)
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read Feast profile {source}: {exc}") from exc
    raw = _apply_overrides(yaml.safe_load(_expand(text, _expansion_values(settings), source)), settings)
    config = RepoConfig(**raw)
    config.repo_path = settings.feature_repo.resolve()
    return config


def feature_store(settings: Settings) -> FeatureStore:
    config = repo_config(settings)
    if config.registry.registry_type == "file":
        (settings.feature_repo / config.registry.path).parent.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(settings.feature_repo), config=config)


def get_feature_service(store: FeatureStore, name: str) -> FeatureService:
    try:
        return store.get_feature_service(name)
    except FeatureServiceNotFoundException as exc:
        raise FeatureServiceNotFound(
            f"FeatureService {name!r} is not in the registry of project {store.project!r}; run `churn features apply`"
        ) from exc


@contextmanager
def _definitions_importable(settings: Settings) -> Iterator[None]:
    """Let Feast import the repo's modules the way ``feast apply`` does, against ``settings.data_dir`` and
    ``settings.catalog``.

    Feast names modules by their path relative to the working directory, and the definitions read the data
    directory and the catalogue from the environment, so all are pointed at this run and restored afterwards.
    """
    saved_cwd = os.getcwd()
    saved_env = {name: os.environ.get(name) for name in _DEFINITION_ENV}
    os.environ.update({"CHURN_DATA_DIR": str(settings.paths.root), "CHURN_CATALOG": settings.catalog})
    sys.path.insert(0, str(settings.feature_repo))
    for module in DEFINITION_MODULES:
        sys.modules.pop(module, None)  # a previous run may have imported them against another data dir
    os.chdir(settings.feature_repo)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.path.remove(str(settings.feature_repo))
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_definitions(settings: Settings, project: Project | None = None) -> RepoContents:
    """The repo's objects as ``feast apply`` sees them: without a Project object in the repo, the CLI adds the
    YAML's project to the contents, or the plan would delete the registered one ("Deleted project")."""
    with _definitions_importable(settings):
        contents = parse_repo(settings.feature_repo)
    if project is not None and not contents.projects:
        contents.projects.append(project)
    return contents


def _project(store: FeatureStore) -> Project:
    return Project(name=store.project, description=store.config.project_description or "")


def _features_of(service: FeatureService) -> list[tuple[str, str, str]]:
    return [(p.name, f.name, str(f.dtype)) for p in service.feature_view_projections for f in p.features]


def _refuse_redefinition(store: FeatureStore, contents: RepoContents) -> None:
    """A FeatureService is a model's contract: applying other features under a registered name would change what
    existing model versions read. A catalogue whose features change must name a new version."""
    for service in contents.feature_services:
        try:
            registered = store.get_feature_service(service.name)
        except FeatureServiceNotFoundException:
            continue
        if _features_of(registered) != _features_of(service):
            raise ConfigurationError(
                f"FeatureService {service.name!r} is registered in project {store.project!r} with other features: "
                "a catalogue whose features changed must name a new version (EventCatalog.feature_service, e.g. "
                f"{_next_version(service.name)!r})"
            )


def _next_version(name: str) -> str:
    stem, _, number = name.rpartition("_v")
    return f"{stem}_v{int(number) + 1}" if number.isdigit() else f"{name}_v2"


def _report_unbuilt_sources(contents: RepoContents) -> None:
    """Feast's own source check stats a FileSource's path as one file, so our glob paths always read as missing:
    a warning per view on every apply, built or not. This one expands the glob and says plainly what is not built."""
    for source in contents.data_sources:
        if not isinstance(source, FileSource) or glob.glob(source.path):
            continue
        if source.name == TODAY_TABLE:  # the offline side of a pushed view: nothing online waits for it
            logger.info(
                "no files yet for source %s (%s): the nightly build writes them (`churn features today`); the push "
                "path fills the online side meanwhile",
                source.name,
                source.path,
            )
            continue
        logger.info(
            "no files yet for source %s (%s): `churn features build` writes them; training and materialisation "
            "need them",
            source.name,
            source.path,
        )


def apply_repo(settings: Settings) -> FeatureStore:
    """``feast apply`` for this project: registers, updates and deletes objects to match the repo."""
    store = feature_store(settings)
    contents = load_definitions(settings, _project(store))
    _refuse_redefinition(store, contents)
    _report_unbuilt_sources(contents)
    apply_total_with_repo_instance(store, store.project, store.registry, contents, skip_source_validation=True)
    logger.info(
        "applied %d feature views and %d feature services to project %s",
        len(contents.feature_views),
        len(contents.feature_services),
        store.project,
    )
    return store
