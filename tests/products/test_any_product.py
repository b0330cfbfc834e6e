"""Any product: the stages read event types from the catalogue, never by name. A scan of the stage packages' source
for the e-learning catalogue's event types and feature stems (a new hard-coded one would tie a stage to one
product), and the FeatureService contract: a catalogue whose features change must name a new version."""

import re
from pathlib import Path

import pytest
from feast import FeatureService

from churn_common.errors import ConfigurationError
from churn_common.settings import PROJECT_ROOT, Settings
from churn_common.store import _refuse_redefinition, apply_repo, feature_store, load_definitions
from products.elearning import CATALOG as ELEARNING

STAGES = ("transformations", "training", "serving")


def _names() -> set[str]:
    names = set(ELEARNING.names)
    for event in ELEARNING.event_types:
        names |= {stem for stem in (event.count_feature, event.value_feature) if stem}
    return names


def _hits(root: Path, names: set[str]) -> list[str]:
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names))) + r")\b")
    hits = []
    for path in sorted(root.rglob("*")):
        if path.suffix in {".py", ".html", ".js", ".j2"}:
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    hits.append(f"{path}:{number}: {line.strip()}")
    return hits


def test_no_stage_names_an_event_type_of_a_product() -> None:
    names = _names()
    assert {"login", "video_watch", "watch_minutes"} <= names  # the scan looks for real names
    hits = [hit for stage in STAGES for hit in _hits(PROJECT_ROOT / stage, names)]
    assert not hits, "a stage names the e-learning catalogue's events; read them from the catalogue:\n" + "\n".join(
        hits
    )


def test_the_scan_finds_a_hard_coded_event_type(tmp_path: Path) -> None:
    (tmp_path / "stage.py").write_text('if event_type == "video_watch":\n    pass\n# watch_minutesish\n')
    [hit] = _hits(tmp_path, _names())
    assert hit.endswith(':1: if event_type == "video_watch":')


def test_a_registered_feature_service_cannot_be_redefined_under_its_name(settings: Settings) -> None:
    apply_repo(settings)
    contents = load_definitions(settings)
    [service] = [s for s in contents.feature_services if s.name == settings.event_catalog().feature_service]
    # The same name over fewer views: a catalogue that dropped an event type without bumping the version.
    narrower = FeatureService(name=service.name, features=[])
    narrower.feature_view_projections = service.feature_view_projections[:-1]
    changed = contents._replace(feature_services=[narrower])
    with pytest.raises(ConfigurationError, match=rf"{service.name}.*must name a new version.*_v\d+"):
        _refuse_redefinition(feature_store(settings), changed)
    _refuse_redefinition(feature_store(settings), contents)  # the registered definition itself passes
