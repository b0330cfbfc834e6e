"""One settings object for every entry point. Environment variables (prefix ``CHURN_``) override defaults.

Nothing here touches the disk or the network: paths are computed, never created, on construction.
"""

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from churn_common.catalog import EventCatalog, Label, load_catalog
from churn_common.names import TODAY_TABLE

PROJECT_ROOT = Path(__file__).resolve().parents[1]

FeastProfile = Literal["embedded", "redis", "production"]


class DataPaths:
    """Where each stage reads and writes, under one data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.raw = root / "raw"
        self.raw_users = self.raw / "users.parquet"
        self.raw_events = self.raw / "events"
        self.ground_truth = self.raw / "ground_truth.parquet"
        self.validated = root / "validated"
        self.users = self.validated / "users.parquet"
        self.user_history = self.validated / "user_history"
        self.events = self.validated / "events"
        self.quarantine = root / "quarantine"
        self.reports = root / "reports"
        self.features = root / "features"
        self.snapshots = self.features / "user_daily_snapshots"
        self.today = self.features / TODAY_TABLE
        self.builds = self.features / "builds"
        self.feast = root / "feast"
        self.models = root / "models"
        self.mlflow_db = root / "mlflow" / "mlflow.db"
        self.mlflow_artifacts = root / "mlflow" / "artifacts"
        self.metrics = root / "metrics"
        self.predictions = root / "predictions"
        self.scoring = root / "scoring"

    def high_risk_list(self, day: str) -> Path:
        """Batch scoring's ranked high-risk users of ``day`` (reasons in plain words): the retention team's list."""
        return self.reports / "high_risk" / f"date={day}.csv"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHURN_", env_file=".env", extra="ignore")

    # --- where things live -------------------------------------------------------------------------------
    data_dir: Path = Field(PROJECT_ROOT / "data", description="Root of every generated table, report and model")
    feature_repo: Path = Field(PROJECT_ROOT / "feature_repo", description="The Feast feature repository")
    log_level: str = "INFO"
    now: datetime | None = Field(
        None, description="Frozen clock (ISO-8601, UTC) for simulations and tests; empty: the wall clock"
    )

    # --- synthetic data ------------------------------------------------------------------------------------
    seed: int = 42
    n_users: int = 5_000
    start_date: date | None = Field(None, description="First generated day; empty: the period ends yesterday")
    n_days: int = 180

    # --- the product ---------------------------------------------------------------------------------------
    catalog: str = Field(
        "products.elearning:CATALOG", description="The event catalogue every stage reads, as module:NAME"
    )

    # --- validation gate -----------------------------------------------------------------------------------
    max_quarantine_share: float = Field(0.05, ge=0, le=1, description="Fail the run above this bad-row share")

    # --- feature build -------------------------------------------------------------------------------------
    late_data_days: int = Field(
        7,
        ge=0,
        description="How late an event may arrive (ingested_at - event_timestamp); later ones are quarantined. "
        "A daily build re-derives this many days before it, appending a snapshot version per day of arrival",
    )

    # --- Feast ---------------------------------------------------------------------------------------------
    feast_profile: FeastProfile = "embedded"
    feast_project: str = "churn"
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_db: int = 0
    redis_password: SecretStr | None = None
    registry_url: str = Field("", description="SQL registry URL (production profile), e.g. postgresql+psycopg://")
    online_write_batch_size: int = 10_000
    pushgateway_url: str = Field("", description="host:port of a Prometheus Pushgateway; empty: textfile only")

    # --- training ------------------------------------------------------------------------------------------
    label: Label | None = Field(
        None,
        description="The churn label training uses, inactivity or closure (churn_common.labels); empty: the "
        "catalogue's",
    )
    label_horizon_days: int = 30
    observation_cadence_days: int = 7
    active_window_days: int = 30
    mlflow_tracking_uri: str = Field("", description="Empty: a local SQLite file under data_dir")
    promotion_tolerance: float = Field(
        0.01,
        ge=0,
        description="Non-inferiority margin: a challenger is promoted when the 95 % interval of its ROC-AUC minus the "
        "champion's, on the challenger's test window, stays above minus this",
    )
    promotion_min_positives: int = Field(
        30, ge=1, description="Refuse promotion when the test window holds fewer churners (too few to compare)"
    )

    # --- serving -------------------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_token: SecretStr | None = Field(
        None, description="When set, /predict* require 'Bearer <token>'; audited as token id 'default'"
    )
    api_tokens: SecretStr | None = Field(
        None,
        description="Named tokens for /predict*: JSON {id: token}, or the path of a file holding it (a mounted "
        "Secret); each request is audited with its token's id. Combines with api_token",
    )
    model_signing_key: SecretStr | None = Field(
        None,
        description="HMAC key (a Secret) of the model signatures: set, training signs every version's artifact digest "
        "and serving, batch scoring and the promotion gate refuse a version whose artifacts do not verify, before "
        "unpickling them. Unset: versions are neither signed nor verified",
    )
    erasure_key: SecretStr | None = Field(
        None, description="Key of the erasure register's hashes; unset: one generated once under data_dir/privacy"
    )
    batch_max_ids: int = 100
    push_timeout_ms: int = Field(
        2_000,
        gt=0,
        description="Bound on a push's write (POST /events), from the body's end: a later answer is a 503, after "
        "which the push may or may not have been applied. Longer than a read's: a retried push counts twice",
    )
    push_max_events: int = Field(
        1_000, gt=0, le=10_000, description="Most events one POST /events (or `churn push`) request may carry"
    )
    online_timeout_ms: int = Field(
        200, gt=0, description="Bound on a request's online read, from its arrival: a later answer is a 503"
    )
    max_body_bytes: int = Field(
        1_048_576, gt=0, description="Largest request body (100 batch ids take ~2 KB); larger ones get a 413"
    )
    body_timeout_seconds: float = Field(
        10.0, gt=0, description="Time a request may take to send its body, from its headers' end; then a 408"
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time a connection may take to send a request's headers, from its opening or the request's "
        "first byte (churn serve); then a 408 and the connection closed",
    )
    max_header_bytes: int = Field(
        32_768, gt=0, description="Largest request line plus headers (churn serve); larger ones get a 431"
    )
    keep_alive_seconds: float = Field(5.0, gt=0, description="An idle keep-alive connection is closed after this")
    freshness_slo_seconds: int = Field(
        2 * 86_400,
        description="Age of the online features the freshness alert allows; not a readiness condition (the API "
        "keeps serving, and answers users whose features are outside their ttl with a 503)",
    )
    model_poll_seconds: float = 30.0
    max_concurrency: int = 64
    prediction_log_share: float = Field(
        1.0, ge=0, le=1, description="Share of the API's scored answers kept in the prediction log (0: none)"
    )
    prediction_log_flush_seconds: float = Field(5.0, gt=0, description="How often the API writes its predictions")
    prediction_log_dir: Path | None = Field(
        None, description="The prediction log's root; empty: <data_dir>/predictions"
    )
    otel_telemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry spans, metrics and logs (with a provider configured); "
        "off: the API exports Prometheus metrics, and the per-request check costs ~5 % of /predict",
    )

    # --- retraining -----------------------------------------------------------------------------------------
    retrain_max_age_days: int = Field(28, gt=0, description="A champion older than this is retrained (schedule)")
    retrain_cooldown_days: int = Field(
        7, ge=0, description="After a retrain, drift, decay and schedule wait this long before the next (not --force)"
    )

    # --- drift monitoring ----------------------------------------------------------------------------------
    drift_psi_threshold: float = Field(
        0.2, gt=0, description="A feature (or the scores) has drifted when its PSI against the reference exceeds this"
    )
    drift_thresholds: dict[str, PositiveFloat] = Field(
        default_factory=dict,
        description='Per-feature PSI thresholds over drift_psi_threshold, as JSON: {"tenure_days": 0.5}; '
        '"churn_probability" is the scores\'',
    )

    # --- performance monitoring ----------------------------------------------------------------------------
    performance_ece_threshold: float = Field(
        0.05,
        gt=0,
        le=1,
        description="A matured date's calibration has drifted when its expected calibration error (10 equal-frequency "
        "bins) exceeds this and chance cannot explain it (performance_calibration_alpha)",
    )
    performance_calibration_alpha: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="Significance level of the Hosmer-Lemeshow test that the matured labels deviate from the "
        "probabilities by more than chance",
    )
    performance_decay_threshold: float = Field(
        0.05,
        ge=0,
        description="Decay: a date's ROC-AUC (its matured one, else the estimate) is under its model's test ROC-AUC "
        "by more than this",
    )
    performance_tolerance_z: float = Field(
        3.0,
        gt=0,
        description="An estimate's tolerance: this many standard deviations of the matured metric's spread by chance "
        "when the model is calibrated",
    )

    def clock(self) -> datetime:
        """The current instant: ``now`` when set (a simulated day), else the wall clock. Always UTC-aware."""
        if self.now is None:
            return datetime.now(UTC)
        return self.now if self.now.tzinfo else self.now.replace(tzinfo=UTC)

    def generated_start(self, n_days: int) -> date:
        """First day of a generated period of ``n_days``: ``start_date``, or so that the period ends yesterday."""
        return self.start_date or self.clock().date() - timedelta(days=n_days)

    @property
    def prediction_log_root(self) -> Path:
        """Where batch scoring and the API write the prediction log, and monitoring reads it."""
        return self.prediction_log_dir or self.paths.predictions

    def event_catalog(self) -> EventCatalog:
        return load_catalog(self.catalog)

    @property
    def paths(self) -> DataPaths:
        # Not cached: model_copy(update={"data_dir": ...}) would carry a cached value over.
        return DataPaths(self.data_dir.resolve())

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.paths.mlflow_db}"

    @property
    def redis_connection_string(self) -> str:
        """Feast's Redis connection string: ``host:port,db=N[,password=...]``, read back by Feast as exactly this
        password whatever it holds (see :func:`_connection_value`)."""
        parts = [f"{self.redis_host}:{self.redis_port}", f"db={self.redis_db}"]
        if self.redis_password is not None:
            parts.append(f"password={_connection_value(self.redis_password.get_secret_value())}")
        return ",".join(parts)


def _connection_value(text: str) -> str:
    """``text`` as a value of Feast's Redis connection string. Feast splits the string at every ``,`` and reads each
    value as JSON when it parses as JSON, else as it is: a value with a comma (``x,db=5`` would select db 5) or one
    JSON reads as something else (``123``, ``true``, ``"x"``) is written as a JSON string with its commas escaped."""
    try:
        json.loads(text)
    except ValueError:
        if "," not in text:
            return text
    return json.dumps(text).replace(",", "\\u002c")
