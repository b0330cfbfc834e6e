"""The today computation, shared by the push path and the nightly build: rows per (user, day) derived from the
catalogue, sums exact whatever the order and grouping of the events, the push rules, and the offline writer."""

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churn_common.catalog import EventCatalog, EventType
from churn_common.files import write_table_atomically
from churn_common.names import CREATED_TIMESTAMP_FIELD, JOIN_KEY, TIMESTAMP_FIELD
from products.elearning import CATALOG
from transformations.today import (
    ACTIVE_TODAY,
    add_rows,
    build_today_table,
    push_problems,
    table_schema,
    today_fields,
    today_partition,
    today_rows,
    with_values,
)

TS = pa.timestamp("us", tz="UTC")
DAY = date(2026, 5, 4)
NOON = datetime(2026, 5, 4, 12, tzinfo=UTC)
# A catalogue of another product: nothing here may depend on the e-learning event names.
SHOP = EventCatalog(
    event_types=(
        EventType("visit", "visits", True, description="store visits"),
        EventType("order", "orders", True, "spend", "sum", 0.0, 10_000.0, description="orders"),
        EventType("refund", "refunds", False, "refund_amount", "mean", 0.0, 10_000.0),
    ),
    feature_service="shop_model_v1",
)


def events_table(rows: list[tuple], ingested: datetime | None = None) -> pa.Table:
    users, stamps, types, values = zip(*rows, strict=True) if rows else ((), (), (), ())
    table = pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "event_timestamp": pa.array(stamps, TS),
            "event_type": pa.array(types, pa.string()),
            "value": pa.array(values, pa.float64()),
        }
    )
    return table.append_column("ingested_at", pa.array([ingested or NOON] * len(rows), TS))


def random_events(rng: np.random.Generator, catalog: EventCatalog, n: int, users: int = 5) -> list[tuple]:
    rows = []
    for _ in range(n):
        event_type = catalog.event_types[rng.integers(len(catalog.event_types))]
        stamp = NOON - timedelta(microseconds=int(rng.integers(0, 12 * 3600 * 1_000_000)))
        value = round(float(rng.uniform(0, 99)), 6) if event_type.has_value else None
        rows.append((int(rng.integers(1, users + 1)), stamp, event_type.name, value))
    return rows


def test_fields_follow_the_catalogue():
    names = [field.name for field in today_fields(SHOP)]
    assert names == ["visits_today", "orders_today", "orders_value_today", "refunds_today", "refunds_value_today"] + [
        ACTIVE_TODAY
    ]
    assert [(f.kind, f.event_type) for f in today_fields(SHOP)][:3] == [
        ("count", "visit"),
        ("count", "order"),
        ("value", "order"),
    ]


def test_rows_count_sum_and_flag_per_user_and_day():
    late = NOON - timedelta(hours=1)
    rows = today_rows(
        events_table(
            [
                (1, late, "visit", None),
                (1, NOON - timedelta(hours=3), "order", 12.5),
                (1, NOON - timedelta(hours=2), "order", 0.25),
                (2, NOON, "refund", 3.0),  # not an activity event
                (2, NOON - timedelta(days=1), "visit", None),  # another day: another row
                (3, NOON, "unknown", 1.0),  # outside the catalogue: ignored
            ]
        ),
        SHOP,
    )
    table = with_values(rows, SHOP)
    assert table.schema == table_schema(SHOP)
    got = {(row[JOIN_KEY], row[TIMESTAMP_FIELD].date()): row for row in table.to_pylist()}
    assert set(got) == {(1, DAY), (2, DAY), (2, DAY - timedelta(days=1))}
    first = got[(1, DAY)]
    assert (first["visits_today"], first["orders_today"], first["orders_value_today"]) == (1, 2, 12.75)
    assert first[ACTIVE_TODAY] is True and first[TIMESTAMP_FIELD] == late and first["refunds_today"] == 0
    refund = got[(2, DAY)]
    assert (refund["refunds_today"], refund["refunds_value_today"], refund[ACTIVE_TODAY]) == (1, 3.0, False)
    assert refund[CREATED_TIMESTAMP_FIELD] == NOON


