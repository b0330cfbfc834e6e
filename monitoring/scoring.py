"""Batch scoring (``churn score``): every user the population rule scores at an instant T, from the offline store
through the champion's FeatureService, with the champion's own predict + explain.

Writes, per scoring date (the UTC day of T), each replaced whole so re-scoring a date is idempotent:

* the prediction log, ``predictions/date=D/source=batch.parquet`` (churn_common.prediction_log; the API writes
  the same shape under ``source=api-*``);
* the scored feature matrix, ``scoring/date=D/features.parquet``: what drift monitoring compares with the
  champion's training reference;
* the ranked high-risk list for the retention team, ``reports/high_risk/date=D.csv``, reasons in plain words.

At T the offline store holds exactly what the online store served (the snapshots are versioned by what was known
when), so a user's batch score at T equals ``/predict`` at T.
"""

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast import FeatureService, FeatureStore

from churn_common.catalog import feature_descriptions
from churn_common.champion import feature_service_of, load_version, registry_client, version_by_alias
from churn_common.errors import DataError
from churn_common.feature_frame import normalize, service_schema
from churn_common.files import replace_atomically, write_table_atomically
from churn_common.model import ChurnModel
from churn_common.names import CHAMPION_ALIAS, CREATED_TIMESTAMP_FIELD, JOIN_KEY, TIMESTAMP_FIELD
from churn_common.population import PopulationRule, Status
from churn_common.prediction_log import PREDICTION_LOG_SCHEMA, TS, log_file
from churn_common.reasons import plain_reasons
from churn_common.settings import DataPaths, Settings
from churn_common.store import feature_store, get_feature_service

logger = logging.getLogger(__name__)

SCORE_CHUNK = 20_000
SCORING_BATCH_USERS = 100_000


@dataclass(frozen=True)
class ScoringReport:
    scored_at: datetime
    model_version: str
    feature_service: str
    statuses: dict[str, int]
    scored: int
    high_risk: int
    log: Path
    features: Path
    high_risk_list: Path

    def as_dict(self) -> dict[str, object]:
        return {
            "scored_at": self.scored_at.isoformat(),
            "model_version": self.model_version,
            "feature_service": self.feature_service,
            "statuses": self.statuses,
            "scored": self.scored,
            "high_risk": self.high_risk,
            "log": str(self.log),
            "features": str(self.features),
            "high_risk_list": str(self.high_risk_list),
        }


def _candidates(settings: Settings, at: datetime) -> pd.DataFrame:
    """Every account that had signed up by T (the population rule decides the rest after the join)."""
    if not settings.paths.users.exists():
        raise DataError(f"no validated users at {settings.paths.users}; run `churn data validate`")
    users = pq.read_table(settings.paths.users, columns=[JOIN_KEY, "signup_at"]).to_pandas()
    ids = users.loc[users["signup_at"] < pd.Timestamp(at), JOIN_KEY].sort_values().to_numpy()
    return pd.DataFrame({JOIN_KEY: ids, TIMESTAMP_FIELD: pd.Timestamp(at).as_unit("us")})


def _score(model, frame: pd.DataFrame) -> tuple[np.ndarray, list[list[dict]]]:
    """The champion's probabilities and reasons, in chunks (the explanation stacks features + 1 rows per user)."""
    probabilities, reasons = [], []
    for start in range(0, len(frame), SCORE_CHUNK):
        p, r = model.score_and_explain(frame.iloc[start : start + SCORE_CHUNK])
        probabilities.append(p)
        reasons.extend(r)
    return (np.concatenate(probabilities) if probabilities else np.zeros(0)), reasons


def _log_table(frame: pd.DataFrame, probabilities, reasons, bands, as_of, identity: dict[str, str]) -> pa.Table:
    n = len(frame)
    columns = {
        "scored_at": pa.array(frame[TIMESTAMP_FIELD].to_numpy(), TS),
        JOIN_KEY: pa.array(frame[JOIN_KEY].to_numpy(), pa.int64()),
        "features_as_of": pa.array(as_of, TS),
        "churn_probability": pa.array(probabilities, pa.float64()),
        "risk_band": pa.array(bands, pa.string()),
        "reasons": pa.array([json.dumps(r) for r in reasons], pa.string()),
        **{key: pa.array([value] * n, pa.string()) for key, value in identity.items()},
        "source": pa.array(["batch"] * n, pa.string()),
    }
    return pa.table(columns, schema=PREDICTION_LOG_SCHEMA)


def _high_risk(log: pa.Table, descriptions: dict[str, str], typical: dict) -> pd.DataFrame:
    # Filtered in Arrow first: the whole log as pandas (a million reason strings) would double the run's peak.
    ranked = log.filter(pc.equal(log["risk_band"], "high")).to_pandas()
    ranked = ranked.sort_values(["churn_probability", JOIN_KEY], ascending=[False, True])
    ranked["why"] = [plain_reasons(json.loads(text), descriptions, typical) for text in ranked["reasons"]]
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    return ranked[["rank", JOIN_KEY, "churn_probability", "why", "features_as_of", "model_version"]]


@dataclass(frozen=True)
class _Champion:
    model: ChurnModel
    identity: dict[str, str]
    """model_name, model_version, feature_service: as every log row records them."""


def _champion(settings: Settings) -> tuple[_Champion, FeatureStore, FeatureService]:
    client = registry_client(settings.tracking_uri)
    version = version_by_alias(client, CHAMPION_ALIAS)
    store = feature_store(settings)
    service = get_feature_service(store, feature_service_of(version))
    identity = {"model_name": version.name, "model_version": str(version.version), "feature_service": service.name}
    return _Champion(load_version(client, version, settings.model_signing_key), identity), store, service


