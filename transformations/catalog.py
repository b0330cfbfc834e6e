"""The event catalogue: which event types exist, which carry a value, which count as activity, and which
features each one feeds. The feature build is driven by it, so a team with its own event log declares its own
catalogue instead of changing SQL (see docs/bring_your_own_events.md).
"""

from dataclasses import dataclass, field
from typing import Literal

WINDOWS: tuple[int, ...] = (7, 14, 30, 90)

ValueAggregate = Literal["sum", "mean"]


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

    @property
    def has_value(self) -> bool:
        return self.value_feature is not None


@dataclass(frozen=True)
class Ratio:
    """``numerator / sum(denominator)`` counts over a window; NULL when the denominator is zero."""

    feature: str
    numerator: str
    denominator: tuple[str, ...]


@dataclass(frozen=True)
class EventCatalog:
    event_types: tuple[EventType, ...]
    ratios: tuple[Ratio, ...] = ()
    trend_features: tuple[str, ...] = ()
    """Stems whose last-7-days minus previous-7-days difference becomes ``<stem>_trend_7d``."""
    windows: tuple[int, ...] = field(default=WINDOWS)

    def __post_init__(self) -> None:
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


ELEARNING = EventCatalog(
    event_types=(
        EventType("login", "sessions", is_activity=True),
        EventType("video_watch", "videos_watched", True, "watch_minutes", "sum", 0.0, 600.0),
        EventType("quiz_attempt", "quiz_attempts", True, "quiz_score_mean", "mean", 0.0, 100.0),
        EventType("course_enroll", "enrolls", is_activity=True),
        EventType("course_complete", "completions", is_activity=True),
        # Renewals and failed charges happen without the user doing anything: not engagement.
        EventType("payment_success", "payments", False, "amount_paid", "sum", 0.0, 5_000.0),
        EventType("payment_failed", "payment_failures", False),
        EventType("support_ticket", "support_tickets", False),
    ),
    ratios=(Ratio("payment_fail_rate", "payment_failed", ("payment_success", "payment_failed")),),
    trend_features=("active_days", "watch_minutes"),
)

DEFAULT_CATALOG = ELEARNING
