"""``churn serve`` itself: JSON log lines with the request id (X-Request-ID in and out), an audit line per
prediction request, and the tracking URI's credentials in none of /ready, the 503 bodies and the logs, with the
champion poll failing (and logging) every 0.3 s on an MLflow that cannot be reached."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving.world import World, free_port, server_env, server_process

pytestmark = [pytest.mark.redis, pytest.mark.e2e, pytest.mark.slow]
SECRET = "Ml-S3cret:pw@x"
TOKEN = "serve-logs-token"


@pytest.fixture(scope="module")
def served(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("serve-logs") / "stderr.log"
    # Nothing listens there: every champion check fails at once (no retries) with MLflow quoting the URI.
    tracking = f"http://alice:{SECRET.replace(':', '%3A').replace('@', '%40')}@127.0.0.1:{free_port()}/"
    env = server_env(
        world.settings,
        CHURN_MLFLOW_TRACKING_URI=tracking,
        CHURN_API_TOKENS=json.dumps({"crm": TOKEN}),
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )
    with log.open("wb") as stderr, server_process(env, via_cli=True, stderr=stderr) as (base, _):
        yield base, log


def log_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def wait_for_lines(log: Path, wanted, timeout_s: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while not wanted(lines := log_lines(log)):
        assert time.monotonic() < deadline, f"not logged within {timeout_s}s: {lines[-5:]}"
        time.sleep(0.1)
    return lines


def poll_warnings(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["logger"] == "serving.model_loader" and line["level"] == "WARNING"]


def test_the_tracking_uris_credentials_never_show(served):
    base, log = served
    ready = httpx.get(f"{base}/ready", timeout=30)
    predict = httpx.get(f"{base}/predict", params={"user_id": 1}, headers={"authorization": f"Bearer {TOKEN}"})
    lines = wait_for_lines(log, lambda lines: len(poll_warnings(lines)) >= 3)

    assert ready.status_code == 503 and predict.status_code == 503
    assert "http://***@127.0.0.1:" in ready.json()["reasons"][0]
    assert predict.json()["detail"].startswith("no model to serve: ") and "http://***@127.0.0.1:" in predict.text
    assert all("http://***@127.0.0.1:" in line["message"] for line in poll_warnings(lines))
    everything = [ready.text, predict.text, log.read_text()]
    for spelling in (SECRET, "Ml-S3cret%3Apw%40x", "Ml-S3cret", "alice:"):
        assert not any(spelling in text for text in everything), spelling


def test_log_lines_are_json_and_carry_the_request_id_in_and_out(served):
    base, log = served
    auth = {"authorization": f"Bearer {TOKEN}"}
    given = httpx.get(f"{base}/predict", params={"user_id": 7}, headers={**auth, "x-request-id": "req-abc-123"})
    generated = httpx.get(f"{base}/predict", params={"user_id": 8}, headers=auth)
    refused = httpx.get(f"{base}/predict", params={"user_id": 9}, headers={"x-request-id": "bad id with spaces"})
    ours = generated.headers["x-request-id"]
    lines = wait_for_lines(log, lambda lines: sum(line["logger"] == "churn.audit" for line in lines) >= 3)

    assert given.headers["x-request-id"] == "req-abc-123"
    assert ours and refused.headers["x-request-id"] not in (ours, "bad id with spaces")
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    audit = {line["request_id"]: line for line in lines if line["logger"] == "churn.audit"}
    common = {"level": "INFO", "message": "prediction request", "endpoint": "/predict", "model_version": None}
    assert {k: v for k, v in audit["req-abc-123"].items() if k != "time"} == {
        **common,
        "logger": "churn.audit",
        "request_id": "req-abc-123",
        "token_id": "crm",
        "status": 503,
        "user_ids": [7],
        "outcomes": None,
    }
    assert audit[ours]["user_ids"] == [8] and audit[ours]["token_id"] == "crm"
    assert audit[refused.headers["x-request-id"]]["status"] == 401
    assert audit[refused.headers["x-request-id"]]["token_id"] is None
    assert TOKEN not in log.read_text()