def _offline_frame(
    settings: Settings, store: FeatureStore, service: FeatureService, entities: pd.DataFrame
) -> pd.DataFrame:
    """The candidates' vectors at T as training reads them (created-timestamp filter on), in user order."""
    joined = store.get_historical_features(entities, features=service, filter_by_created_timestamp=True).to_df()
    joined = joined.sort_values(JOIN_KEY, ignore_index=True)
    return pd.concat([joined[[JOIN_KEY, TIMESTAMP_FIELD]], normalize(joined, service_schema(service))], axis=1)


@dataclass
class _Scored:
    """What the batches of one scoring run add up to, kept as Arrow (a fraction of the pandas frames' memory)."""

    logs: list[pa.Table]
    features: list[pa.Table]
    statuses: dict[str, int]


def _score_users(
    settings: Settings, at: datetime, champion: _Champion, store: FeatureStore, service: FeatureService, entities
) -> tuple[pa.Table, pa.Table, np.ndarray]:
    """One batch of candidates at T: join, population rule, predict + explain; its log rows and scored features."""
    frame = _offline_frame(settings, store, service, entities)
    statuses = PopulationRule(settings.active_window_days).statuses(frame)
    scored = frame[statuses == Status.SCORED].reset_index(drop=True)
    probabilities, reasons = _score(champion.model, scored)
    bands = [champion.model.risk_band(float(p)) for p in probabilities]
    as_of = _features_as_of(settings, scored, at, _max_ttl(store, service))
    log = _log_table(scored, probabilities, reasons, bands, as_of, champion.identity)
    matrix = pa.Table.from_pandas(scored[[JOIN_KEY, *champion.model.feature_names]], preserve_index=False)
    return log, matrix, statuses


def score_batch(settings: Settings, at: datetime | None = None) -> ScoringReport:
    """Score every in-population user at ``at`` (default: the settings clock) and write the date's outputs.
    Candidates go through in batches of ``SCORING_BATCH_USERS``: a million users' joined frame, its normalised copy
    and the explanation at once need over 6 GiB; batched, the peak stays near one batch's."""
    at = (at or settings.clock()).astimezone(UTC)
    champion, store, service = _champion(settings)
    PopulationRule(settings.active_window_days).require(service_schema(service).features)
    candidates = _candidates(settings, at)
    run = _Scored([], [], dict.fromkeys(map(str, Status), 0))
    for start in range(0, max(len(candidates), 1), SCORING_BATCH_USERS):
        batch = candidates.iloc[start : start + SCORING_BATCH_USERS]
        log, matrix, statuses = _score_users(settings, at, champion, store, service, batch)
        run.logs.append(log)
        run.features.append(matrix)
        for status in Status:
            run.statuses[str(status)] += int((statuses == status).sum())
    # A batch where an optional attribute has no value holds it as Arrow's null type: promoted to the others'.
    log, matrix = pa.concat_tables(run.logs), pa.concat_tables(run.features, promote_options="permissive")
    written = _write_outputs(settings, at, champion.model, matrix, log)
    logger.info("scored %d of %d users at %s with model %s", len(log), len(candidates), at, champion.identity)
    return ScoringReport(at, champion.identity["model_version"], service.name, run.statuses, len(log), *written)


def _write_outputs(
    settings: Settings, at: datetime, model: ChurnModel, matrix: pa.Table, log: pa.Table
) -> tuple[int, Path, Path, Path]:
    """The log, the scored features and the high-risk list of T's date: (high-risk users, their three paths)."""
    day, paths = at.date().isoformat(), settings.paths
    log_target = log_file(settings.prediction_log_root, day, "batch")
    features_target = scoring_features_file(paths, day)
    write_table_atomically(log, log_target)
    write_table_atomically(matrix, features_target)
    high_risk = _high_risk(log, feature_descriptions(settings.event_catalog()), model.reference_values)
    high_risk_target = paths.high_risk_list(day)
    _write_csv(high_risk, high_risk_target)
    return len(high_risk), log_target, features_target, high_risk_target


def scoring_features_file(paths: DataPaths, day: str) -> Path:
    """The feature matrix batch scoring scored on ``day``: what drift monitoring compares with the reference."""
    return paths.scoring / f"date={day}" / "features.parquet"


def _write_csv(frame: pd.DataFrame, target: Path) -> None:
    replace_atomically(target, lambda temporary: frame.to_csv(temporary, index=False))


def _max_ttl(store, service) -> timedelta:
    ttls = [store.get_feature_view(p.name).ttl for p in service.feature_view_projections]
    return max(ttl for ttl in ttls if ttl)


def _features_as_of(settings: Settings, scored: pd.DataFrame, at: datetime, ttl: timedelta) -> np.ndarray:
    """Per scored user, the event time of the snapshot the score used: the newest known at T within the ttl (the
    scored population has a fresh snapshot by definition)."""
    users = pa.table({JOIN_KEY: pa.array(scored[JOIN_KEY].to_numpy(), pa.int64())})
    query = f"""
        SELECT u.{JOIN_KEY}, max(s.{TIMESTAMP_FIELD}) AS as_of
        FROM users u JOIN read_parquet(?) s USING ({JOIN_KEY})
        WHERE s.{TIMESTAMP_FIELD} BETWEEN ? AND ? AND s.{CREATED_TIMESTAMP_FIELD} <= ? GROUP BY ALL
    """
    with duckdb.connect() as con:
        con.register("users", users)
        glob = str(settings.paths.snapshots / "*" / "*.parquet")
        found = con.execute(query, [glob, at - ttl, at, at]).df().set_index(JOIN_KEY)["as_of"]
    return found.reindex(scored[JOIN_KEY].to_numpy()).to_numpy()
