"""The logged model needs nothing of this project: in a fresh venv holding only the model's own requirements.txt,
``mlflow.pyfunc.load_model`` predicts, and ``mlflow models serve`` answers /invocations with the probabilities the
project's model gives.

The venv is built once per requirements.txt (keyed by its hash, under the temporary directory) and reused by later
runs; the first build downloads the requirements from the package index.
"""

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version as installed_version
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.models import Model

from churn_common.names import REGISTERED_MODEL
from churn_common.settings import Settings
from products.elearning import FEATURE_SERVICE
from tests.training.test_registry import client_for, closed_port
from training import registry
from training.train import TrainingResult

pytestmark = pytest.mark.slow
INSTALL_TIMEOUT_S, STARTUP_TIMEOUT_S = 1_800, 120

LOAD_SCRIPT = """
import importlib.util, json, sys
import mlflow
from mlflow.models import Model
model_dir = sys.argv[1]
example = Model.load(model_dir).load_input_example(model_dir)
loaded = mlflow.pyfunc.load_model(model_dir)
import churn_common
print(json.dumps({
    "churn_common": churn_common.__file__,
    "project_importable": [name for name in ("training", "serving", "feast") if importlib.util.find_spec(name)],
    "proba": loaded.predict(example)["churn_probability"].tolist(),
    "bands": loaded.predict(example)["risk_band"].tolist(),
}))
"""


def model_venv(requirements: Path) -> Path:
    """A venv with exactly ``requirements`` installed, built once per content; a lock keeps two runs from building
    the same one. Built in place: console scripts (uvicorn, which ``mlflow models serve`` runs) hard-code its path."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    venv = Path(tempfile.gettempdir()) / f"churn-model-venv-{digest}"
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / "installed").exists():
            shutil.rmtree(venv, ignore_errors=True)  # whatever is there is an interrupted build
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(requirements)]
            subprocess.run(install, check=True, timeout=INSTALL_TIMEOUT_S, env=bare_env(venv))
            (venv / "installed").write_text(requirements.read_text())
    return venv


def bare_env(venv: Path) -> dict[str, str]:
    """The environment without any trace of this project: no PYTHONPATH, no project venv on PATH."""
    keep = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    path = [entry for entry in keep.get("PATH", "").split(os.pathsep) if not entry.startswith(sys.prefix)]
    return keep | {"PATH": os.pathsep.join([str(venv / "bin"), *path]), "PYTHONNOUSERSITE": "1"}


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory, trained: TrainingResult) -> Path:
    """The registered model's artifact directory, as ``mlflow models serve -m`` takes it."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("venv-model") / "data")
    version = registry.log_and_register(settings, trained, FEATURE_SERVICE)
    source = client_for(settings).get_model_version_download_uri(REGISTERED_MODEL, version.version)
    target = tmp_path_factory.mktemp("model-artifacts")
    return Path(mlflow.artifacts.download_artifacts(source, dst_path=str(target), tracking_uri=settings.tracking_uri))


def test_the_model_ships_its_code_and_exact_requirements(logged_model: Path) -> None:
    shipped = sorted(path.name for path in (logged_model / "code" / "churn_common").iterdir())
    assert shipped == ["__init__.py", "errors.py", "model.py"]
    requirements = (logged_model / "requirements.txt").read_text().split()
    names = ("mlflow", "cloudpickle", "numpy", "pandas", "scikit-learn", "scipy")
    assert sorted(requirements) == sorted(f"{name}=={installed_version(name)}" for name in names)


def test_the_model_loads_and_predicts_in_a_venv_without_the_project(
    logged_model: Path, trained: TrainingResult, tmp_path: Path
) -> None:
    venv = model_venv(logged_model / "requirements.txt")
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", LOAD_SCRIPT, str(logged_model)],
        cwd=tmp_path,
        env=bare_env(venv),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["project_importable"] == []
    assert Path(out["churn_common"]).is_relative_to(logged_model / "code")
    example = Model.load(str(logged_model)).load_input_example(str(logged_model))
    expected = trained.model.predict_proba(example)
    assert out["proba"] == pytest.approx(expected.tolist(), abs=1e-9)
    assert out["bands"] == [trained.model.risk_band(p) for p in expected]


@contextmanager
def served(venv: Path, model_dir: Path, cwd: Path) -> Iterator[str]:
    port = closed_port()
    log = (cwd / "serve.log").open("w")
    command = [str(venv / "bin" / "python"), "-m", "mlflow", "models", "serve", "-m", str(model_dir)]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    # Its own process group: the server is a child of the CLI, and both are ended together below.
    server = subprocess.Popen(
        command, cwd=cwd, env=bare_env(venv), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, server, cwd / "serve.log")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def _wait_ready(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow models serve not ready after {STARTUP_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


def test_mlflow_models_serve_answers_with_the_projects_probabilities(
    logged_model: Path, trained: TrainingResult, tmp_path: Path
) -> None:
    venv = model_venv(logged_model / "requirements.txt")
    body = (logged_model / "serving_input_example.json").read_text()
    with served(venv, logged_model, tmp_path) as url:
        response = httpx.post(f"{url}/invocations", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    example = Model.load(str(logged_model)).load_input_example(str(logged_model))
    expected = trained.model.predict_proba(example)
    assert [row["churn_probability"] for row in predictions] == pytest.approx(expected.tolist(), abs=1e-9)
    assert [row["risk_band"] for row in predictions] == [trained.model.risk_band(p) for p in expected]
