"""One settings object for every entry point. Environment variables (prefix ``CHURN_``) override defaults.

Nothing here touches the disk or the network: paths are computed, never created, on construction.
"""

from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from churn_common.catalog import EventCatalog, load_catalog

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
        self.user_daily = self.features / "user_daily"
        self.snapshots = self.features / "user_daily_snapshots"
        self.builds = self.features / "builds"
        self.feast = root / "feast"
        self.models = root / "models"
        self.mlflow_db = root / "mlflow" / "mlflow.db"
        self.mlflow_artifacts = root / "mlflow" / "artifacts"
        self.metrics = root / "metrics"


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
    label_horizon_days: int = 30
    observation_cadence_days: int = 7
    active_window_days: int = 30
    mlflow_tracking_uri: str = Field("", description="Empty: a local SQLite file under data_dir")
    promotion_tolerance: float = Field(0.005, ge=0, description="Challenger may trail the champion by this AUC")
    promotion_min_positives: int = Field(
        30, ge=1, description="Refuse promotion when the test window holds fewer churners (too few to compare)"
    )

    # --- serving -------------------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_token: SecretStr | None = Field(None, description="When set, /predict* require 'Bearer <token>'")
    batch_max_ids: int = 100
    online_timeout_ms: int = 200
    freshness_slo_seconds: int = 2 * 86_400
    model_poll_seconds: float = 30.0
    max_concurrency: int = 64
    otel_telemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry spans, metrics and logs (with a provider configured); "
        "off: the API exports Prometheus metrics, and the per-request check costs ~5 % of /predict",
    )

    def clock(self) -> datetime:
        """The current instant: ``now`` when set (a simulated day), else the wall clock. Always UTC-aware."""
        if self.now is None:
            return datetime.now(UTC)
        return self.now if self.now.tzinfo else self.now.replace(tzinfo=UTC)

    def generated_start(self, n_days: int) -> date:
        """First day of a generated period of ``n_days``: ``start_date``, or so that the period ends yesterday."""
        return self.start_date or self.clock().date() - timedelta(days=n_days)

    def event_catalog(self) -> EventCatalog:
        return load_catalog(self.catalog)

    @cached_property
    def paths(self) -> DataPaths:
        return DataPaths(self.data_dir.resolve())

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.paths.mlflow_db}"

    @property
    def redis_connection_string(self) -> str:
        """Feast's Redis connection string: ``host:port,db=N[,password=...]``."""
        parts = [f"{self.redis_host}:{self.redis_port}", f"db={self.redis_db}"]
        if self.redis_password is not None:
            parts.append(f"password={self.redis_password.get_secret_value()}")
        return ",".join(parts)
