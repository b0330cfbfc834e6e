"""The day's monitoring report (``churn monitor report``, and the daily pipeline's last monitoring step): one
self-contained HTML page per scoring date, ``reports/daily/date=D.html``, for a person to read.

It is drawn from the reports the monitoring steps wrote, so it can be drawn again for any day: the drift report of
the day (per feature: PSI against its threshold, the reference and the day's distribution), the day's scores
against the training scores, estimated and matured ROC-AUC over every scoring date so far, and the day's retraining
decision. The per-feature charts are SVG in the page, the two others PNGs embedded as base64: the page needs
nothing beside it."""

import base64
import io
import json
import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from matplotlib.figure import Figure

from churn_common.errors import DataError
from churn_common.files import write_text_atomically
from churn_common.settings import DataPaths, Settings

logger = logging.getLogger(__name__)

_ENVIRONMENT = Environment(loader=PackageLoader("monitoring"), autoescape=select_autoescape(["html", "j2"]))


CHART_HEIGHT, BAR_WIDTH = 90.0, 9.0


def daily_report_file(paths: DataPaths, day: date) -> Path:
    return paths.reports / "daily" / f"date={day.isoformat()}.html"


@dataclass(frozen=True)
class Bar:
    x: float
    height: float
    share: float


@dataclass(frozen=True)
class BucketChart:
    """A feature's reference and day shares per bucket as SVG geometry: 40 features drawn by matplotlib cost ~5 s a
    report, as SVG in the page a few milliseconds."""

    labels: list[str]
    reference: list[Bar]
    day: list[Bar]
    width: float
    height: float = CHART_HEIGHT


@dataclass(frozen=True)
class FeaturePanel:
    name: str
    psi: float
    threshold: float
    drifted: bool
    chart: BucketChart


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _png(figure: Figure) -> str:
    # A bare Figure draws with the Agg canvas: no pyplot state, no backend switched under a caller (a notebook).
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _buckets_plot(title: str, buckets: list[dict[str, Any]]) -> str:
    """Reference and the day's share per bucket, side by side."""
    figure = Figure(figsize=(6, 2.6))
    axes = figure.subplots()
    positions = range(len(buckets))
    axes.bar([p - 0.2 for p in positions], [b["reference"] for b in buckets], width=0.4, label="training reference")
    axes.bar([p + 0.2 for p in positions], [b["snapshot"] for b in buckets], width=0.4, label="this day")
    axes.set_xticks(list(positions), [b["bucket"] for b in buckets], rotation=45, ha="right", fontsize=7)
    axes.set_ylabel("share of users")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7)
    return _png(figure)


def bucket_chart(buckets: list[dict[str, Any]]) -> BucketChart:
    """Per bucket a reference bar and a day bar side by side, heights scaled to the largest share."""
    top = max((max(b["reference"], b["snapshot"]) for b in buckets), default=0.0) or 1.0
    step = 2.5 * BAR_WIDTH

    def bars(key: str, offset: float) -> list[Bar]:
        return [Bar(i * step + offset, b[key] / top * CHART_HEIGHT, b[key]) for i, b in enumerate(buckets)]

    return BucketChart(
        [b["bucket"] for b in buckets], bars("reference", 0.0), bars("snapshot", BAR_WIDTH), len(buckets) * step
    )


def _feature_panels(drift: dict[str, Any]) -> list[FeaturePanel]:
    """Drifted features first, then by PSI: the page opens on what needs looking at."""
    features = sorted(drift["features"].items(), key=lambda item: (not item[1]["drifted"], -item[1]["psi"]))
    return [
        FeaturePanel(name, entry["psi"], entry["threshold"], entry["drifted"], bucket_chart(entry["buckets"]))
        for name, entry in features
    ]


def _performance_history(paths: DataPaths, day: date) -> list[dict[str, Any]]:
    """Every reported (date, model version) row up to ``day``, oldest first."""
    rows = []
    for path in sorted((paths.reports / "performance").glob("date=*.json")):
        if date.fromisoformat(path.stem.removeprefix("date=")) <= day:
            rows.extend(json.loads(path.read_text())["rows"])
    return sorted(rows, key=lambda row: (row["date"], row["model_version"]))


def _performance_plot(rows: list[dict[str, Any]]) -> str | None:
    """Estimated and matured ROC-AUC per scoring date, one pair of lines per model version, with its test ROC-AUC."""
    if not rows:
        return None
    figure = Figure(figsize=(7, 3))
    axes = figure.subplots()
    for version in sorted({row["model_version"] for row in rows}, key=int):
        mine = [row for row in rows if row["model_version"] == version]
        days = [date.fromisoformat(row["date"]) for row in mine]
        for kind, style in (("estimated", "--"), ("matured", "-")):
            values = [row["metrics"]["roc_auc"][kind] for row in mine]
            axes.plot(
                days, [float("nan") if v is None else v for v in values], style, marker=".", label=f"v{version} {kind}"
            )
        reference = mine[-1]["decay"]["test_roc_auc"]
        if reference is not None:
            axes.axhline(reference, linestyle=":", linewidth=1, color="grey")
    axes.set_ylabel("ROC-AUC")
    axes.set_title("estimated and matured ROC-AUC per scoring date (dotted: test ROC-AUC)", fontsize=9)
    axes.legend(fontsize=7)
    figure.autofmt_xdate()
    return _png(figure)


def render_daily_report(paths: DataPaths, day: date) -> str:
    """The page for ``day``; a missing drift or retrain report is said on the page, not hidden."""
    drift = _read(paths.reports / "drift" / f"date={day.isoformat()}.json")
    retrain = _read(paths.reports / "retrain" / f"date={day.isoformat()}.json")
    history = _performance_history(paths, day)
    if drift is None and retrain is None and not history:
        raise DataError(f"no monitoring report for {day} under {paths.reports}; run `churn pipeline daily` first")
    prediction = drift["prediction"] if drift else None
    return _ENVIRONMENT.get_template("daily_report.html.j2").render(
        day=day,
        bar_width=BAR_WIDTH,
        drift=drift,
        features=_feature_panels(drift) if drift else [],
        prediction=prediction,
        prediction_plot=_buckets_plot("churn probability", prediction["buckets"])
        if prediction and prediction.get("available")
        else None,
        today=[row for row in history if row["date"] == day.isoformat()],
        performance_plot=_performance_plot(history),
        retrain=retrain,
    )


def write_daily_report(settings: Settings, day: date) -> Path:
    target = daily_report_file(settings.paths, day)
    write_text_atomically(target, render_daily_report(settings.paths, day))
    logger.info("daily report for %s at %s", day, target)
    return target