@pytest.mark.parametrize("chunks", [2, 3, 7])
def test_rows_accumulated_batch_by_batch_equal_the_rows_of_all_events_to_the_last_bit(chunks: int):
    rng = np.random.default_rng(chunks)
    events = random_events(rng, CATALOG, 400)
    whole = with_values(today_rows(events_table(events), CATALOG), CATALOG).to_pylist()
    stored: dict[int, dict] = {}
    order = rng.permutation(len(events))
    for part in np.array_split(order, chunks):
        batch = today_rows(events_table([events[i] for i in part]), CATALOG)
        for row in batch.to_pylist():
            before = stored.get(row[JOIN_KEY])
            added = add_rows(before, row, CATALOG)
            table = pa.Table.from_pylist([added], schema=batch.schema)
            stored[row[JOIN_KEY]] = with_values(table, CATALOG).to_pylist()[0]
    assert [stored[row[JOIN_KEY]] for row in whole] == whole


def test_push_rules_are_the_gates_where_they_apply():
    valued = next(t for t in CATALOG.event_types if t.has_value)
    plain = next(t for t in CATALOG.event_types if not t.has_value)
    events = events_table(
        [
            (1, NOON, plain.name, None),  # fine
            (1, NOON, "nope", None),
            (1, NOON, valued.name, None),
            (1, NOON, valued.name, valued.value_max + 1),
            (1, NOON, valued.name, float("inf")),
            (1, NOON, plain.name, 1.0),
            (1, NOON + timedelta(seconds=1), plain.name, None),
            (1, NOON - timedelta(hours=12, microseconds=1), plain.name, None),
            (1, NOON - timedelta(hours=12), valued.name, valued.value_min),  # today's first instant, lowest value
        ]
    )
    problems = push_problems(events, CATALOG, NOON)
    kinds = [problem.split(": ")[1] for problem in problems]
    assert [problem.split(" ")[1] for problem in problems] == ["1", "2", "3", "4", "5", "6", "7"]
    expected = ["unknown_event_type", "invalid_value", "invalid_value", "invalid_value", "invalid_value"]
    assert kinds == [*expected, "future_timestamp", "not_today"]


def test_the_nightly_writer_builds_the_day_from_every_validated_batch(settings):
    settings = settings.model_copy(update={"catalog": "tests.transformations.test_today:SHOP"})
    day_dir = settings.paths.events / f"date={DAY}"
    first = [(1, NOON, "visit", None), (2, NOON, "order", 5.5)]
    late = [(1, NOON - timedelta(hours=5), "order", 1.25)]
    write_table_atomically(events_table(first), day_dir / "batch=2026-05-04.parquet")
    write_table_atomically(events_table(late, NOON + timedelta(days=1)), day_dir / "batch=2026-05-05.parquet")
    summary = build_today_table(settings, DAY)
    assert (summary.rows, summary.events, summary.path) == (2, 3, today_partition(settings, DAY))
    written = pq.read_table(summary.path)
    assert written.schema.remove_metadata() == table_schema(SHOP)
    rows = {row[JOIN_KEY]: row for row in written.to_pylist()}
    assert (rows[1]["visits_today"], rows[1]["orders_today"], rows[1]["orders_value_today"]) == (1, 1, 1.25)
    # Known once its late event arrived.
    assert rows[1][CREATED_TIMESTAMP_FIELD] == NOON + timedelta(days=1)
    again = build_today_table(settings, DAY)
    assert pq.read_table(again.path).equals(written)
    empty = build_today_table(settings, DAY + timedelta(days=1))
    assert empty.rows == 0 and pq.read_table(empty.path).schema.remove_metadata() == table_schema(SHOP)
