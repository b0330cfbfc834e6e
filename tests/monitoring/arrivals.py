"""A generated period arriving day by day in the monitoring scenarios: the drops of some days and the accounts
export of their last day validated and built, as the daily pipeline would (without its load)."""

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from churn_common.settings import Settings
from products import users_as_of
from products.elearning import CATALOG as ELEARNING
from transformations.features import build_features
from transformations.validation import validate


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), UTC)


def arrive(settings: Settings, accounts: Path, first: date, last: date) -> None:
    """The drops of ``first`` .. ``last`` and the accounts export at the end of ``last``: validated and built."""
    end = midnight(last + timedelta(days=1))
    pq.write_table(users_as_of(pq.read_table(accounts), end), settings.paths.raw_users)
    days = [first + timedelta(days=offset) for offset in range((last - first).days + 1)]
    drops = [settings.paths.raw_events / f"date={day.isoformat()}" for day in days]
    report = validate(
        settings.paths,
        now=end,
        max_quarantine_share=0.01,
        catalog=ELEARNING,
        events_source=[drop for drop in drops if drop.is_dir()],
    )
    assert report.passed
    build_features(settings.model_copy(update={"now": end}), start=first, end=last)
