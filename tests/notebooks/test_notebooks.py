"""The notebooks: stored without outputs and without logic of their own, and each one run top to bottom through
nbclient on a small data directory made by the same commands a user runs, writing nothing outside it."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ARTIFACTS

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
EXPECTED = {
    "01_explore_features.ipynb",
    "02_model_report.ipynb",
    "03_point_in_time_vs_naive_join.ipynb",
    "04_monitoring.ipynb",
}
NOTEBOOK_IMPORTS = {
    "churn_common",
    "transformations",
    "training",
    "serving",
    "monitoring",
    "pandas",
    "duckdb",
    "matplotlib",
    "mlflow",
    "sklearn",
    "tempfile",
}
# What a user runs before the notebooks (the README's pipeline), on a world small enough for the tests.
WORLD_COMMANDS = (
    ("data", "generate", "--users", "300", "--days", "150", "--seed", "7"),
    ("data", "validate"),
    ("features", "build"),
    ("features", "apply"),
    ("train", "--promote"),
)


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    assert {path.name for path in _notebooks()} >= EXPECTED


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_notebook_is_nbformat4_without_outputs_or_logic(path: Path) -> None:
    notebook = json.loads(path.read_text())
    assert notebook["nbformat"] == 4 and isinstance(notebook["nbformat_minor"], int)
    assert notebook["metadata"]["kernelspec"]["language"] == "python"
    cells = notebook["cells"]
    assert cells
    if notebook["nbformat_minor"] >= 5:
        ids = [cell.get("id") for cell in cells]
        assert all(ids) and len(set(ids)) == len(ids), "nbformat 4.5+ needs a unique id on every cell"
    imported: set[str] = set()
    for index, cell in enumerate(cells):
        where = f"{path.name} cell {index}"
        assert cell["cell_type"] in {"markdown", "code", "raw"}, where
        assert isinstance(cell["source"], list | str) and isinstance(cell["metadata"], dict), where
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        assert cell["outputs"] == [] and cell["execution_count"] is None, f"{where}: committed outputs"
        tree = ast.parse(source)
        defined = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Lambda)]
        assert not defined, f"{where}: logic belongs in the packages"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module, f"{where}: relative import"
                imported.add(node.module.split(".")[0])
    assert imported, f"{path.name} imports nothing"
    assert imported <= NOTEBOOK_IMPORTS, f"{path.name} imports {sorted(imported - NOTEBOOK_IMPORTS)}"
    nbformat.validate(nbformat.reads(path.read_text(), as_version=4))


def _hermetic_env(root: Path) -> dict[str, str]:
    """The environment of the commands and the kernel: our data directory, and every per-user directory the
    kernel machinery or a library writes (IPython's profile, Jupyter's connection files, matplotlib's cache)
    under the test's own folder. No bytecode, so importing the packages leaves no trace in the repository."""
    home = root / "home"
    return {
        **os.environ,
        "CHURN_DATA_DIR": str(root / "data"),
        "HOME": str(home),
        "IPYTHONDIR": str(home / "ipython"),
        "JUPYTER_RUNTIME_DIR": str(home / "jupyter"),
        "MPLCONFIGDIR": str(home / "matplotlib"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A small data directory as `make demo` leaves it: generated, validated, built, applied, a champion."""
    env = _hermetic_env(tmp_path_factory.mktemp("notebooks"))
    for command in WORLD_COMMANDS:
        result = subprocess.run(
            [sys.executable, "-m", "jobs.cli", *command], env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"churn {' '.join(command)}: {result.stdout}{result.stderr}"
    return env


def _repository_state() -> set[str]:
    """Every file git sees in the work tree, untracked and ignored ones included (a stray mlflow.db is ignored),
    but the screenshots other tests leave under build/test-artifacts while this one runs beside them (-n 2)."""
    artifacts = ARTIFACTS.resolve()
    inside = (
        artifacts.relative_to(ROOT.resolve()).as_posix() + "/" if artifacts.is_relative_to(ROOT.resolve()) else None
    )
    listing = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = set(listing.stdout.splitlines())
    return {line for line in lines if inside is None or not line[3:].startswith(inside)}


@pytest.mark.slow
def test_every_notebook_runs_on_small_data_and_writes_nothing_outside_the_data_directory(
    world: dict[str, str],
) -> None:
    """One test over one world (its commands cost more than all notebooks), each notebook in turn."""
    for name in sorted(EXPECTED):
        _run(name, world)


def _run(name: str, world: dict[str, str]) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    before = _repository_state()
    # From notebooks/ as Jupyter would start it: a relative path anywhere would land in the repository.
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}})
    client.execute(env=world)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), f"{name}: a cell did not run"
    assert not [out for cell in code for out in cell.outputs if out.output_type == "error"], name
    assert code[-1].outputs, f"{name}: the last cell shows nothing"
    assert _repository_state() == before, f"{name} wrote into the repository: {_repository_state() - before}"
