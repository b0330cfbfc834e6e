"""The API's predictions, in the prediction log's shape (churn_common.prediction_log), written off the request path.

A request only appends a tuple (a share of them: ``Settings.prediction_log_share``); a background task hands what
gathered to a worker thread every ``prediction_log_flush_seconds``, which writes one Parquet file per UTC day
scored: ``predictions/date=D/source=api-<host>-<pid>-<n>.parquet``, through a temp file. A failed write is logged
and counted (``churn_prediction_log_failures_total``), never a failed request; what the process still holds when it
stops is written on shutdown.
"""

import asyncio
import json
import logging
import os
import random
import socket
from collections.abc import Sequence
from datetime import datetime
from itertools import count
from pathlib import Path

import anyio.to_thread
import pyarrow as pa
import pyarrow.parquet as pq

from churn_common.online import OnlineVector
from churn_common.prediction_log import PREDICTION_LOG_SCHEMA, log_file
from serving.metrics import ServingMetrics
from serving.model_loader import Champion
from serving.scoring import Scored

logger = logging.getLogger(__name__)

Record = tuple[datetime, int, datetime | None, float, str, tuple, str, str, str]


class PredictionLog:
    def __init__(self, root: Path, share: float, metrics: ServingMetrics) -> None:
        self._root = root
        self._share = share
        self._metrics = metrics
        self._pending: list[Record] = []
        self._source = f"api-{socket.gethostname()}-{os.getpid()}"
        self._files = count()

    def record(self, champion: Champion, vector: OnlineVector, scored: Scored, now: datetime) -> None:
        """Keep a scored answer (or not, by the sampling share); the request pays an append."""
        if self._share < 1.0 and random.random() >= self._share:
            return
        self._pending.append(
            (
                now,
                vector.user_id,
                vector.as_of,
                scored.probability,
                scored.band,
                scored.reasons,
                champion.name,
                champion.version,
                champion.feature_service,
            )
        )

    async def flush(self) -> int:
        """Write what gathered; the number of rows written."""
        records, self._pending = self._pending, []
        if not records:
            return 0
        try:
            await anyio.to_thread.run_sync(self._write, records)
        except (OSError, pa.ArrowException) as exc:
            logger.warning("prediction log: %d rows not written: %s", len(records), exc)
            self._metrics.prediction_log_failures.inc(len(records))
            return 0
        self._metrics.prediction_log_rows.inc(len(records))
        return len(records)

    def _write(self, records: Sequence[Record]) -> None:
        by_day: dict[str, list[Record]] = {}
        for record in records:
            by_day.setdefault(record[0].date().isoformat(), []).append(record)
        for day, rows in by_day.items():
            target = log_file(self._root, day, f"{self._source}-{next(self._files)}")
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.tmp")
            pq.write_table(_table(rows), temporary)
            os.replace(temporary, target)


def _table(rows: Sequence[Record]) -> pa.Table:
    scored_at, user_id, as_of, probability, band, reasons, name, version, service = zip(*rows, strict=True)
    return pa.table(
        {
            "scored_at": pa.array(scored_at, PREDICTION_LOG_SCHEMA.field("scored_at").type),
            "user_id": pa.array(user_id, pa.int64()),
            "features_as_of": pa.array(as_of, PREDICTION_LOG_SCHEMA.field("features_as_of").type),
            "churn_probability": pa.array(probability, pa.float64()),
            "risk_band": pa.array(band, pa.string()),
            "reasons": pa.array([json.dumps(list(r)) for r in reasons], pa.string()),
            "model_name": pa.array(name, pa.string()),
            "model_version": pa.array(version, pa.string()),
            "feature_service": pa.array(service, pa.string()),
            "source": pa.array(["api"] * len(rows), pa.string()),
        },
        schema=PREDICTION_LOG_SCHEMA,
    )


async def keep_flushing(log: PredictionLog, interval_s: float) -> None:
    """The background writer: flush every ``interval_s`` until cancelled, then flush once more."""
    try:
        while True:
            await asyncio.sleep(interval_s)
            await log.flush()
    finally:
        await log.flush()
