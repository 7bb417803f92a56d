"""The workflow config as its schema types it: values given on the command line arrive typed.

``snakemake --config extract="{backend: ollama, concurrency: 8}"`` hands nested values over as
strings (``'8'``); :func:`coerce_by_schema` reads each string where the schema wants a number, a
boolean, a list or a mapping as YAML and keeps the result when it has the wanted type. Anything else
is left as it is, for schema validation to report.

The schema is also the one source of the settings' defaults: :func:`schema_defaults` gives a section's,
and the Python entry points (``PretrainConfig``, ``ProbeConfig``, ``PreprocessConfig``, the stage
functions, the command line) take theirs from it, so that a stage called from Python trains and scores
like the workflow. A setting has a ``default`` (Snakemake fills it into the config) or an ``x-default``
(the stage's own choice when unset, which Snakemake leaves out of the config; null: derived from other
settings). The schema is read from the checkout the package sits in (``workflow/schemas/``); setuptools
package data can only hold files inside the package folder, so a non-editable install has no schema.
"""

from __future__ import annotations

import contextlib
import copy
import functools

import yaml

from supreme_ecg.settings import REPO_ROOT

#: the workflow's config schema (Snakefile: ``validate(config, ...)``)
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"

_TYPES = {"integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}


def _wants(schema: dict) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _parsed(value: str, kinds: list[str]):
    """``value`` read as YAML when that gives one of ``kinds`` (never a bool for an integer), else itself."""
    if "string" in kinds or not any(k in _TYPES for k in kinds):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if "number" in kinds and isinstance(parsed, str):
        with contextlib.suppress(ValueError):
            parsed = float(parsed)  # YAML 1.1 reads 1e-3 (no dot) as a string
    for kind in kinds:
        wanted = _TYPES.get(kind)
        if wanted and isinstance(parsed, wanted) and not (kind in ("integer", "number") and isinstance(parsed, bool)):
            return parsed
    return value


def coerce_by_schema(value, schema: dict):
    """``value`` with every string that the schema types otherwise read as YAML (recursively)."""
    if isinstance(value, str):
        value = _parsed(value, _wants(schema))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {k: coerce_by_schema(v, props.get(k, extra if isinstance(extra, dict) else {}))
                for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce_by_schema(v, schema["items"]) for v in value]
    return value


def read_schema(schema_path) -> dict:
    """The schema file at ``schema_path``, parsed."""
    with open(schema_path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def coerce_config(config: dict, schema_path) -> None:
    """Coerce a Snakemake ``config`` in place by the schema file at ``schema_path``."""
    config.update(coerce_by_schema(dict(config), read_schema(schema_path)))


@functools.cache
def workflow_schema() -> dict:
    """The workflow's config schema (:data:`SCHEMA_PATH`, read once; do not modify it)."""
    if not SCHEMA_PATH.is_file():
        raise FileNotFoundError(f"config schema {SCHEMA_PATH} not found: the settings' defaults are read from the "
                                "repository checkout (install the package editable: pip install -e .)")
    return read_schema(SCHEMA_PATH)


def setting_default(setting: dict):
    """The default of one setting's schema: its ``default``, else its ``x-default`` (None when neither)."""
    return setting["default"] if "default" in setting else setting.get("x-default")


def schema_defaults(section: str) -> dict:
    """Setting → default of one config section (e.g. ``"pretrain"``); a fresh copy on every call."""
    settings = workflow_schema()["properties"][section]["properties"]
    return {name: copy.deepcopy(setting_default(schema)) for name, schema in settings.items()
            if "default" in schema or "x-default" in schema}
