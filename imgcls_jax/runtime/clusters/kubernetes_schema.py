"""Offline schema checks of Kubernetes manifests, strict where the API server is lenient (it
drops unknown fields without a word): core and batch objects against the Kubernetes API's
models (the `kubernetes` client's generated pydantic classes), JobSets against JobSet's own CRD schema
(jobset_v1alpha2.schema.json) with their Job templates against the models again.
Needs `pip install -e ".[k8s]"` (kubernetes, jsonschema)."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

JOBSET_SCHEMA = os.path.join(os.path.dirname(__file__), "jobset_v1alpha2.schema.json")
MODELS = {("v1", "Service"): "V1Service", ("batch/v1", "Job"): "V1Job"}


def _check_model(value: Any, model_name: str, path: str, errors: list[str]) -> None:
    """`value` against the Kubernetes model `model_name` (the client's pydantic classes:
    field names, types, required fields; unknown fields are errors)."""
    import pydantic
    from kubernetes.client import models

    try:
        getattr(models, model_name).model_validate(value)
    except pydantic.ValidationError as error:
        for e in error.errors():
            where = ".".join(str(p) for p in (path, *e["loc"]) if p != "")
            errors.append(f"{where}: {e['msg']} (got {e['input']!r})"[:300])


def _strict(schema: Any) -> Any:
    """The CRD schema with additionalProperties false wherever properties are listed."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _check_jobset(manifest: dict, errors: list[str]) -> None:
    import jsonschema

    with open(JOBSET_SCHEMA, encoding="utf-8") as f:
        schema = _strict({k: v for k, v in json.load(f).items() if k != "$comment"})
    body = copy.deepcopy(manifest)
    metadata = body.pop("metadata", None)
    for error in jsonschema.Draft7Validator(schema).iter_errors(body):
        where = ".".join(str(p) for p in error.absolute_path) or "JobSet"
        errors.append(f"{where}: {error.message}")
    _check_model(metadata, "V1ObjectMeta", "metadata", errors)
    for i, replicated in enumerate(manifest.get("spec", {}).get("replicatedJobs", [])):
        if "template" in replicated:
            _check_model(replicated["template"], "V1JobTemplateSpec",
                         f"spec.replicatedJobs[{i}].template", errors)  # fmt: skip


def check(manifest: dict) -> list[str]:
    """The schema errors of one manifest ([] when it passes)."""
    errors: list[str] = []
    kind = (manifest.get("apiVersion"), manifest.get("kind"))
    if kind == ("jobset.x-k8s.io/v1alpha2", "JobSet"):
        _check_jobset(manifest, errors)
    elif kind in MODELS:
        _check_model(manifest, MODELS[kind], "", errors)
    else:
        errors.append(f"{kind}: no schema known here")
    return errors
