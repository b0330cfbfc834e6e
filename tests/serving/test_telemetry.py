"""FastAPI's native OpenTelemetry is off unless the setting turns it on, even with a tracer provider configured.

Each case runs in a fresh interpreter: OpenTelemetry's global tracer provider can be set once per process."""

import ast
import subprocess
import sys

from churn_common.settings import PROJECT_ROOT

_SPANS_OF_ONE_REQUEST = """
import asyncio, sys
import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from churn_common.settings import Settings
from serving.app import create_app

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
app = create_app(Settings(otel_telemetry=sys.argv[1] == "on"))

async def health() -> int:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return (await client.get("/health")).status_code

assert asyncio.run(health()) == 200
print(sorted({span.name for span in exporter.get_finished_spans()}))
"""


def _span_names(setting: str) -> list[str]:
    command = [sys.executable, "-W", "ignore::DeprecationWarning", "-c", _SPANS_OF_ONE_REQUEST, setting]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_no_fastapi_spans_by_default() -> None:
    assert _span_names("off") == []


def test_fastapi_spans_when_enabled() -> None:
    assert "GET /health" in _span_names("on")
