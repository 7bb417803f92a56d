"""The workflow config as its schema types it: values given on the command line arrive typed.

``snakemake --config extract="{backend: ollama, concurrency: 8}"`` hands nested values over as
strings (``'8'``); :func:`coerce_by_schema` reads each string where the schema wants a number, a
boolean, a list or a mapping as YAML and keeps the result when it has the wanted type. Anything else
is left as it is, for schema validation to report.
"""

from __future__ import annotations

import contextlib

import yaml

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


def coerce_config(config: dict, schema_path) -> None:
    """Coerce a Snakemake ``config`` in place by the schema file at ``schema_path``."""
    with open(schema_path, encoding="utf-8") as f:
        schema = yaml.safe_load(f)
    config.update(coerce_by_schema(dict(config), schema))
