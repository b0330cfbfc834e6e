"""Online feature reads with the offline ttl rule applied.

Feast's Python online path returns whatever the online store holds, however old (feast issue 6821), while
``get_historical_features`` treats a value older than its view's ttl as missing. Serving reads through
:class:`OnlineReader`, which applies the offline rule — a value is usable at ``now`` only when
``event_timestamp <= now <= event_timestamp + ttl`` — so a stale user looks the same online as offline.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from feast import FeatureService, FeatureStore, FeatureView

from churn_common.feature_frame import ServiceSchema, service_schema
from churn_common.names import JOIN_KEY


@dataclass(frozen=True)
class ContextRow:
    """A view read beside the service's, for people rather than the model (today's activity): its features by name
    (None where the user has no row) and the row's event time (None without one). No ttl rule: its reader decides
    what the row means at ``now`` (serving.today)."""

    values: dict[str, Any]
    as_of: datetime | None


@dataclass(frozen=True)
class OnlineVector:
    user_id: int
    features: dict[str, Any]
    """Every feature of the service by name; None where the view is missing or stale."""
    as_of: datetime | None
    """Newest snapshot time found for the user (stale ones included), over the views that expire (the account
    history, which holds until it changes, says nothing about how recent the features are); None without any."""
    stale_views: tuple[str, ...]
    missing_views: tuple[str, ...]
    context: ContextRow | None = None
    """The context view's row (today's activity), when the reader reads one; never a model input."""

    @property
    def usable(self) -> bool:
        return not self.stale_views and not self.missing_views


def is_fresh(event_time: datetime, ttl: timedelta | None, now: datetime) -> bool:
    """The offline point-in-time rule: ``event_time <= now <= event_time + ttl`` (no ttl: never expires)."""
    if event_time > now:
        return False
    return not ttl or now <= event_time + ttl


class OnlineReader:
    """Reads one FeatureService online. Resolves views and ttls once, not per request."""

    def __init__(self, store: FeatureStore, service: FeatureService, context: FeatureView | None = None) -> None:
        self.store = store
        self.service = service
        # Read beside the service in a second call: Feast applies a service's projections to every ref it is given.
        self.context_refs = [f"{context.name}:{f.name}" for f in context.features] if context else []
        self.schema: ServiceSchema = service_schema(service)
        self.ttl = {p.name_to_use(): store.get_feature_view(p.name).ttl for p in service.feature_view_projections}
        self.features_by_view: dict[str, list[str]] = {}
        for feature in self.schema.features:
            self.features_by_view.setdefault(self.schema.view_of[feature], []).append(feature)
        self.dated = {view for view, ttl in self.ttl.items() if ttl} or set(self.ttl)

    def read(self, user_ids: Sequence[int], now: datetime) -> list[OnlineVector]:
        response = self.store.get_online_features(
            features=self.service,
            entity_rows=[{JOIN_KEY: int(u)} for u in user_ids],
            full_feature_names=True,
        ).to_dict(include_event_timestamps=True)
        vectors = [self._vector(response, row, int(user_id), now) for row, user_id in enumerate(user_ids)]
        if not self.context_refs:
            return vectors
        rows = self._context_rows(user_ids)
        return [replace(vector, context=row) for vector, row in zip(vectors, rows, strict=True)]

    def _context_rows(self, user_ids: Sequence[int]) -> list[ContextRow]:
        response = self.store.get_online_features(
            features=self.context_refs, entity_rows=[{JOIN_KEY: int(u)} for u in user_ids]
        ).to_dict(include_event_timestamps=True)
        names = [ref.split(":", 1)[1] for ref in self.context_refs]
        rows = []
        for row in range(len(user_ids)):
            seconds = response[f"{names[0]}__ts"][row]
            as_of = datetime.fromtimestamp(seconds, UTC) if seconds else None
            rows.append(ContextRow({name: response[name][row] for name in names}, as_of))
        return rows

    def _vector(self, response: dict[str, list], row: int, user_id: int, now: datetime) -> OnlineVector:
        features: dict[str, Any] = {}
        stale, missing, seen = [], [], []
        for view, names in self.features_by_view.items():
            seconds = response[f"{view}__{names[0]}__ts"][row]
            if not seconds:
                missing.append(view)
                features.update(dict.fromkeys(names))
                continue
            event_time = datetime.fromtimestamp(seconds, UTC)
            if view in self.dated:
                seen.append(event_time)
            fresh = is_fresh(event_time, self.ttl[view], now)
            if not fresh:
                stale.append(view)
            features.update({n: response[f"{view}__{n}"][row] if fresh else None for n in names})
        return OnlineVector(user_id, features, max(seen, default=None), tuple(stale), tuple(missing))


def read_online(
    store: FeatureStore, service: FeatureService, user_ids: Sequence[int], now: datetime
) -> list[OnlineVector]:
    return OnlineReader(store, service).read(user_ids, now)
