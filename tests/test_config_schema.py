"""Command-line config values arrive typed by the schema."""

from __future__ import annotations

import yaml

from supreme_ecg.config_schema import coerce_by_schema, coerce_config
from supreme_ecg.settings import REPO_ROOT

SCHEMA = REPO_ROOT / "workflow/schemas/config.schema.yaml"


def test_nested_strings_become_the_schema_types():
    schema = yaml.safe_load(SCHEMA.read_text())
    given = {"extract": {"backend": "ollama", "model": "llama3.1:8b", "concurrency": "8"},
             "pretrain": {"lr": "1e-3", "pos_weight": "false", "epochs": "20"},
             "linear_probe": {"percents": "[1, 10]", "seeds": ["0", "1"]},
             "labels": {"split_policy": "{csn: all_test}"}}
    typed = coerce_by_schema(given, schema)
    assert typed["extract"] == {"backend": "ollama", "model": "llama3.1:8b", "concurrency": 8}
    assert typed["pretrain"]["lr"] == 1e-3 and typed["pretrain"]["pos_weight"] is False
    assert typed["pretrain"]["epochs"] == 20
    assert typed["linear_probe"] == {"percents": [1, 10], "seeds": [0, 1]}
    assert typed["labels"]["split_policy"] == {"csn": "all_test"}


def test_strings_stay_strings_and_wrong_values_are_left_for_validation():
    schema = yaml.safe_load(SCHEMA.read_text())
    typed = coerce_by_schema({"extract": {"concurrency": "eight", "model": "8"}, "pretrain": {"epochs": "true"}},
                             schema)
    assert typed["extract"] == {"concurrency": "eight", "model": "8"}  # model is a string: kept
    assert typed["pretrain"]["epochs"] == "true"  # a bool is no integer: validation will say so


def test_dry_run_accepts_the_readme_ollama_example(tmp_path):
    config = {"extract": {"backend": "ollama", "concurrency": "8"}}
    coerce_config(config, SCHEMA)
    assert config["extract"]["concurrency"] == 8
