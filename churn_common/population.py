"""Who is scored at an instant: the one rule that labels, training sets, ``/predict``, ``/predict/batch`` and batch
scoring all apply, to the features the store holds for the user at that instant.

A user is scored at t when, as the feature store knows it at t:

1. the account is known and open: ``account_status`` is ``"open"`` (it is ``"closed"`` from ``closed_at`` on);
2. the daily snapshot is fresh: within its views' ttl (the offline join turns an older one into missing values, and
   serving applies the same rule online, see churn_common.online);
3. the user was active in the trailing window: ``active_days_<W>d > 0`` with W = ``Settings.active_window_days``.
   Users inactive that long have already churned: the model is not trained to score them.

Boundaries, the same everywhere: a user is a customer at t when ``signup_at < t < closed_at`` (closed_at null: still
open), so an account closing exactly at t is closed at t, and a signup at t has no snapshot yet at t. The snapshot
that describes day D is the state at D+1 00:00 (see transformations.features).

Everyone else gets a status instead of a probability. ``/predict`` answers ``closed`` and ``inactive`` with 200 and
no probability, ``unknown`` with 404 and ``stale`` with 503 (the platform, not the user, is behind).
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd

from churn_common.errors import ConfigurationError
from churn_common.names import ACCOUNT_STATUS

OPEN, CLOSED = "open", "closed"


class Status(StrEnum):
    SCORED = "scored"
    CLOSED = "closed"
    INACTIVE = "inactive"
    STALE = "stale"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class PopulationRule:
    active_window_days: int

    @property
    def activity_feature(self) -> str:
        return f"active_days_{self.active_window_days}d"

    @property
    def reads(self) -> tuple[str, str]:
        """The features the rule reads; a FeatureService used for scoring must provide them."""
        return ACCOUNT_STATUS, self.activity_feature

    def require(self, features: Iterable[str]) -> None:
        missing = sorted(set(self.reads) - set(features))
        if missing:
            raise ConfigurationError(f"the population rule needs features {missing}, which the service lacks")

    def status(self, account_status: str | None, snapshot_fresh: bool, active_days: float | None) -> Status:
        """The rule itself. ``snapshot_fresh``: the user's daily snapshot exists and is within its ttl."""
        if account_status == CLOSED:
            return Status.CLOSED
        if account_status != OPEN:
            return Status.UNKNOWN
        if not snapshot_fresh:
            return Status.STALE
        if active_days is None or math.isnan(active_days) or active_days <= 0:
            return Status.INACTIVE
        return Status.SCORED

    def statuses(self, frame: pd.DataFrame) -> np.ndarray:
        """The rule on every row of a point-in-time frame, where a stale or missing snapshot reads as missing values
        (the activity count is never null in a snapshot that exists)."""
        account = frame[ACCOUNT_STATUS].astype(object).where(frame[ACCOUNT_STATUS].notna(), None)
        activity = pd.to_numeric(frame[self.activity_feature], errors="raise").astype(np.float64)
        return np.array(
            [
                self.status(status, not math.isnan(days), days)
                for status, days in zip(account.tolist(), activity.tolist(), strict=True)
            ],
            dtype=object,
        )

    def scored(self, frame: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the rows the model scores."""
        return self.statuses(frame) == Status.SCORED
