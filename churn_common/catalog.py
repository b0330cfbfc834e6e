"""The event catalogue: which event types exist, which carry a value, which count as activity, which features each
one feeds, which account attributes the product has, which label fits it and the FeatureService that serves it.

Every stage reads the catalogue named by ``Settings.catalog`` (``CHURN_CATALOG=module:NAME``): validation, the
feature build, the Feast definitions (derived from it in feature_repo/), labels, training, batch scoring and serving.
A team with its own event log declares its own catalogue instead of changing code (docs/bring_your_own_events.md);
no stage names an event type. The products this platform was run on keep theirs in ``products/``.
"""

import importlib
import re
from dataclasses import dataclass, field
from typing import Literal

from churn_common.errors import ConfigurationError
from churn_common.names import ACCOUNT_STATUS, RECENCY, TENURE, trend_column

WINDOWS: tuple[int, ...] = (7, 14, 30, 90)

ValueAggregate = Literal["sum", "mean"]
Label = Literal["inactivity", "closure"]
ACCOUNT_ATTRIBUTES: tuple[str, ...] = ("plan", "country", "acquisition_channel")
"""The optional account attributes the users table may carry (validation keeps them, nulls where absent)."""
_SERVICE_NAME = re.compile(r"[a-z][a-z0-9_]*_v\d+")


@dataclass(frozen=True)
class EventType:
    name: str
    count_feature: str
    """Stem of the per-window event count, e.g. ``sessions`` -> ``sessions_7d``."""
    is_activity: bool
    """Whether the event shows the user engaging (feeds active days and recency)."""
    value_feature: str | None = None
    """Stem of the per-window value aggregate; None when the type carries no value."""
    value_aggregate: ValueAggregate = "sum"
    value_min: float = 0.0
    value_max: float = float("inf")
    """Values outside [value_min, value_max] are quarantined as absurd."""
    description: str = ""
    """What the count counts, in plain words ("logins"): feature descriptions and the reasons people read."""
    value_description: str = ""
    """The same for the value aggregate ("minutes of video watched")."""

    @property
    def has_value(self) -> bool:
        return self.value_feature is not None


@dataclass(frozen=True)
class Ratio:
    """``numerator / sum(denominator)`` counts over a window; NULL when the denominator is zero."""

    feature: str
    numerator: str
    denominator: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class EventCatalog:
    event_types: tuple[EventType, ...]
    ratios: tuple[Ratio, ...] = ()
    trend_features: tuple[str, ...] = ()
    """Stems whose last-7-days minus previous-7-days difference becomes ``<stem>_trend_7d``."""
    windows: tuple[int, ...] = field(default=WINDOWS)
    feature_service: str = "churn_model_v1"
    """The FeatureService derived from this catalogue. A catalogue whose features change must get a new name
    (bump the version): `churn features apply` refuses to redefine a registered service silently."""
    account_attributes: tuple[str, ...] = ACCOUNT_ATTRIBUTES
    """The account attributes the product has (features of the user_account view)."""
    label: Label = "inactivity"
    """The label that fits the product: ``inactivity`` (no activity in the horizon) or ``closure`` (the account
    closes in the horizon), see churn_common.labels."""

    def __post_init__(self) -> None:
        if not _SERVICE_NAME.fullmatch(self.feature_service):
            raise ValueError(f"feature_service {self.feature_service!r} must look like name_v<N>")
        unknown = set(self.account_attributes) - set(ACCOUNT_ATTRIBUTES)
        if unknown:
            raise ValueError(f"account attributes {sorted(unknown)} are not among {ACCOUNT_ATTRIBUTES}")
        names = [t.name for t in self.event_types]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate event types in catalogue: {names}")
        if not any(t.is_activity for t in self.event_types):
            raise ValueError("a catalogue needs at least one activity event type")
        known = set(names)
        for ratio in self.ratios:
            missing = ({ratio.numerator, *ratio.denominator}) - known
            if missing:
                raise ValueError(f"ratio {ratio.feature} names unknown event types {sorted(missing)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.event_types)

    @property
    def activity_types(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.event_types if t.is_activity)

    def by_name(self, name: str) -> EventType:
        for event_type in self.event_types:
            if event_type.name == name:
                return event_type
        raise KeyError(name)

    def window_stems(self) -> list[str]:
        """Every per-window feature stem, in output column order."""
        stems = ["active_days"]
        for t in self.event_types:
            stems.append(t.count_feature)
            if t.value_feature:
                stems.append(t.value_feature)
        stems.extend(r.feature for r in self.ratios)
        return stems

    def window_features(self) -> list[str]:
        return [f"{stem}_{w}d" for w in self.windows for stem in self.window_stems()]

    def stem_descriptions(self) -> dict[str, str]:
        """Every window stem in plain words, as feature descriptions and reasons say it."""
        texts = {"active_days": "days with at least one activity event"}
        for t in self.event_types:
            texts[t.count_feature] = t.description or f"{t.name} events"
            if t.value_feature:
                texts[t.value_feature] = t.value_description or f"{t.value_aggregate} of {t.name} values"
        for r in self.ratios:
            texts[r.feature] = r.description or f"{r.numerator} / ({' + '.join(r.denominator)}) events"
        return texts


ATTRIBUTE_DESCRIPTIONS = {
    "plan": "the account's plan",
    "country": "country of the account",
    "acquisition_channel": "how the user was acquired",
}


def feature_descriptions(catalog: EventCatalog) -> dict[str, str]:
    """Every feature the catalogue's FeatureService holds, in plain words: Feast's field descriptions and the
    reasons people read (churn_common.reasons) say the same."""
    stems = catalog.stem_descriptions()
    texts = {
        f"{stem}_{w}d": f"{stems[stem]}, last {w} days" for w in catalog.windows for stem in catalog.window_stems()
    }
    texts[RECENCY] = "days since the last activity event"
    texts[TENURE] = "days since signup"
    texts.update(
        {trend_column(stem): f"{stems[stem]}, last 7 days minus the 7 before" for stem in catalog.trend_features}
    )
    texts.update({name: ATTRIBUTE_DESCRIPTIONS[name] for name in catalog.account_attributes})
    texts[ACCOUNT_STATUS] = "open or closed; decides who is scored (churn_common.population), not a model input"
    return texts


def load_catalog(spec: str) -> EventCatalog:
    """``package.module:NAME`` -> the EventCatalog object it names (``Settings.catalog``, ``--catalog``)."""
    module_name, _, attribute = spec.partition(":")
    try:
        catalog = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"cannot load the event catalogue {spec!r}: {exc}") from exc
    if not isinstance(catalog, EventCatalog):
        raise ConfigurationError(f"{spec!r} is a {type(catalog).__name__}, not an EventCatalog")
    return catalog
