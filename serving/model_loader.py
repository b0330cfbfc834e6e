"""The champion: which model version serves, its FeatureService and its reader, swapped atomically on change.

A request takes ``holder.current`` once and uses that bundle throughout, so a swap between two awaits cannot
mix one model with another version's features. Loading happens in a worker thread, off the event loop.
"""

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import anyio.to_thread
from feast import FeatureService, FeatureStore
from mlflow.entities.model_registry import ModelVersion
from pydantic import SecretStr

from churn_common.champion import feature_service_of, load_version, registry_client, version_by_alias
from churn_common.compiled import tuple_getter
from churn_common.errors import ChurnError, ConfigurationError
from churn_common.feature_frame import ServiceSchema, service_schema
from churn_common.model import ChurnModel
from churn_common.names import CHAMPION_ALIAS
from churn_common.population import PopulationRule, Status
from churn_common.store import get_feature_service
from serving.features import FeatureReader, context_view
from serving.metrics import ServingMetrics
from serving.redaction import Redactor, uri_password
from serving.scoring import BatchScorer, scorer_for
from serving.today import TodayPresenter

logger = logging.getLogger(__name__)

# Scores for identical inputs are identical, and a user's features change once per snapshot; this many
# recent (features -> score) results are kept per champion.
SCORE_CACHE_SIZE = 50_000


class ScoreCache:
    """A bounded LRU map from a feature tuple to its scored result."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[tuple, Any] = OrderedDict()

    def get(self, key: tuple) -> Any:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    @property
    def enabled(self) -> bool:
        return self._size > 0

    def put(self, key: tuple, value: Any) -> None:
        if not self.enabled:
            return
        self._entries[key] = value
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)


@dataclass(frozen=True)
class Champion:
    model: ChurnModel
    name: str
    version: str
    alias: str
    feature_service: str
    schema: ServiceSchema
    reader: FeatureReader
    scores: ScoreCache
    scorer: BatchScorer
    rule: PopulationRule  # who is scored; the service provides the features it reads
    today: TodayPresenter | None = None  # today's activity beside the answer; None without a today view

    @cached_property
    def unscored_detail(self) -> dict[Status, str]:
        """Why a closed or inactive user gets no probability, in plain words."""
        days, feature = self.rule.active_window_days, self.rule.activity_feature
        return {
            Status.CLOSED: "the account is closed: only open accounts are scored",
            Status.INACTIVE: f"no activity in the last {days} days ({feature} is 0): users inactive that long "
            "have already churned, and the model does not score them",
        }

    @cached_property
    def model_ref(self) -> dict[str, str]:
        """schemas.ModelRef's fields, as every prediction body carries them."""
        return {"name": self.name, "version": self.version, "alias": self.alias}

    @cached_property
    def model_inputs(self) -> Callable[[dict[str, Any]], tuple]:
        """Online features -> the model's inputs as a tuple, in model order (a score cache key)."""
        return tuple_getter(self.model.feature_names)


@dataclass
class ChampionHolder:
    current: Champion | None = None
    problem: str = "the champion model has not been loaded yet"


ReaderFactory = Callable[[FeatureStore, FeatureService], FeatureReader]


