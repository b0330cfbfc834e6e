"""The products the platform has been run on: each an event catalogue (``products.<name>.CATALOG``) and a synthetic
generator of its raw data (``products.<name>.generator.generate(paths, GeneratorConfig)``), which `churn data
generate` finds from the catalogue setting. Raw data lands as a product's real log would: daily drops by arrival day
under ``raw/events/date=*``, the accounts export ``raw/users.parquet`` as of the period end, and the generator's
hidden truth in ``raw/ground_truth.parquet`` (for oracle comparisons only)."""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from churn_common.errors import ConfigurationError

if TYPE_CHECKING:
    from churn_common.settings import DataPaths

DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class GeneratorConfig:
    n_users: int
    start: date
    n_days: int
    seed: int
    late_share: float = 0.0
    drift_date: date | None = None
    dirty: bool = False

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_days < 1:
            raise ConfigurationError("the number of users and days must be positive")
        if not 0.0 <= self.late_share <= 1.0:
            raise ConfigurationError(f"late-events share must be within [0, 1], got {self.late_share}")

    @property
    def start_us(self) -> int:
        return int(pd.Timestamp(self.start, tz="UTC").value // 1_000)

    @property
    def end_us(self) -> int:
        """The period end (exclusive): ``start + n_days`` in epoch microseconds."""
        return self.start_us + self.n_days * DAY_US

    @property
    def drift_day(self) -> int | None:
        """Day index (from ``start``) at which drift begins; None without drift."""
        return None if self.drift_date is None else (self.drift_date - self.start).days


@dataclass(frozen=True)
class GenerationSummary:
    n_users: int
    n_events: int
    n_churners: int
    n_partitions: int


def users_as_of(users: pa.Table, instant: datetime) -> pa.Table:
    """The accounts export as it looked at ``instant``: users who signed up before it, closures from it on null.

    Works on a typed export (timestamp columns); a naive ``instant`` is UTC. A dirty, string-typed export is
    rejected: its timestamps are not parsed yet, so which rows existed at ``instant`` is unknown.
    """
    for name in ("signup_at", "closed_at"):
        if name not in users.column_names or not pa.types.is_timestamp(users.schema.field(name).type):
            found = users.schema.field(name).type if name in users.column_names else "no such column"
            raise ConfigurationError(f"users_as_of needs a typed export: {name!r} must be a timestamp, got {found}")
    at = instant if instant.tzinfo else instant.replace(tzinfo=UTC)
    signed_up = users.filter(pc.less(users["signup_at"], pa.scalar(at, users.schema.field("signup_at").type)))
    closed = signed_up["closed_at"]
    not_yet = pc.greater_equal(closed, pa.scalar(at, closed.type))
    position = signed_up.schema.get_field_index("closed_at")
    as_of = pc.if_else(not_yet, pa.scalar(None, closed.type), closed)
    return signed_up.set_column(position, signed_up.schema.field(position), as_of)


def generator_for(catalog: str) -> Callable[["DataPaths", GeneratorConfig], GenerationSummary]:
    """The synthetic generator beside a product's catalogue: ``products.social:CATALOG`` ->
    ``products.social.generator.generate``."""
    module = f"{catalog.partition(':')[0]}.generator"
    try:
        return importlib.import_module(module).generate
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"no synthetic generator for the catalogue {catalog!r} (looked for {module})") from exc
