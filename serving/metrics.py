"""Prometheus metrics of one app instance, on a registry of its own (tests run several apps in one process)."""

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from datetime import datetime
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from churn_common.online import OnlineVector
from churn_common.population import Status

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_READ_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_MODEL_LABELS = ["name", "version", "alias"]
_PROBABILITY_BUCKETS = tuple(round(step / 10, 1) for step in range(1, 11))


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The per-request metrics: prometheus_client's Counter and Histogram take a lock and walk their bucket
        # objects on every update (a request's four updates were ~5 % of /predict's instructions, callgrind).
        self.requests = LoopHistogram(
            "churn_http_request_duration_seconds",
            "HTTP request latency by endpoint and status",
            ("endpoint", "status"),
            _LATENCY_BUCKETS,
            counter=("churn_http_requests", "HTTP requests by endpoint and status"),
        )
        self.probability = LoopHistogram(
            "churn_prediction_probability", "Predicted churn probability", (), _PROBABILITY_BUCKETS
        )
        self.risk_band = LoopCounter("churn_predictions_by_risk_band", "Predictions by risk band", ("band",))
        self.by_status = LoopCounter(
            "churn_predictions_by_status",
            "Users answered, by population status (scored, closed, inactive: 200; unknown: 404; stale: 503)",
            ("status",),
        )
        for collector in (self.requests, self.probability, self.risk_band, self.by_status):
            r.register(collector)
        self.missing = Counter(
            "churn_missing_feature_views", "Feature views absent for a scored user", ["view"], registry=r
        )
        self.stale = Counter(
            "churn_stale_feature_views", "Feature views older than their ttl for a scored user", ["view"], registry=r
        )
        self.online_read = Histogram(
            "churn_online_read_duration_seconds", "Online feature read latency", buckets=_READ_BUCKETS, registry=r
        )
        self.model_info = _ModelInfo()
        r.register(self.model_info)
        self.prediction_log_rows = Counter(
            "churn_prediction_log_rows", "Scored answers written to the prediction log", registry=r
        )
        self.prediction_log_failures = Counter(
            "churn_prediction_log_failures", "Scored answers the prediction log failed to write", registry=r
        )
        self.freshness = Gauge(
            "churn_feature_age_seconds", "Age of the newest online feature snapshot seen", registry=r
        )
        self.model_load_failures = Counter(
            "churn_model_load_failures",
            "Champion checks that failed (resolving the alias or loading the version), by exception class",
            ["reason"],
            registry=r,
        )
        self.model_load_attempt = Gauge(
            "churn_model_last_load_attempt_timestamp_seconds",
            "Unix time the champion alias was last checked (and its version loaded when it moved)",
            registry=r,
        )
        self.model_load_success = Gauge(
            "churn_model_last_load_success_timestamp_seconds",
            "Unix time a check last ended with the alias's version serving (loaded or already current)",
            registry=r,
        )

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.observe((endpoint, str(status)), seconds)

    def observe_vectors(self, vectors: Sequence[OnlineVector], now: datetime) -> None:
        """Missing and stale views of the users read, and the age of the newest snapshot among them."""
        newest = None
        for vector in vectors:
            if vector.as_of is None:
                continue  # an unknown user is counted as a 404, not as missing features
            newest = vector.as_of if newest is None or vector.as_of > newest else newest
            for view in vector.missing_views:
                self.missing.labels(view).inc()
            for view in vector.stale_views:
                self.stale.labels(view).inc()
        if newest is not None:
            self.freshness.set((now - newest).total_seconds())

    def observe_status(self, status: Status) -> None:
        self.by_status.inc((status.value,))

    def observe_prediction(self, probability: float, band: str) -> None:
        """A scored user's probability and band; users the rule does not score are counted by status only."""
        self.probability.observe((), probability)
        self.risk_band.inc((band,))

    def set_model(self, name: str, version: str, alias: str) -> None:
        self.model_info.labels = (name, version, alias)

    # Wall time, not Settings.clock(): an alert compares these with its own now, and a frozen simulated clock would
    # make a live poller look dead.
    def model_load_started(self) -> None:
        self.model_load_attempt.set(time.time())

    def model_load_succeeded(self) -> None:
        self.model_load_success.set(time.time())

    def model_load_failed(self, exc: Exception) -> None:
        self.model_load_failures.labels(type(exc).__name__).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class LoopHistogram(Collector):
    """A histogram kept as plain numbers, and optionally the count of its observations as a counter of its own.

    Unlocked: only the event loop's thread records (middleware and routes) and reads (/metrics runs on the loop
    too)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        buckets: Sequence[float],
        *,
        counter: tuple[str, str] | None = None,
    ) -> None:
        self._name, self._documentation, self._labels = name, documentation, list(labels)
        self._bounds = tuple(buckets)
        self._counter = counter
        # label values -> [count per bucket (the last one above every bound), sum of the observations]
        self._series: dict[tuple[str, ...], list] = {}
        if not labels:  # an unlabelled histogram is exposed from the start, as prometheus_client does
            self._new_series(())

    def _new_series(self, labels: tuple[str, ...]) -> list:
        series = self._series[labels] = [0] * (len(self._bounds) + 1) + [0.0]
        return series

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self._series.get(labels) or self._new_series(labels)
        # Bucket i counts the observations <= bound i: the first bound not below the value.
        series[bisect_left(self._bounds, value)] += 1
        series[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labels)
        bounds = [*map(floatToGoString, self._bounds), "+Inf"]
        for labels, series in self._series.items():
            family.add_metric(list(labels), list(zip(bounds, accumulate(series[:-1]), strict=True)), series[-1])
        yield family
        if self._counter is not None:
            family = CounterMetricFamily(*self._counter, labels=self._labels)
            for labels, series in self._series.items():
                family.add_metric(list(labels), sum(series[:-1]))
            yield family


class LoopCounter(Collector):
    """A counter kept as plain numbers, unlocked like :class:`LoopHistogram`."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self._name, self._documentation, self._labels = name, documentation, list(labels)
        self._counts: dict[tuple[str, ...], int] = {}

    def inc(self, labels: tuple[str, ...]) -> None:
        self._counts[labels] = self._counts.get(labels, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for labels, count in self._counts.items():
            family.add_metric(list(labels), count)
        yield family


class _ModelInfo(Collector):
    """The served version as an info-style gauge. A collector rather than a Gauge: swapping versions would need
    ``Gauge.clear()``, which warns once Feast has switched prometheus_client to multi-process mode (it sets
    PROMETHEUS_MULTIPROC_DIR when ``feast`` is imported)."""

    def __init__(self) -> None:
        self.labels: tuple[str, str, str] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("churn_model_info", "Served model version (value 1)", labels=_MODEL_LABELS)
        if self.labels is not None:
            family.add_metric(list(self.labels), 1)
        yield family


def _endpoint(scope: Scope) -> str:
    """The route template, so label values stay bounded whatever paths clients send."""
    route = scope.get("route")
    return route.path if route is not None else "unmatched"


class MetricsMiddleware:
    """Pure ASGI middleware (BaseHTTPMiddleware would add a task and a queue per request)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            self.metrics.observe_request(_endpoint(scope), status, time.perf_counter() - started)