class ChampionLoader:
    """Resolves ``models:/<name>@champion`` and builds a Champion from it (blocking; run in a thread); a version
    whose FeatureService lacks what ``rule`` reads does not load, nor, with ``signing_key``, one whose artifacts do not
    verify against its signature (checked before unpickling). ``redact`` cleans what a failure says (MLflow
    quotes the tracking URI, credentials included) before it is logged or shown by /ready and /predict."""

    def __init__(
        self,
        tracking_uri: str,
        store: FeatureStore,
        make_reader: ReaderFactory,
        rule: PopulationRule,
        score_cache_size: int = SCORE_CACHE_SIZE,
        *,
        redact: Callable[[str], str] | None = None,
        signing_key: SecretStr | None = None,
    ) -> None:
        self.redact = redact or Redactor([password] if (password := uri_password(tracking_uri)) else [])
        self._client = registry_client(tracking_uri)
        self._signing_key = signing_key
        self._score_cache_size = score_cache_size
        self._store = store
        self._make_reader = make_reader
        self._rule = rule

    def champion_version(self) -> ModelVersion:
        return version_by_alias(self._client, CHAMPION_ALIAS)

    def load(self, version: ModelVersion) -> Champion:
        service_name = feature_service_of(version)
        model = load_version(self._client, version, self._signing_key)
        self._store.refresh_registry()
        service = get_feature_service(self._store, service_name)
        schema = service_schema(service)
        self._check_service(version, model, service_name, schema)
        reader = self._make_reader(self._store, service)
        scorer, scores = scorer_for(model, schema), ScoreCache(self._score_cache_size)
        return Champion(
            model,
            version.name,
            str(version.version),
            CHAMPION_ALIAS,
            service_name,
            schema,
            reader,
            scores,
            scorer,
            self._rule,
            TodayPresenter.of(context_view(self._store)),
        )

    def _check_service(
        self, version: ModelVersion, model: ChurnModel, service_name: str, schema: ServiceSchema
    ) -> None:
        """The service must provide the model's inputs and the features the population rule reads."""
        unknown = sorted(set(model.feature_names) - set(schema.features))
        if unknown:
            raise ConfigurationError(f"model {version.version} needs features {unknown} not in {service_name}")
        try:
            self._rule.require(schema.features)
        except ConfigurationError as exc:
            raise ConfigurationError(f"model {version.version} cannot be served from {service_name}: {exc}") from exc


async def refresh_champion(holder: ChampionHolder, loader: ChampionLoader, metrics: ServingMetrics) -> bool:
    """Load the champion if it changed. Returns whether a swap happened; keeps serving the old one on failure."""
    metrics.model_load_started()
    version: ModelVersion | None = None
    try:
        version = await anyio.to_thread.run_sync(loader.champion_version)
        current = holder.current
        if current is not None and current.version == str(version.version):
            metrics.model_load_succeeded()
            return False
        champion = await anyio.to_thread.run_sync(loader.load, version)
    # Not only our errors: unpickling runs the model's own code, and one bad version must not stop the poller.
    except Exception as exc:  # noqa: BLE001 - logged and counted in _load_failed, retried at the next poll
        _load_failed(holder, metrics, exc, version, loader.redact)
        return False
    metrics.model_load_succeeded()
    holder.current = champion
    logger.info("serving %s version %s (%s)", champion.name, champion.version, champion.feature_service)
    return True


def _load_failed(
    holder: ChampionHolder,
    metrics: ServingMetrics,
    exc: Exception,
    version: ModelVersion | None,
    redact: Callable[[str], str],
) -> None:
    metrics.model_load_failed(exc)
    step = "resolving the champion alias" if version is None else f"loading champion version {version.version}"
    failure = redact(f"{step} failed: {type(exc).__name__}: {exc}")
    serving = "nothing" if holder.current is None else f"version {holder.current.version}"
    logger.warning("%s; still serving %s, retrying at the next poll", failure, serving)
    # The traceback's own lines quote the exception again; a debug line, and the API's log handler redacts it.
    logger.debug("champion load failure", exc_info=exc)
    if holder.current is None:
        # Our errors' messages say what failed; anyone else's needs its type and the step it came from.
        holder.problem = redact(str(exc)) if isinstance(exc, ChurnError) else failure


async def poll_champion(
    holder: ChampionHolder,
    loader: ChampionLoader,
    metrics: ServingMetrics,
    interval_s: float,
    on_swap: Callable[[Champion], None],
) -> None:
    """Refresh every ``interval_s`` until cancelled; no failure of one poll ends the loop."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            if await refresh_champion(holder, loader, metrics) and holder.current is not None:
                on_swap(holder.current)
        # Whatever escapes (the swap callback's failure included) must not end the task: no later promotion or
        # rollback would ever be applied, and nothing would say so.
        except Exception:
            logger.exception("champion poll failed; polling again in %s s", interval_s)
