"""deploy/kserve/: the InferenceService and ServingRuntime fields checked against KServe's CRD
schema (read from the kserve package by deploy/kserve/extract_schema.py and vendored), their
Kubernetes parts with kubernetes-validate, and the choices the documentation explains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

KSERVE = Path(__file__).resolve().parents[1] / "deploy" / "kserve"
SCHEMA = json.loads(next(KSERVE.glob("kserve-*-schema.json")).read_text(encoding="utf-8"))
CLASSES: dict[str, dict[str, str]] = SCHEMA["classes"]
ROOT_CLASS = {
    "InferenceService": "V1beta1InferenceService",
    "ServingRuntime": "V1alpha1ServingRuntime",
}
API_VERSION = {
    "InferenceService": "serving.kserve.io/v1beta1",
    "ServingRuntime": "serving.kserve.io/v1alpha1",
}
PRIMITIVES: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "bool": bool}


def _pod(kind: str, value: Any) -> dict[str, Any]:
    """A Kubernetes-typed part, placed in a Pod so kubernetes-validate checks it strictly."""
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}
    if kind == "V1ObjectMeta":
        return pod | {"metadata": value, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    if kind == "V1Container":
        return pod | {"spec": {"containers": [value]}}
    raise AssertionError(f"no check for the Kubernetes type {kind}: extend _pod")


def problems(value: Any, kind: str, path: str) -> list[str]:
    """Where ``value`` departs from the schema type ``kind``."""
    if kind.startswith("list["):
        if not isinstance(value, list):
            return [f"{path} must be a list"]
        return [
            p for i, item in enumerate(value) for p in problems(item, kind[5:-1], f"{path}[{i}]")
        ]
    if kind.startswith("dict("):
        inner = kind[5:-1].split(",", 1)[1].strip()
        if not isinstance(value, dict):
            return [f"{path} must be a map"]
        return [p for k, v in value.items() for p in problems(v, inner, f"{path}.{k}")]
    if kind in CLASSES:
        if not isinstance(value, dict):
            return [f"{path} must be an object ({kind})"]
        fields = CLASSES[kind]
        found = [f"{path}.{k} is not a field of {kind}" for k in value if k not in fields]
        return found + [
            p
            for k, v in value.items()
            if k in fields
            for p in problems(v, fields[k], f"{path}.{k}")
        ]
    if kind in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[kind]) and not (kind == "int" and isinstance(value, bool))
        return [] if ok else [f"{path} must be {kind}, got {value!r}"]
    if kind.startswith("V1"):  # a Kubernetes type: its own schema
        kubernetes_validate.validate(_pod(kind, value), "1.30", strict=True)
    return []


def _documents() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted(KSERVE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            docs[doc["kind"]] = doc
    return docs


def test_manifests_match_the_kserve_crd_schema() -> None:
    docs = _documents()
    assert set(docs) == set(ROOT_CLASS)
    for kind, doc in docs.items():
        assert doc["apiVersion"] == API_VERSION[kind]
        assert problems(doc, ROOT_CLASS[kind], kind) == []


def test_the_check_catches_a_misspelt_field() -> None:
    service = _documents()["InferenceService"]
    service["spec"]["predictor"]["model"]["protocolversion"] = "grpc-v2"
    service["spec"]["predictor"]["minReplicas"] = "1"
    assert sorted(problems(service, ROOT_CLASS["InferenceService"], "isvc")) == [
        "isvc.spec.predictor.minReplicas must be int, got '1'",
        "isvc.spec.predictor.model.protocolversion is not a field of V1beta1ModelSpec",
    ]
    runtime = _documents()["ServingRuntime"]
    runtime["spec"]["containers"][0]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        problems(runtime, ROOT_CLASS["ServingRuntime"], "runtime")


def test_manifests_keep_the_documented_choices() -> None:
    docs = _documents()
    runtime, service = docs["ServingRuntime"]["spec"], docs["InferenceService"]["spec"]
    model = service["predictor"]["model"]
    # the open inference protocol over gRPC, on the port KServe routes gRPC to
    assert model["protocolVersion"] == "grpc-v2" and runtime["protocolVersions"] == ["grpc-v2"]
    [container] = runtime["containers"]
    [port] = container["ports"]
    assert port["name"] == "h2c"
    args = container["args"]
    assert args[args.index("--port") + 1] == str(port["containerPort"])
    assert args[args.index("--model-dir") + 1] == "/mnt/models"  # where storageUri lands
    assert model["runtime"] == docs["ServingRuntime"]["metadata"]["name"]
    assert model["modelFormat"]["name"] == runtime["supportedModelFormats"][0]["name"]
