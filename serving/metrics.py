"""Prometheus metrics of one app instance, on a registry of its own (tests run several apps in one process)."""

import time
from collections.abc import Iterator, Sequence
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from churn_common.online import OnlineVector

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_READ_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_MODEL_LABELS = ["name", "version", "alias"]
_PROBABILITY_BUCKETS = tuple(round(step / 10, 1) for step in range(1, 11))


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "churn_http_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "churn_http_request_duration_seconds",
            "HTTP request latency by endpoint and status",
            ["endpoint", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.probability = Histogram(
            "churn_prediction_probability", "Predicted churn probability", buckets=_PROBABILITY_BUCKETS, registry=r
        )
        self.risk_band = Counter("churn_predictions_by_risk_band", "Predictions by risk band", ["band"], registry=r)
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
        self.freshness = Gauge(
            "churn_feature_age_seconds", "Age of the newest online feature snapshot seen", registry=r
        )
        # labels() takes a lock and builds a key per call; label values here are few, so their children are kept.
        self._request_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self._band_children: dict[str, Counter] = {}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        children = self._request_children.get((endpoint, status))
        if children is None:
            code = str(status)
            children = self._request_children[endpoint, status] = (
                self.requests.labels(endpoint, code),
                self.latency.labels(endpoint, code),
            )
        children[0].inc()
        children[1].observe(seconds)

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

    def observe_prediction(self, probability: float, band: str) -> None:
        self.probability.observe(probability)
        child = self._band_children.get(band)
        if child is None:
            child = self._band_children[band] = self.risk_band.labels(band)
        child.inc()

    def set_model(self, name: str, version: str, alias: str) -> None:
        self.model_info.labels = (name, version, alias)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


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
