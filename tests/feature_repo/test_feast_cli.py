"""The plain `feast` CLI from the feature repo, as the README offers it, beside the `churn` commands.

Each test copies feature_repo/ into its tmp dir with a data dir beside it, so the YAML's ``../data`` is the test's
data dir (project ``churn``, the YAML's own). `feast` runs as the real CLI in a subprocess; `churn` runs through its
typer app in this process (the same code the console script calls, without paying Feast's imports again).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest
from feast import FeatureStore
from typer.testing import CliRunner

from churn_common.settings import PROJECT_ROOT, Settings
from jobs.cli import app as churn
from products.elearning import FEATURE_SERVICE
from tests.feature_repo.factories import (
    day_end,
    feature_columns,
    newest_versions,
    random_accounts,
    random_snapshots,
    write_features,
)

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
DAYS = [date(2026, 3, 1) + timedelta(days=i) for i in range(3)]
USERS = range(1, 21)
NOW = day_end(DAYS[-1]) + timedelta(hours=3)


@dataclass
class Checkout:
    """A copy of the feature repo with its ../data, and the commands run against it."""

    repo: Path
    data: Path
    outputs: list[str]

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CHURN_DATA_DIR": str(self.data),
            "CHURN_FEATURE_REPO": str(self.repo),
            "CHURN_FEAST_PROJECT": "churn",
            "CHURN_FEAST_PROFILE": "embedded",
            "CHURN_NOW": NOW.isoformat(),
        }

    def run(self, program: str, *args: str) -> str:
        if program == "churn":
            result = CliRunner().invoke(churn, list(args), env=self.env, catch_exceptions=False)
            stdout, output, code = result.stdout, result.output, result.exit_code
        else:
            done = subprocess.run(
                [str(BIN / program), *args], cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=240
            )
            stdout, output, code = done.stdout, done.stdout + done.stderr, done.returncode
        self.outputs.append(f"$ {program} {' '.join(args)}\n{output}")
        assert code == 0, output[-3000:]
        return stdout

    def materialize(self) -> dict:
        out = self.run("churn", "materialize")
        return json.loads(out[out.index("{") :])

    def assert_plan_is_clean(self) -> None:
        plan = self.run("feast", "plan")
        assert "No changes to registry" in plan and "No changes to infrastructure" in plan, plan

    def assert_nothing_deleted(self) -> None:
        deleted = [output for output in self.outputs if "Deleted" in output]
        assert not deleted, deleted


def _checkout(root: Path) -> tuple[Checkout, pd.DataFrame]:
    repo, data = root / "feature_repo", root / "data"
    shutil.copytree(PROJECT_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("__pycache__"))
    snapshots = random_snapshots(USERS, DAYS, seed=31, created_delay=timedelta(0))
    accounts = random_accounts(USERS, seed=32, closed={3: day_end(DAYS[1])})
    write_features(Settings(data_dir=data).paths, snapshots, accounts)
    return Checkout(repo, data, []), newest_versions(snapshots, accounts)


def _assert_served(checkout: Checkout, expected: pd.DataFrame) -> None:
    """Read back through plain Feast (the YAML as it is, from the repo) what the SQLite online store holds."""
    store = FeatureStore(repo_path=str(checkout.repo))
    users = [1, 3, 20]
    online = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE), entity_rows=[{"user_id": u} for u in users]
    ).to_df()
    columns = [*feature_columns(), "plan", "country", "acquisition_channel", "account_status"]
    got = online.set_index("user_id")[columns]
    want = expected.loc[users, columns].astype(got.dtypes.to_dict())
    pd.testing.assert_frame_equal(got, want, check_names=False)
    assert got["account_status"].tolist() == ["open", "closed", "open"]


def test_plain_feast_cli_works_from_the_feature_repo(tmp_path):
    """`feast plan/apply/materialize` from feature_repo/ exactly as documented."""
    checkout, expected = _checkout(tmp_path)
    assert FEATURE_SERVICE in checkout.run("feast", "plan")
    checkout.run("feast", "apply")
    # ../data relative to the repo, one registry per profile, as documented.
    assert (checkout.data / "feast" / "embedded" / "registry.db").is_file()
    # The README's window: from before any signup (the account view has no ttl) to now.
    [start] = re.findall(r"^feast materialize (\S+) ", (PROJECT_ROOT / "README.md").read_text(), flags=re.MULTILINE)
    checkout.run("feast", "materialize", start, NOW.strftime("%Y-%m-%dT%H:%M:%S"))
    assert (checkout.data / "feast" / "embedded" / "online.db").is_file()
    assert FEATURE_SERVICE in checkout.run("feast", "feature-services", "list")
    _assert_served(checkout, expected)


def test_churn_and_feast_apply_are_interchangeable_and_keep_the_online_store(tmp_path):
    """A plain `feast apply` after `churn features apply` + `churn materialize` used to drop every SQLite table
    (the two spelled the online store's path differently) and delete the project; then `churn materialize`
    reported success over the emptied store."""
    checkout, expected = _checkout(tmp_path / "churn-first")
    checkout.run("churn", "features", "apply")
    first = checkout.materialize()
    assert (first["mode"], first["users_written"]) == ("refill", len(USERS))
    checkout.run("feast", "apply")
    checkout.assert_plan_is_clean()
    again = checkout.materialize()
    assert (again["mode"], again["users_written"], again["build"]) == ("noop", 0, first["build"])
    _assert_served(checkout, expected)
    checkout.run("churn", "features", "apply")
    checkout.assert_plan_is_clean()
    _assert_served(checkout, expected)
    checkout.assert_nothing_deleted()

    reverse, expected = _checkout(tmp_path / "feast-first")
    reverse.run("feast", "apply")
    reverse.run("churn", "features", "apply")
    reverse.assert_plan_is_clean()
    assert reverse.materialize()["users_written"] == len(USERS)
    reverse.run("feast", "apply")
    reverse.assert_plan_is_clean()
    _assert_served(reverse, expected)
    reverse.assert_nothing_deleted()
