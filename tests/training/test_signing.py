"""Model signatures: unpickling a model runs its code, so whoever can write the artifact store or move the champion
alias could run code in every API pod. Training signs each version's artifacts (HMAC of their digest, a key from a
Secret); every loader (serving, batch scoring, the promotion gate) verifies before unpickling and refuses what does
not verify. Shown with a pickle that runs code when loaded."""

import asyncio
import pickle
from pathlib import Path

import pytest
from pydantic import SecretStr

from churn_common.champion import download_version, load_version, registry_client
from churn_common.errors import ModelSignatureInvalid
from churn_common.names import CHAMPION_ALIAS, REGISTERED_MODEL
from churn_common.population import PopulationRule
from churn_common.settings import Settings
from churn_common.signing import DIGEST_TAG, SIGNATURE_TAG, artifact_digest
from products.elearning import FEATURE_SERVICE
from serving.metrics import ServingMetrics
from serving.model_loader import ChampionHolder, ChampionLoader, refresh_champion
from training import registry
from training.train import TrainingResult

KEY = SecretStr("a key from the Secret")


class RunsOnLoad:
    """A pickle whose loading creates a file: any code could run there."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture
def signed(settings: Settings, trained: TrainingResult):
    signing = settings.model_copy(update={"model_signing_key": KEY})
    version = registry.log_and_register(signing, trained, FEATURE_SERVICE)
    client = registry_client(signing.tracking_uri)
    return signing, client, client.get_model_version(REGISTERED_MODEL, version.version)


def _tamper(client, version, marker: Path) -> None:
    """Replace the version's pickle in the artifact store, as someone with write access to it could."""
    (download_version(client, version) / "python_model.pkl").write_bytes(pickle.dumps(RunsOnLoad(marker)))


def test_a_signed_version_loads_and_carries_its_digest_and_signature(signed) -> None:
    settings, client, version = signed
    assert version.tags[DIGEST_TAG] == artifact_digest(download_version(client, version))
    assert len(version.tags[SIGNATURE_TAG]) == 64
    model = load_version(client, version, KEY)
    assert model.feature_names and registry.load_model(version, settings).feature_names == model.feature_names


def test_changed_artifacts_are_refused_before_their_code_runs(signed, tmp_path: Path) -> None:
    settings, client, version = signed
    marker = tmp_path / "code-ran"
    _tamper(client, version, marker)
    with pytest.raises(ModelSignatureInvalid, match="do not match its signature"):
        load_version(client, version, KEY)
    with pytest.raises(ModelSignatureInvalid):
        registry.load_model(version, settings)  # the promotion gate's loader
    assert not marker.exists()
    # Without verification the same files run their code: the threat the signature closes.
    with pytest.raises(Exception):  # noqa: B017 - whatever the unpickled object does next
        load_version(client, version, None)
    assert marker.exists()


def test_a_wrong_key_or_an_unsigned_version_is_refused(signed, trained: TrainingResult) -> None:
    settings, client, version = signed
    with pytest.raises(ModelSignatureInvalid, match="do not match"):
        load_version(client, version, SecretStr("another key"))
    unsigned = registry.log_and_register(
        settings.model_copy(update={"model_signing_key": None}), trained, FEATURE_SERVICE
    )
    unsigned = client.get_model_version(REGISTERED_MODEL, unsigned.version)
    assert SIGNATURE_TAG not in unsigned.tags
    with pytest.raises(ModelSignatureInvalid, match="not signed"):
        load_version(client, unsigned, KEY)


def test_serving_refuses_and_counts_a_champion_that_does_not_verify(signed, tmp_path: Path) -> None:
    settings, client, version = signed
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version.version)
    marker = tmp_path / "code-ran"
    _tamper(client, version, marker)
    # The loader checks the signature before it touches the feature store: none is needed to see the refusal.
    loader = ChampionLoader(settings.tracking_uri, None, None, PopulationRule(30), signing_key=KEY)
    holder, metrics = ChampionHolder(), ServingMetrics()
    assert asyncio.run(refresh_champion(holder, loader, metrics)) is False
    assert holder.current is None and "do not match its signature" in holder.problem
    assert metrics.model_load_failures.labels("ModelSignatureInvalid")._value.get() == 1
    assert not marker.exists()
