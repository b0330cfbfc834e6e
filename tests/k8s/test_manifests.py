"""Static checks of what ships to the cluster: the Dockerfile, k8s/ manifests, alert rules, dashboard, notebooks.

No cluster and no servers. The manifests are checked against the code they run - the CLI's commands and options,
the FastAPI routes, the Settings fields, the metric names the code exports - so a renamed option, route or metric
fails here instead of in a CronJob at 01:00.
"""

import ast
import copy
import functools
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.exceptions import TyperException

from churn_common.names import ACCOUNT_TABLE, SNAPSHOT_TABLE
from churn_common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
MONITORING = K8S / "monitoring"
NOTEBOOKS = ROOT / "notebooks"
NAMESPACE = "churn"
PART_OF = "churn-platform"
IMAGE_REPOSITORY = "churn-platform"
# Kept out of the kustomization so that `kubectl apply -k` can never overwrite real Secrets with placeholders.
SECRET_TEMPLATE = "secret.example.yaml"
PLACEHOLDER = "REPLACE_ME"
CLUSTER_SCOPED = {"Namespace"}
WORKLOAD_KINDS = {"Deployment", "Job", "CronJob"}
# The commands the platform must run somewhere in the cluster (k8s/README.md, "What runs when").
REQUIRED_COMMANDS = {("serve",), ("features", "apply"), ("pipeline", "daily"), ("train",)}
PIPELINE = "pipeline-daily"
# What `churn pipeline daily` chains: another schedule running one of them would bring back the race between a late
# build and a materialisation that had already run.
PIPELINE_STEPS = {("data", "validate"), ("features", "build"), ("materialize",), ("pipeline", "daily")}
# A daily run for 1M users, measured (validate, build, materialise).
MEASURED_RUN_SECONDS = 600
NOTEBOOK_IMPORTS = {
    "churn_common",
    "transformations",
    "training",
    "serving",
    "pandas",
    "duckdb",
    "matplotlib",
    "mlflow",
}


# ---------------------------------------------------------------------------------------------------- loading


def _yaml_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml")) + sorted(MONITORING.glob("*.yaml"))


