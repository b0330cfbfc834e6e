"""Today's activity beside a prediction: the ``user_activity_today`` row the push path keeps online, presented per
event type as the registered view declares it (each field's tags name its event type and measure), so serving names
no event type of its own.

A row speaks for the UTC day of its newest event: on a later day (or before that event, under a clock set back) the
user has no events yet today, which is what the answer says, with ``as_of`` null.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from feast import FeatureView

from churn_common.online import ContextRow
from transformations.today import EVENT_TYPE_TAG, MEASURE_TAG


@dataclass(frozen=True)
class TodayPresenter:
    counts: tuple[tuple[str, str], ...]  # (event type, field), in the view's order
    values: tuple[tuple[str, str], ...]  # the same for the types that carry a value
    flag: str | None

    @classmethod
    def of(cls, view: FeatureView | None) -> "TodayPresenter | None":
        if view is None:
            return None
        by_measure: dict[str, list[tuple[str, str]]] = {"count": [], "value": [], "flag": []}
        for field in view.features:
            measure = field.tags.get(MEASURE_TAG)
            if measure in by_measure:
                by_measure[measure].append((field.tags.get(EVENT_TYPE_TAG, ""), field.name))
        flag = by_measure["flag"][0][1] if by_measure["flag"] else None
        return cls(tuple(by_measure["count"]), tuple(by_measure["value"]), flag)

    def body(self, row: ContextRow | None, now: datetime) -> dict[str, Any]:
        """schemas.Today's fields for ``row`` at ``now``."""
        current = row is not None and row.as_of is not None and row.as_of.date() == now.date() and row.as_of <= now
        values = row.values if current else {}
        return {
            "day": now.date(),
            "as_of": row.as_of if current else None,
            "active": bool(values.get(self.flag)) if self.flag else False,
            "events": {event_type: values.get(name) or 0 for event_type, name in self.counts},
            "values": {event_type: values.get(name) or 0.0 for event_type, name in self.values},
        }
