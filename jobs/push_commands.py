"""``churn push --events FILE``: today's events into the online today view without the API (a backfill after an
outage of the pushing client, or a test), with the API's rules and writer: the same checks, the same Redis script
(atomic beside the API's pushes) or, on other online stores, Feast's push. And ``churn features today``, the nightly
build's offline writer for one day."""

import json
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import typer

from churn_common.catalog import EventCatalog
from churn_common.errors import DataError
from churn_common.online import ContextRow
from churn_common.settings import Settings
from churn_common.store import feature_store
from jobs.options import CatalogOption, settings_for
from transformations.today import EVENT_COLUMNS, TS_US_UTC, build_today_table, push_problems, today_rows

_TYPES = {"user_id": pa.int64(), "event_timestamp": TS_US_UTC, "event_type": pa.string(), "value": pa.float64()}


def read_events(path: Path) -> pa.Table:
    """A Parquet file of validated events' columns, or JSON lines (one event a line), read exactly as POST /events
    reads its body."""
    if path.suffix == ".parquet":
        return _parquet_events(path)
    from pydantic import ValidationError

    from serving.events import event_columns
    from serving.schemas import PushEvent

    events = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                events.append(PushEvent.model_validate_json(line))
            except ValidationError as exc:
                raise DataError(f"{path}, line {number}: {exc.errors(include_url=False)}") from exc
    return event_columns(events)


def _parquet_events(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot read events from {path}: {exc}") from exc
    if "value" not in table.column_names:
        table = table.append_column("value", pa.nulls(table.num_rows, pa.float64()))
    missing = [name for name in EVENT_COLUMNS if name not in table.column_names]
    if missing:
        raise DataError(f"{path}: events need columns {list(EVENT_COLUMNS)}; missing {missing}")
    stamps = table["event_timestamp"]
    if pa.types.is_timestamp(stamps.type) and stamps.type.tz is None:  # naive times are UTC, as the gate reads them
        table = table.set_column(
            table.column_names.index("event_timestamp"), "event_timestamp", pc.assume_timezone(stamps, "UTC")
        )
    return pa.table({name: table[name].cast(kind) for name, kind in _TYPES.items()})


def push_table(settings: Settings, catalog: EventCatalog, events: pa.Table, now: datetime) -> list[ContextRow]:
    """Check and push ``events`` at ``now`` in requests of at most ``push_max_events`` events (each applied whole)."""
    problems = push_problems(events, catalog, now)
    if problems:
        raise DataError(f"{len(problems)} events refused, nothing pushed: " + "; ".join(problems[:20]))
    events = events.append_column("ingested_at", pa.array([now] * events.num_rows, TS_US_UTC))
    rows = today_rows(events, catalog)
    write = _writer(settings, catalog)
    return [row for start in range(0, rows.num_rows, settings.push_max_events) for row in write(
        rows.slice(start, settings.push_max_events), now.date()
    )]  # fmt: skip


def _writer(settings: Settings, catalog: EventCatalog):
    from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig

    from serving.features import context_view, user_key_prefix
    from serving.push import TODAY_SCRIPT, FeastTodayWriter, TodayScript

    store = feature_store(settings)
    view = context_view(store)
    if view is None:
        raise DataError("no user_activity_today view registered: run `churn features apply`")
    config = store.config.online_store
    if not isinstance(config, RedisOnlineStoreConfig):
        return FeastTodayWriter(store, view, catalog, settings.online_timeout_ms / 1000).add_now
    script, client = (
        TodayScript(view, catalog, store.project, user_key_prefix()),
        RedisOnlineStore()._get_client(config),
    )

    def write(rows: pa.Table, day: date) -> list[ContextRow]:
        reply = client.execute_command("EVAL", TODAY_SCRIPT, *script.arguments(rows, day))
        return script.result(reply, rows["user_id"].to_pylist())

    return write


def push_command(
    events: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Parquet, or JSON lines: today's events.")],
    catalog: CatalogOption = None,
) -> None:
    """Add today's events to each user's today row online, as POST /events does."""
    settings = settings_for(catalog)
    rows = push_table(settings, settings.event_catalog(), read_events(events), settings.clock())
    newest = max((row.as_of for row in rows if row.as_of), default=None)
    typer.echo(json.dumps({"users": len(rows), "newest_event": newest.isoformat() if newest else None}))


def today_command(
    day: Annotated[datetime, typer.Option("--date", formats=["%Y-%m-%d"], help="The day to write.")],
    catalog: CatalogOption = None,
) -> None:
    """Write the offline today table of one day from its validated events (the nightly build's step)."""
    summary = build_today_table(settings_for(catalog), day.date())
    typer.echo(f"today table of {summary.day}: {summary.rows:,} rows from {summary.events:,} events -> {summary.path}")


def register(features_app: typer.Typer, root: typer.Typer) -> None:
    features_app.command("today")(today_command)
    root.command("push")(push_command)