@functools.cache
def _load(path: Path) -> list[dict[str, Any]]:
    # Cached and shared between tests: treat the documents as read-only.
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _objects() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object in k8s/ (kustomization files are build instructions, not objects)."""
    return [(path, doc) for path in _yaml_files() if path.name != "kustomization.yaml" for doc in _load(path)]


def _ref(path: Path, obj: dict[str, Any]) -> str:
    return f"{path.relative_to(ROOT)}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def _pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    return spec["jobTemplate"]["spec"]["template"] if obj["kind"] == "CronJob" else spec["template"]


def _workloads() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, obj) for path, obj in _objects() if obj["kind"] in WORKLOAD_KINDS]


def _containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(reference, container, pod spec) for every container of every workload."""
    for path, obj in _workloads():
        pod = _pod_template(obj)["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            yield f"{_ref(path, obj)} container {container['name']}", container, pod


def _is_mlflow(container: dict[str, Any]) -> bool:
    return container["name"] == "mlflow"


def _platform_containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [entry for entry in _containers() if not _is_mlflow(entry[1])]


def _kustomization(folder: Path) -> dict[str, Any]:
    [doc] = _load(folder / "kustomization.yaml")
    return doc


# ------------------------------------------------------------------------------------------ structure, identity


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_yaml_file_parses_into_mappings(path: Path) -> None:
    docs = _load(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path} holds a document that is not a mapping"


def test_every_object_has_identity_namespace_and_labels() -> None:
    objects = _objects()
    assert len(objects) >= 15
    for path, obj in objects:
        ref = _ref(path, obj)
        assert obj.get("apiVersion") and obj.get("kind"), ref
        metadata = obj.get("metadata", {})
        assert metadata.get("name"), f"{ref}: no metadata.name"
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in metadata, f"{ref} is cluster-scoped"
        else:
            assert metadata.get("namespace") == NAMESPACE, f"{ref}: namespace must be {NAMESPACE!r}"
        labels = metadata.get("labels", {})
        assert labels.get("app.kubernetes.io/name"), f"{ref}: no app.kubernetes.io/name label"
        assert labels.get("app.kubernetes.io/part-of") == PART_OF, f"{ref}: part-of must be {PART_OF!r}"


def test_pod_templates_carry_the_labels_their_selectors_match() -> None:
    for path, obj in _workloads():
        labels = _pod_template(obj)["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == obj["metadata"]["labels"]["app.kubernetes.io/name"], _ref(path, obj)
        assert labels["app.kubernetes.io/part-of"] == PART_OF, _ref(path, obj)
        selector = obj["spec"].get("selector", {}).get("matchLabels", {})
        assert selector.items() <= labels.items(), f"{_ref(path, obj)}: selector does not match the pod labels"
    selected = {
        (obj["kind"], obj["metadata"]["name"]): obj["spec"]["selector"]
        for _, obj in _objects()
        if obj["kind"] in {"Service", "PodDisruptionBudget"}
    }
    pods = [_pod_template(obj)["metadata"]["labels"] for _, obj in _workloads()]
    for key, selector in selected.items():
        match = selector.get("matchLabels", selector)
        assert any(match.items() <= labels.items() for labels in pods), f"{key} selects no pod"


def test_kustomization_lists_exactly_the_manifests_present() -> None:
    listed = _kustomization(K8S)["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    present = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", SECRET_TEMPLATE}
    assert set(listed) == present
    assert _kustomization(K8S)["namespace"] == NAMESPACE


def test_secret_template_is_never_applied_by_kustomize() -> None:
    assert SECRET_TEMPLATE not in _kustomization(K8S)["resources"]
    kinds = {obj["kind"] for path, obj in _objects() if path.name in _kustomization(K8S)["resources"]}
    assert "Secret" not in kinds, "a Secret in the kustomization would overwrite the real one on every apply"


def test_monitoring_kustomization_lists_exactly_its_files() -> None:
    kustomization = _kustomization(MONITORING)
    generated = {name for generator in kustomization["configMapGenerator"] for name in generator["files"]}
    present = {path.name for path in MONITORING.iterdir()} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) | generated == present


# ------------------------------------------------------------------------------------------------- containers


def test_every_platform_container_runs_the_same_image() -> None:
    images = {container["image"] for _, container, _ in _platform_containers()}
    assert len(images) == 1, f"containers disagree on the image: {images}"
    [image] = images
    repository, _, tag = image.partition(":")
    assert repository == IMAGE_REPOSITORY and tag, f"{image!r} is not {IMAGE_REPOSITORY}:<tag>"
    [override] = [entry for entry in _kustomization(K8S)["images"] if entry["name"] == IMAGE_REPOSITORY]
    assert override["newTag"] == tag


def test_every_container_sets_requests_and_limits() -> None:
    for ref, container, _ in _containers():
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= resources.get(kind, {}).keys(), f"{ref}: resources.{kind} cpu+memory"


def test_every_pod_runs_non_root_on_a_read_only_root_with_a_writable_tmp() -> None:
    for ref, container, pod in _containers():
        assert pod["securityContext"]["runAsNonRoot"] is True, ref
        assert pod["securityContext"]["runAsUser"] != 0, ref
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, ref
        assert security["allowPrivilegeEscalation"] is False, ref
        mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        assert "/tmp" in mounts, f"{ref}: nothing writable at /tmp"
        assert "emptyDir" in volumes[mounts["/tmp"]], f"{ref}: /tmp must be an emptyDir"


def test_platform_containers_take_settings_from_the_configmap_and_the_secret() -> None:
    for ref, container, _ in _platform_containers():
        sources = {(kind, ref_["name"]) for entry in container["envFrom"] for kind, ref_ in entry.items()}
        assert sources == {("configMapRef", "churn-config"), ("secretRef", "churn-secrets")}, ref


# ------------------------------------------------------------------------------------------- the churn commands


def _argv(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def _churn_invocations(container: dict[str, Any]) -> list[list[str]]:
    """The arguments of the `churn ...` a container runs (none through a shell: the CLI takes no shell's help)."""
    argv = _argv(container)
    return [argv[1:]] if argv[:1] == ["churn"] else []


def _is_group(command: Any) -> bool:
    return hasattr(command, "list_commands")


def _resolve(argv: list[str], where: str) -> tuple[str, ...]:
    """The subcommand path of `churn ARGV`; the leaf command then parses its own options and values, exactly as
    the CLI would (typer vendors its own click, so its parser is the only reliable judge)."""
    from jobs import cli

    command = typer.main.get_command(cli.app)
    ctx = command.context_class(command)
    path: list[str] = []
    tokens = list(argv)
    while _is_group(command):
        assert tokens, f"{where}: `churn {' '.join(path)}` is a group, not a command"
        token = tokens.pop(0)
        if token.startswith("-"):
            name, has_value, _ = token.partition("=")
            [param] = [p for p in command.params if name in (*p.opts, *p.secondary_opts)] or [None]
            assert param is not None, f"{where}: `churn {' '.join(path)}` has no option {name}"
            if not (param.is_flag or param.count or has_value):
                tokens.pop(0)
            continue
        sub = command.get_command(ctx, token)
        assert sub is not None, f"{where}: `churn {' '.join(path)}` has no command {token!r}"
        command = sub
        path.append(token)
    try:
        command.make_context(path[-1], list(tokens), parent=ctx)
    except TyperException as exc:
        pytest.fail(f"{where}: `churn {' '.join(path + tokens)}` is rejected by the CLI: {exc}")
    return tuple(path)


def test_every_churn_command_in_the_manifests_exists_with_its_options() -> None:
    used = set()
    for ref, container, _ in _platform_containers():
        invocations = _churn_invocations(container)
        assert invocations, f"{ref} runs no `churn` command: {_argv(container)}"
        used |= {_resolve(argv, ref) for argv in invocations}
    assert used >= REQUIRED_COMMANDS, f"not run anywhere: {REQUIRED_COMMANDS - used}"


def test_the_resolver_rejects_what_the_cli_does_not_have() -> None:
    # The check above is only as good as its failure modes.
    for argv in (["features", "biuld"], ["train", "--promot"], ["features"], ["features", "build", "--start", "x"]):
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            _resolve(argv, "self-test")


def _cronjob(name: str) -> dict[str, Any]:
    [cron] = [obj for _, obj in _objects() if obj["kind"] == "CronJob" and obj["metadata"]["name"] == name]
    return cron


def _start_seconds(schedule: str) -> int:
    """Seconds into its day at which a once-a-day schedule fires."""
    minute, hour = schedule.split()[:2]
    return int(hour) * 3600 + int(minute) * 60


def test_daily_pipeline_runs_without_a_shell_on_the_day_that_just_ended() -> None:
    from jobs.pipeline import default_day

    cron = _cronjob(PIPELINE)
    [container] = _pod_template(cron)["spec"]["containers"]
    assert _argv(container) == ["churn", "pipeline", "daily"], "no --date: the CLI's default day is yesterday"
    assert cron["spec"]["timeZone"] == "Etc/UTC"
    # Whatever time of day it fires, the day it processes is the one that ended at the last UTC midnight.
    fired = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(seconds=_start_seconds(cron["spec"]["schedule"]))
    assert default_day(Settings(now=fired)) == date(2026, 2, 28)


def test_only_the_daily_pipeline_runs_its_steps_on_a_schedule() -> None:
    for path, obj in _workloads():
        if obj["kind"] != "CronJob" or obj["metadata"]["name"] == PIPELINE:
            continue
        for container in _pod_template(obj)["spec"]["containers"]:
            steps = {_resolve(argv, _ref(path, obj)) for argv in _churn_invocations(container)} & PIPELINE_STEPS
            assert not steps, f"{_ref(path, obj)} runs {steps} on a schedule of its own, racing {PIPELINE}"


def test_daily_pipeline_cannot_overlap_is_bounded_and_ends_before_the_retrain() -> None:
    cron = _cronjob(PIPELINE)
    spec, job = cron["spec"], cron["spec"]["jobTemplate"]["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert job["backoffLimit"] >= 1
    # Room for a retry and a caught-up missed day, and still over within the day.
    assert 3 * MEASURED_RUN_SECONDS <= job["activeDeadlineSeconds"] < 86400
    assert spec["startingDeadlineSeconds"] > 0
    # The latest a run can end (created at the deadline, running to its limit) is before the retrain reads features.
    latest_end = _start_seconds(spec["schedule"]) + spec["startingDeadlineSeconds"] + job["activeDeadlineSeconds"]
    assert latest_end <= _start_seconds(_cronjob("retrain")["spec"]["schedule"])
    [container] = _pod_template(cron)["spec"]["containers"]
    [data] = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/data"]
    assert not data.get("readOnly"), "it writes validated tables, features, the build manifest and its metrics"
    config = {o["metadata"]["name"]: o for _, o in _objects() if o["kind"] == "ConfigMap"}["churn-config"]
    assert config["data"]["CHURN_PUSHGATEWAY_URL"], "the pipeline pushes its metrics to the Pushgateway"


def _readme_jobs() -> list[tuple[str, list[dict[str, Any]]]]:
    """(CronJob, JSON patch operations) of every Job the README creates from a CronJob."""
    text = (K8S / "README.md").read_text()
    jobs = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            source = re.search(r"--from=cronjob/([\w-]+)", command)
            if source:
                patches = [json.loads(patch) for patch in re.findall(r"-p '([^']*)'", command)]
                jobs.append((source.group(1), [operation for patch in patches for operation in patch]))
    return jobs


def _apply_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """The `add` and `replace` operations of a JSON patch (RFC 6902): all the README uses."""
    document = copy.deepcopy(document)
    for operation in operations:
        *parents, last = operation["path"].strip("/").split("/")
        target: Any = document
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        assert operation["op"] in {"add", "replace"}, operation
        # kubectl refuses to replace what is not there.
        assert operation["op"] == "add" or last in target, f"{operation}: nothing to replace"
        target[last] = copy.deepcopy(operation["value"])
    return document


def test_readme_recipes_create_jobs_the_cli_accepts() -> None:
    runs = []
    for name, operations in _readme_jobs():
        job = {"spec": _cronjob(name)["spec"]["jobTemplate"]["spec"]}
        [container] = _apply_patch(job, operations)["spec"]["template"]["spec"]["containers"]
        [argv] = _churn_invocations(container)
        runs.append((_resolve(argv, f"k8s/README.md: job from cronjob/{name} with {operations}"), argv))
    commands = {command for command, _ in runs}
    assert {("pipeline", "daily"), ("materialize",), ("train",)} <= commands
    assert any(command == ("pipeline", "daily") and "--date" in argv for command, argv in runs), "re-running day D"


# ----------------------------------------------------------------------------------------------- probes, routes


def _served_routes() -> set[str]:
    from serving.app import create_app

    # FastAPI 0.165 keeps included routers as wrappers in app.routes; the OpenAPI paths list every route.
    return set(create_app(Settings()).openapi()["paths"])


def test_probes_and_scrape_path_are_routes_the_api_serves() -> None:
    routes = _served_routes()
    assert {"/health", "/ready", "/metrics", "/predict"} <= routes
    [(_, api)] = [(p, o) for p, o in _workloads() if o["metadata"]["name"] == "churn-api"]
    template = _pod_template(api)
    [container] = template["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    config = {o["metadata"]["name"]: o for _, o in _objects() if o["kind"] == "ConfigMap"}["churn-config"]
    assert ports["http"] == int(config["data"]["CHURN_API_PORT"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes, f"{probe} {get['path']} is not served"
        assert get["port"] in ports or get["port"] in ports.values(), f"{probe} port {get['port']}"
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in routes
    assert int(annotations["prometheus.io/port"]) == ports["http"]


def test_api_rollout_keeps_capacity_and_scaling_respects_the_disruption_budget() -> None:
    by_kind = {(o["kind"], o["metadata"]["name"]): o for _, o in _objects()}
    api = by_kind[("Deployment", "churn-api")]
    assert api["spec"]["replicas"] == 2
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = by_kind[("HorizontalPodAutoscaler", "churn-api")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "churn-api"
    assert hpa["spec"]["minReplicas"] >= 2 > by_kind[("PodDisruptionBudget", "churn-api")]["spec"]["minAvailable"]


def test_mlflow_runs_a_real_server_with_its_backend_from_a_secret() -> None:
    [(_, mlflow)] = [(p, o) for p, o in _workloads() if o["metadata"]["name"] == "mlflow"]
    [container] = _pod_template(mlflow)["spec"]["containers"]
    argv = _argv(container)
    assert argv[:2] == ["mlflow", "server"]
    flags = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert flags["--backend-store-uri"] == "$(MLFLOW_BACKEND_URI)"
    assert flags["--artifacts-destination"] == "/mlartifacts"
    assert (flags["--host"], flags["--port"]) == ("0.0.0.0", "5000")
    # MLflow 3 answers 403 to Host headers it does not know; clients use the Service name.
    assert "mlflow.churn.svc.cluster.local:5000" in flags["--allowed-hosts"].split(",")
    [env] = [e for e in container["env"] if e["name"] == "MLFLOW_BACKEND_URI"]
    assert env["valueFrom"]["secretKeyRef"]["name"] == "mlflow-secrets"


# ---------------------------------------------------------------------------------------- secrets, settings, cron


def _secrets() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, obj) for path, obj in _objects() if obj["kind"] == "Secret"]


def test_secrets_hold_only_placeholders() -> None:
    secrets = _secrets()
    assert secrets and {path.name for path, _ in secrets} == {SECRET_TEMPLATE}
    for path, secret in secrets:
        assert "data" not in secret, f"{_ref(path, secret)}: use stringData placeholders, never encoded values"
        values = secret["stringData"]
        assert values and set(values.values()) == {PLACEHOLDER}, f"{_ref(path, secret)} holds a non-placeholder"
    churn = {o["metadata"]["name"]: o for _, o in secrets}["churn-secrets"]["stringData"]
    assert set(churn) == {"CHURN_REDIS_PASSWORD", "CHURN_REGISTRY_URL", "CHURN_MLFLOW_TRACKING_URI", "CHURN_API_TOKEN"}


def test_every_secret_reference_names_a_key_of_the_template() -> None:
    keys = {obj["metadata"]["name"]: set(obj["stringData"]) for _, obj in _secrets()}
    for ref, container, _ in _containers():
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                assert source["secretRef"]["name"] in keys, ref
        for env in container.get("env", []):
            secret = env.get("valueFrom", {}).get("secretKeyRef")
            if secret:
                assert secret["key"] in keys.get(secret["name"], set()), f"{ref}: {secret}"


def _allowed_churn_env() -> set[str]:
    fields = {f"CHURN_{name.upper()}" for name in Settings.model_fields}
    expanded = {
        name for path in (ROOT / "feature_repo").glob("*.yaml") for name in re.findall(r"\$\{(\w+)\}", path.read_text())
    }
    return fields | expanded


def _dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env |= dict(word.split("=", 1) for word in shlex.split(line.removeprefix("ENV ")))
    return env


def test_every_churn_env_var_set_anywhere_is_a_settings_field() -> None:
    names = set(_dockerfile_env())
    for _, obj in _objects():
        if obj["kind"] == "ConfigMap":
            names |= set(obj["data"])
        if obj["kind"] == "Secret":
            names |= set(obj["stringData"])
    for _, container, _ in _containers():
        names |= {env["name"] for env in container.get("env", [])}
    unknown = {name for name in names if name.startswith("CHURN_")} - _allowed_churn_env()
    assert not unknown, f"no Settings field (or feature_repo ${{...}}) reads {sorted(unknown)}"


def test_configmap_values_are_strings_and_select_the_production_profile() -> None:
    [config] = [obj for _, obj in _objects() if obj["kind"] == "ConfigMap"]
    assert all(isinstance(value, str) for value in config["data"].values()), "the API server rejects non-strings"
    assert config["data"]["CHURN_FEAST_PROFILE"] == "production"
    assert config["data"]["CHURN_DATA_DIR"] == "/data"


_CRON_FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _valid_cron_field(text: str, low: int, high: int) -> bool:
    for part in text.split(","):
        match = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
        if match is None:
            return False
        _, first, last, step = match.groups()
        numbers = [int(n) for n in (first, last) if n is not None]
        if not all(low <= n <= high for n in numbers) or numbers != sorted(numbers):
            return False
        if step is not None and int(step) == 0:
            return False
    return True


def _valid_cron(schedule: str) -> bool:
    fields = schedule.split()
    return len(fields) == 5 and all(
        _valid_cron_field(text, low, high) for text, (low, high) in zip(fields, _CRON_FIELDS, strict=True)
    )


def test_cronjob_schedules_are_valid_five_field_cron() -> None:
    schedules = {obj["metadata"]["name"]: obj["spec"]["schedule"] for _, obj in _objects() if obj["kind"] == "CronJob"}
    assert set(schedules) == {PIPELINE, "retrain"}
    for name, schedule in schedules.items():
        assert _valid_cron(schedule), f"{name}: {schedule!r}"
    # Once a day, after the day's drop has landed.
    assert schedules[PIPELINE] == "0 1 * * *"
    assert schedules["retrain"].split()[2:4] == ["*", "*"] and schedules["retrain"].split()[4] != "*"
    for bad in ("0 1 * *", "60 1 * * *", "0 24 * * *", "0 5-2 * * *", "*/0 * * * *", "@daily"):
        assert not _valid_cron(bad), bad


# ------------------------------------------------------------------------------------- alerts, dashboard, metrics


# Labels Prometheus adds itself: the scraped pod's (by annotation) and the Pushgateway group's.
TARGET_LABELS = {"job", "instance", "pod", "namespace"}


def _serving_metrics() -> Any:
    """The API's metrics with a sample of every labelled series (a label set exists only once used)."""
    from serving.metrics import ServingMetrics

    metrics = ServingMetrics()
    metrics.observe_request("/predict", 200, 0.003)
    metrics.observe_prediction(0.42, "medium")
    metrics.set_model("churn", "3", "champion")
    metrics.model_load_failed(RuntimeError("MLflow unreachable"))
    metrics.missing.labels("user_account").inc()
    metrics.stale.labels("user_status_daily").inc()
    return metrics


def _pushed_metrics(tmp_path: Path) -> Any:
    """What `churn pipeline daily` pushes after an incremental load of both sources."""
    from jobs.materialize import MaterializationReport, SourceRun, export_metrics

    end = datetime(2026, 3, 1, tzinfo=UTC)
    runs = [
        SourceRun(SNAPSHOT_TABLE, ("user_status_daily",), end - timedelta(days=8), end, 1000, 1000, end),
        SourceRun(ACCOUNT_TABLE, ("user_account",), end - timedelta(days=1), end, 12, 12, end - timedelta(hours=3)),
    ]
    report = MaterializationReport("churn", "production", "incremental", "builds 41..41", 41, runs, end, 35.0)
    return export_metrics(report, tmp_path / "materialize.prom")


def _exported_series(tmp_path: Path) -> dict[str, set[str]]:
    """Sample name -> the label names its samples carry, over the API's registry and what the pipeline pushes."""
    series: dict[str, set[str]] = {}
    for registry in (_serving_metrics().registry, _pushed_metrics(tmp_path)):
        for family in registry.collect():
            for sample in family.samples:
                series.setdefault(sample.name, set()).update(sample.labels)
    return series


def _query_problems(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """Metrics the query names that nothing exports, label matchers those metrics lack, and grouping labels
    (`by`/`without`) that none of its metrics carries."""
    problems = []
    labels = set(TARGET_LABELS)
    for name, matchers in re.findall(r"\b(churn_[a-z0-9_]+)(?:\{([^}]*)\})?", expr):
        if name not in exported:
            problems.append(f"{name}: nothing exports it")
            continue
        labels |= exported[name]
        unknown = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers)) - exported[name] - TARGET_LABELS
        problems += [f"{name}{{{label}}}: no such label" for label in sorted(unknown)]
    for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        grouped = {label.strip() for label in grouping.split(",") if label.strip()}
        problems += [f"by/without ({label}): no metric of the query has it" for label in sorted(grouped - labels)]
    return problems


def _alert_rules() -> dict[str, Any]:
    [rule] = _load(MONITORING / "alerts.yaml")
    assert rule["kind"] == "PrometheusRule"
    return rule


def _expressions() -> list[str]:
    rules = [r["expr"] for group in _alert_rules()["spec"]["groups"] for r in group["rules"]]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return rules + [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_alerts_and_dashboard_use_only_metrics_and_labels_the_code_exports(tmp_path: Path) -> None:
    exported = _exported_series(tmp_path)
    assert {"churn_materialize_rows_written", "churn_materialize_last_run"} <= exported.keys()
    used = {name for expr in _expressions() for name in re.findall(r"\bchurn_[a-z0-9_]+", expr)}
    assert used, "no churn metric used"
    problems = {expr: found for expr in _expressions() if (found := _query_problems(expr, exported))}
    assert not problems, problems


def test_the_query_check_catches_unknown_metrics_and_labels(tmp_path: Path) -> None:
    exported = _exported_series(tmp_path)
    for bad in (
        "churn_materialize_users_written",  # a name the job no longer exports
        'churn_materialize_rows_written{view="user_account"}',  # rows are per source, not per view
        "sum by (mode) (churn_materialize_rows_written)",
        'churn_model_load_failures_total{status="500"}',
    ):
        assert _query_problems(bad, exported), bad
    assert not _query_problems('sum by (source) (churn_materialize_rows_written{source!="none"})', exported)


def test_alerts_cover_the_agreed_conditions() -> None:
    names = {r["alert"] for group in _alert_rules()["spec"]["groups"] for r in group["rules"]}
    assert {
        "ChurnApiHighErrorRate",
        "ChurnApiLatencyP99High",
        "ChurnFeaturesStale",
        "ChurnMaterializeNotSucceeding",
        "ChurnModelNotLoaded",
        "ChurnModelLoadFailing",
        "ChurnModelPollerStalled",
    } <= names


def test_dashboard_is_valid_and_has_the_agreed_panels() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert all(panel["targets"] for panel in panels)
    exprs = " ".join(_expressions())
    for metric in (
        "churn_http_requests_total",
        "churn_http_request_duration_seconds_bucket",
        "churn_prediction_probability_bucket",
        "churn_predictions_by_risk_band_total",
        "churn_feature_age_seconds",
    ):
        assert metric in exprs, metric


def _promtool() -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `bash scripts/system_deps.sh` (Debian package `prometheus`)"
    return promtool


def _write_rules(tmp_path: Path, annotations: bool = True) -> Path:
    spec = copy.deepcopy(_alert_rules()["spec"])
    if not annotations:
        # promtool's unit tests compare annotations too; these tests are about when alerts fire.
        for group in spec["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    rules = tmp_path / "churn-rules.yaml"
    rules.write_text(yaml.safe_dump(spec, sort_keys=False))
    return rules


def test_alert_rules_pass_promtool_check(tmp_path: Path) -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(_write_rules(tmp_path))], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# As the Pushgateway exposes it: its grouping key (the push's job name) and an empty instance.
_PUSHED_SUCCESS = (
    'churn_materialize_last_success_timestamp_seconds{job="churn-materialize",instance="",project="churn"}'
)


def _champion_pod(name: str) -> str:
    return f'instance="{name}:8000",pod="churn-api-{name}"'


def _pods_alerting(*names: str) -> list[dict[str, Any]]:
    return [
        {"exp_labels": {"instance": f"{name}:8000", "pod": f"churn-api-{name}", "severity": "warning"}}
        for name in names
    ]


def _failing_every_third_minute(since: int, until: int) -> str:
    """A failure counter over minutes 0..60 that grows by one every third minute in (since, until]."""
    return " ".join(str(max(0, min(minute, until) // 3 - since // 3)) for minute in range(61))


# Series evolve one sample per interval from t=0 (so time() is the seconds elapsed).
_RULE_TESTS = [
    {  # 5 failing /predict requests in 105, plus /ready 503s that must not count
        "interval": "1m",
        "input_series": [
            {"series": 'churn_http_requests_total{endpoint="/predict",status="200"}', "values": "0+100x40"},
            {"series": 'churn_http_requests_total{endpoint="/predict",status="503"}', "values": "0+5x40"},
            {"series": 'churn_http_requests_total{endpoint="/ready",status="503"}', "values": "0+1000x40"},
        ],
        "alert_rule_test": [
            {
                "eval_time": "30m",
                "alertname": "ChurnApiHighErrorRate",
                "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
            }
        ],
    },
    {  # only probes fail: no alert
        "interval": "1m",
        "input_series": [
            {"series": 'churn_http_requests_total{endpoint="/predict",status="200"}', "values": "0+100x40"},
            {"series": 'churn_http_requests_total{endpoint="/ready",status="503"}', "values": "0+1000x40"},
        ],
        "alert_rule_test": [{"eval_time": "30m", "alertname": "ChurnApiHighErrorRate", "exp_alerts": []}],
    },
    {  # 80 of every 100 /predict requests take 25-50 ms
        "interval": "1m",
        "input_series": [
            {
                "series": f'churn_http_request_duration_seconds_bucket{{endpoint="/predict",status="200",le="{le}"}}',
                "values": f"0+{per_minute}x40",
            }
            for le, per_minute in (("0.01", 10), ("0.025", 20), ("0.05", 100), ("+Inf", 100))
        ],
        "alert_rule_test": [
            {
                "eval_time": "30m",
                "alertname": "ChurnApiLatencyP99High",
                "exp_alerts": [{"exp_labels": {"severity": "warning"}}],
            }
        ],
    },
    {  # last success pushed at t=0 and never again; features 2.5 days old; no pod reports a model
        "interval": "1m",
        "input_series": [
            {"series": _PUSHED_SUCCESS, "values": "0x1700"},
            {"series": "churn_feature_age_seconds", "values": "216000x1700"},
        ],
        "alert_rule_test": [
            {"eval_time": "25h", "alertname": "ChurnMaterializeNotSucceeding", "exp_alerts": []},
            {
                "eval_time": "27h",
                "alertname": "ChurnMaterializeNotSucceeding",
                "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
            },
            {
                "eval_time": "1h",
                "alertname": "ChurnFeaturesStale",
                "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
            },
            {
                "eval_time": "1h",
                "alertname": "ChurnModelNotLoaded",
                "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
            },
        ],
    },
    {  # healthy: pushed every minute, fresh features, a model on two pods
        "interval": "1m",
        "input_series": [
            {"series": _PUSHED_SUCCESS, "values": "0+60x1700"},
            {"series": "churn_feature_age_seconds", "values": "3600x1700"},
            {"series": 'churn_model_info{pod="a",name="churn",version="3",alias="champion"}', "values": "1x1700"},
            {"series": 'churn_model_info{pod="b",name="churn",version="3",alias="champion"}', "values": "1x1700"},
        ],
        "alert_rule_test": [
            {"eval_time": "27h", "alertname": name, "exp_alerts": []}
            for name in (
                "ChurnMaterializeNotSucceeding",
                "ChurnFeaturesStale",
                "ChurnModelNotLoaded",
                "ChurnModelVersionsDiverge",
            )
        ],
    },
    {  # the daily cadence: a success pushed at t=0 and after 24 h, then the third day's run fails
        "interval": "10m",
        "input_series": [{"series": _PUSHED_SUCCESS, "values": "0x144 86400x200"}],
        "alert_rule_test": [
            # Just before a day's push the last success is 24 h old: a normal day never fires.
            {"eval_time": "24h", "alertname": "ChurnMaterializeNotSucceeding", "exp_alerts": []},
            {"eval_time": "49h", "alertname": "ChurnMaterializeNotSucceeding", "exp_alerts": []},
            {
                "eval_time": "50h30m",
                "alertname": "ChurnMaterializeNotSucceeding",
                "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
            },
        ],
    },
    {  # five API pods polling the champion every 30 s (two checks a minute), each seen by its success time
        "interval": "1m",
        "input_series": [
            # a: every check fails from t=1m on
            {
                "series": f'churn_model_load_failures_total{{{_champion_pod("a")},reason="ModelNotFound"}}',
                "values": "0+2x60",
            },
            {"series": f"churn_model_last_load_success_timestamp_seconds{{{_champion_pod('a')}}}", "values": "60x60"},
            # b: one check in six fails, for one reason until 30m and another after; the others succeed
            {
                "series": f'churn_model_load_failures_total{{{_champion_pod("b")},reason="ConnectionError"}}',
                "values": _failing_every_third_minute(0, 30),
            },
            {
                "series": f'churn_model_load_failures_total{{{_champion_pod("b")},reason="ModelNotFound"}}',
                "values": _failing_every_third_minute(30, 60),
            },
            {"series": f"churn_model_last_load_success_timestamp_seconds{{{_champion_pod('b')}}}", "values": "0+60x60"},
            # c: healthy, with failures counted long before the window
            {
                "series": f'churn_model_load_failures_total{{{_champion_pod("c")},reason="ModelNotFound"}}',
                "values": "3x60",
            },
            {"series": f"churn_model_last_load_success_timestamp_seconds{{{_champion_pod('c')}}}", "values": "0+60x60"},
            # d: the poller hangs after t=2m: no failure is ever counted
            {"series": f"churn_model_last_load_success_timestamp_seconds{{{_champion_pod('d')}}}", "values": "120x60"},
            # e: no champion until t=15m (every check fails), then it serves: loaded before the stall alert's `for` ends
            {
                "series": f'churn_model_load_failures_total{{{_champion_pod("e")},reason="ModelNotFound"}}',
                "values": "0+2x15 30x45",
            },
            {
                "series": f"churn_model_last_load_success_timestamp_seconds{{{_champion_pod('e')}}}",
                "values": "0x14 900+60x45",
            },
        ],
        "alert_rule_test": [
            # Failing since 1m (a, e) or 3m (b): not yet for 15 minutes.
            {"eval_time": "10m", "alertname": "ChurnModelLoadFailing", "exp_alerts": []},
            {"eval_time": "17m", "alertname": "ChurnModelLoadFailing", "exp_alerts": _pods_alerting("a", "e")},
            # e's failures ended at 15m; b's go on under changing reasons; c's are old.
            {"eval_time": "30m", "alertname": "ChurnModelLoadFailing", "exp_alerts": _pods_alerting("a", "b")},
            # Neither of b's reasons alone has been failing for 15 minutes by now.
            {"eval_time": "45m", "alertname": "ChurnModelLoadFailing", "exp_alerts": _pods_alerting("a", "b")},
            # No success for 10 polls since 6m (e), 7m (a) or 8m (d): not yet for 10 minutes.
            {"eval_time": "15m", "alertname": "ChurnModelPollerStalled", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "ChurnModelPollerStalled", "exp_alerts": _pods_alerting("a", "d")},
        ],
    },
]


def test_champion_stall_threshold_counts_the_configured_polls() -> None:
    [rule] = [
        r
        for group in _alert_rules()["spec"]["groups"]
        for r in group["rules"]
        if r["alert"] == "ChurnModelPollerStalled"
    ]
    polls, period = map(int, re.search(r">\s*(\d+)\s*\*\s*(\d+)", rule["expr"]).groups())
    config = {o["metadata"]["name"]: o for _, o in _objects() if o["kind"] == "ConfigMap"}["churn-config"]
    assert period == float(config["data"]["CHURN_MODEL_POLL_SECONDS"]), "the threshold counts polls of this period"
    assert polls >= 3, "a single slow or failed check must not look like a stalled poller"


def test_alert_rules_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    rules = _write_rules(tmp_path, annotations=False)
    spec = tmp_path / "churn-rules.test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": _RULE_TESTS}))
    result = subprocess.run(
        [_promtool(), "test", "rules", spec.name], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------- Dockerfile


def _stages() -> list[list[str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_builds_in_stages_and_runs_as_non_root() -> None:
    stages = _stages()
    assert len(stages) >= 2
    assert all(stage[0].split()[1] == "python:3.11-slim" for stage in stages)
    runtime = stages[-1]
    assert not any(re.search(r"build-essential|gcc|\bmake\b", line) for line in runtime), "build tools at runtime"
    [user] = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert user.split(":")[0] not in {"root", "0"}
    [healthcheck] = [line for line in runtime if line.startswith("HEALTHCHECK ")]
    assert "/health" in healthcheck and "/health" in _served_routes()
    [cmd] = [line for line in runtime if line.startswith("CMD ")]
    assert json.loads(cmd.removeprefix("CMD ")) == ["churn", "serve"]
    assert "COPY feature_repo /app/feature_repo" in runtime


def test_dockerfile_installs_the_project_non_editable_with_every_package() -> None:
    build = " ".join(_stages()[0])
    assert re.search(r"pip install (--no-deps )?\.(\s|$)", build), "install with `pip install .`"
    assert "pip install -e" not in build and "--editable" not in build
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in patterns}
    copied = set(re.findall(r"COPY (\w+) \./\1", build))
    assert packages <= copied, f"packages the image would lack: {packages - copied}"


def test_dockerfile_env_pins_the_paths_and_binds_all_interfaces() -> None:
    env = _dockerfile_env()
    assert env["CHURN_FEATURE_REPO"] == "/app/feature_repo"
    assert env["CHURN_DATA_DIR"] == "/data"
    assert env["CHURN_API_HOST"] == "0.0.0.0"


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "data", "mlruns", "mlartifacts", ".pytest_cache", ".ruff_cache"} <= ignored


# ---------------------------------------------------------------------------------------------------- notebooks


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    assert {path.name for path in _notebooks()} >= {"01_explore_features.ipynb", "02_model_report.ipynb"}


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
        assert "def " not in source and "class " not in source, f"{where}: logic belongs in the packages"
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module, f"{where}: relative import"
                imported.add(node.module.split(".")[0])
    assert imported, f"{path.name} imports nothing"
    assert imported <= NOTEBOOK_IMPORTS, f"{path.name} imports {sorted(imported - NOTEBOOK_IMPORTS)}"
