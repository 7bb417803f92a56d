"""One source of defaults: the config schema. A stage called from Python with no settings, the command
line and Snakemake (which fills the schema's defaults into the config) all use the schema's values."""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, fields

import pytest

from supreme_ecg.config_schema import SCHEMA_PATH, schema_defaults, setting_default, workflow_schema

#: settings of the Python objects that are no config settings (runtime, or not wired into the workflow)
NOT_IN_SCHEMA = {"PretrainConfig": {"threads"}, "PreprocessConfig": {"flat_threshold_mv"}}


def _keyword_defaults(function, names) -> dict:
    """``name → default`` of some keyword parameters of ``function``."""
    parameters = inspect.signature(function).parameters
    return {name: parameters[name].default for name in names}


def _schema_subset(section: str, names) -> dict:
    defaults = schema_defaults(section)
    return {name: defaults[name] for name in names}


# --------------------------------------------------------------------------- (a) Python entry points


def test_pretrain_config_defaults_are_the_schema_pretrain_section():
    from supreme_ecg.pretrain import PretrainConfig

    expected = schema_defaults("pretrain")
    names = {f.name for f in fields(PretrainConfig)} - NOT_IN_SCHEMA["PretrainConfig"]
    assert names == set(expected)  # every setting of the section is a field and every field a setting
    plain, from_mapping = asdict(PretrainConfig()), asdict(PretrainConfig.from_mapping({}))
    assert plain == from_mapping
    for name in names:
        assert plain[name] == expected[name], name


def test_probe_config_and_probe_seeds_are_the_schema_linear_probe_section():
    from supreme_ecg.linear_probe import ProbeConfig, run_linear_probe, train_probe

    expected = schema_defaults("linear_probe")
    assert asdict(ProbeConfig()) == {f.name: expected[f.name] for f in fields(ProbeConfig)}
    assert set(expected) - {f.name for f in fields(ProbeConfig)} == {"percents", "seeds"}
    assert list(_keyword_defaults(run_linear_probe, ["seeds"])["seeds"]) == expected["seeds"]
    for function in (run_linear_probe, train_probe):
        assert _keyword_defaults(function, ["cfg"])["cfg"] == ProbeConfig()


def test_preprocess_config_and_codec_are_the_schema_preprocess_section():
    from supreme_ecg.preprocess import PreprocessConfig, preprocess_shard

    expected = schema_defaults("preprocess")
    cfg = asdict(PreprocessConfig())
    names = set(cfg) - NOT_IN_SCHEMA["PreprocessConfig"]
    assert names == set(expected) - {"shards", "signal_compression"}  # shards: the rule's; codec: below
    for name in names:
        assert cfg[name] == expected[name], name
    assert (_keyword_defaults(preprocess_shard, ["signal_compression"])
            == _schema_subset("preprocess", ["signal_compression"]))


def test_evaluation_defaults_are_the_schema_evaluation_section():
    from supreme_ecg import bootstrap
    from supreme_ecg.linear_probe import run_linear_probe
    from supreme_ecg.model import random_init_checkpoint
    from supreme_ecg.run_report import write_example_ecgs
    from supreme_ecg.zeroshot import evaluate_task

    expected = _schema_subset("evaluation", ["n_resamples", "bootstrap_seed", "level"])
    assert expected == {"n_resamples": bootstrap.N_RESAMPLES, "bootstrap_seed": bootstrap.SEED,
                        "level": bootstrap.LEVEL}
    assert _keyword_defaults(bootstrap.bootstrap_aucs, ["n_resamples", "seed", "level"]) == {
        "n_resamples": expected["n_resamples"], "seed": expected["bootstrap_seed"], "level": expected["level"]}
    for function in (evaluate_task, run_linear_probe):
        assert _keyword_defaults(function, expected) == expected, function.__name__
    assert _keyword_defaults(random_init_checkpoint, ["seed"])["seed"] == schema_defaults("evaluation")["baseline_seed"]
    assert _keyword_defaults(write_example_ecgs, ["n"])["n"] == schema_defaults("evaluation")["n_examples"]


def test_zeroshot_defaults_are_the_schema_zeroshot_section():
    from supreme_ecg.extract.standardise import DEFAULT_MERGE_THRESHOLD
    from supreme_ecg.zeroshot import evaluate_task

    expected = schema_defaults("zeroshot")
    given = _keyword_defaults(evaluate_task, ["splits", "seen_threshold"])
    assert list(given["splits"]) == expected["splits"]
    assert given["seen_threshold"] is expected["seen_threshold"] is None  # derived: the merge threshold ...
    assert schema_defaults("extract")["merge_threshold"] == DEFAULT_MERGE_THRESHOLD  # ... of the schema


def test_extract_defaults_are_the_schema_extract_section():
    from supreme_ecg.extract import extract_reports, make_backend
    from supreme_ecg.llm_backends import OPTION_DEFAULTS, ChatBackend, OllamaBackend, OpenAICompatibleBackend

    expected = schema_defaults("extract")
    stage = ["unit", "uncertain_policy", "min_label_count"]
    assert _keyword_defaults(extract_reports, stage) == _schema_subset("extract", stage)
    # the backend options (x-default: Snakemake passes only those the config sets)
    assert {o: OPTION_DEFAULTS[o][1] for o in OPTION_DEFAULTS} == _schema_subset("extract", OPTION_DEFAULTS)
    assert _keyword_defaults(make_backend, ["fallback"]) == _schema_subset("extract", ["fallback"])
    backend = [o for o in OPTION_DEFAULTS if o not in ("keep_alive", "api_key_env", "fallback")]
    assert _keyword_defaults(ChatBackend, backend) == _schema_subset("extract", backend)
    assert _keyword_defaults(OllamaBackend, ["keep_alive"]) == _schema_subset("extract", ["keep_alive"])
    assert (_keyword_defaults(OpenAICompatibleBackend, ["api_key_env"])
            == _schema_subset("extract", ["api_key_env"]))
    assert set(expected) == {*OPTION_DEFAULTS, *stage, "backend", "merge_threshold", "cache_dir"}


def test_data_demo_and_labels_defaults_are_the_schema_sections():
    from supreme_ecg import catalogue, download
    from supreme_ecg.datasets import DEFAULT_PTBXL_PRETRAIN_FOLDS
    from supreme_ecg.demo.corpus import generate_demo

    data, labels, demo = schema_defaults("data"), schema_defaults("labels"), schema_defaults("demo")
    assert data["ptbxl_pretrain_folds"] == DEFAULT_PTBXL_PRETRAIN_FOLDS
    assert data["physionet_base"] == download.PHYSIONET_BASE
    assert {name: f"{s.slug}/{s.version}" for name, s in download.PHYSIONET_SETS.items()} == data["physionet"]
    assert labels["merl_commit"] == download.MERL_COMMIT
    assert catalogue.task_names() == labels["tasks"]
    given = _keyword_defaults(generate_demo, set(demo) - {"seed"})  # the seed is a required argument
    given["unseen_concepts"] = list(given["unseen_concepts"])
    assert given == {k: v for k, v in demo.items() if k != "seed"}


def test_snakemake_filled_config_runs_the_stages_with_their_python_defaults():
    """The config Snakemake validates (defaults filled in) reaches the stages as their Python defaults."""
    validate = pytest.importorskip("snakemake.utils").validate
    from supreme_ecg.linear_probe import ProbeConfig
    from supreme_ecg.preprocess import PreprocessConfig
    from supreme_ecg.pretrain import PretrainConfig

    config: dict = {}
    validate(config, str(SCHEMA_PATH))
    # as the rules pass them (workflow/rules/pretrain.smk, linear_probe.smk, preprocess.smk)
    pretrain = PretrainConfig.from_mapping(json.loads(json.dumps(config["pretrain"])))
    assert pretrain == PretrainConfig()
    probe = {k: v for k, v in config["linear_probe"].items() if k not in ("percents", "seeds")}
    assert ProbeConfig(**probe) == ProbeConfig()
    assert PreprocessConfig.from_mapping(config["preprocess"], ignore=("shards", "signal_compression")) == (
        PreprocessConfig())
    assert "seen_threshold" not in config["zeroshot"] and "text_pooling" not in config["pretrain"]  # x-default


# --------------------------------------------------------------------------- (b) the schema documents them


def _settings(schema: dict, where: str = ""):
    """(path, schema, required) of every named setting, nested ones (user tasks, their classes) too."""
    required = set(schema.get("required", []))
    for name, sub in schema.get("properties", {}).items():
        path = f"{where}.{name}" if where else name
        yield path, sub, name in required
        yield from _settings(sub, path)
    for key in ("additionalProperties", "items"):
        if isinstance(schema.get(key), dict):
            yield from _settings(schema[key], f"{where}[{key}]")


def test_every_setting_has_a_default_or_is_required_and_a_description():
    settings = list(_settings(workflow_schema()))
    assert len(settings) > 100
    no_default = [p for p, s, required in settings if not required and "default" not in s and "x-default" not in s]
    no_description = [p for p, s, _ in settings if not s.get("description")]
    both = [p for p, s, _ in settings if "default" in s and "x-default" in s]
    assert (no_default, no_description, both) == ([], [], [])


def test_schema_defaults_are_valid_values_and_fresh_copies():
    jsonschema = pytest.importorskip("jsonschema")
    for _path, schema, _ in _settings(workflow_schema()):
        if setting_default(schema) is not None:
            jsonschema.validate(setting_default(schema), schema)  # raises on a default of the wrong type
    first = schema_defaults("linear_probe")
    first["seeds"].append(99)
    assert schema_defaults("linear_probe")["seeds"] != first["seeds"]


# --------------------------------------------------------------------------- (c) the command line

#: sub-command → option (argparse dest) → (config section, setting)
CLI_SETTINGS = {
    "demo": {k: ("demo", k) for k in ("seed", "n_pretrain", "n_ptbxl", "n_cpsc", "n_csn", "defect_share",
                                      "unseen_concepts")},
    "fetch": {"base_url": ("data", "physionet_base"), "commit": ("labels", "merl_commit")},
    "preprocess": {**{k: ("preprocess", k) for k in ("fs", "n_samples", "length_policy", "normalisation",
                                                     "signal_compression", "signal_dtype")},
                   "max_nonfinite": ("preprocess", "max_nonfinite_fraction")},
    "extract": {**{k: ("extract", k) for k in ("backend", "unit", "uncertain_policy", "min_label_count",
                                               "cache_dir", "merge_threshold", "model", "host", "fallback",
                                               "concurrency", "seed", "timeout_s", "max_retries", "max_repairs",
                                               "backoff_s", "max_tokens", "keep_alive", "api_key_env",
                                               "prompt_version")},
                "text_encoder": ("pretrain", "text_encoder")},
    "zeroshot": {"splits": ("zeroshot", "splits"), "seen_threshold": ("zeroshot", "seen_threshold"),
                 "n_resamples": ("evaluation", "n_resamples"), "bootstrap_seed": ("evaluation", "bootstrap_seed"),
                 "level": ("evaluation", "level")},
    "random-init": {"seed": ("evaluation", "baseline_seed")},
    "linear-probe": {"seeds": ("linear_probe", "seeds"), "n_resamples": ("evaluation", "n_resamples"),
                     "bootstrap_seed": ("evaluation", "bootstrap_seed"), "level": ("evaluation", "level")},
    "example-ecgs": {"n": ("evaluation", "n_examples")},
}


def test_cli_defaults_are_the_schema_defaults():
    from supreme_ecg import cli

    commands = cli.build_parser()._subparsers._group_actions[0].choices
    for command, options in CLI_SETTINGS.items():
        defaults = {a.dest: a.default for a in commands[command]._actions}
        for dest, (section, name) in options.items():
            expected = schema_defaults(section)[name]
            if isinstance(expected, list):  # the command line takes lists comma-separated
                expected = ",".join(str(v) for v in expected)
            assert defaults[dest] == expected, f"{command} --{dest}"


def test_cli_settings_json_defaults_to_the_schema():
    """``pretrain`` and ``linear-probe`` without --settings build their configs from the schema alone."""
    from supreme_ecg import cli
    from supreme_ecg.linear_probe import ProbeConfig
    from supreme_ecg.pretrain import PretrainConfig

    parser = cli.build_parser()
    pretrain = parser.parse_args(["pretrain", "--shards", "s", "--labels", "l", "--vocabulary", "v", "--out-dir", "o"])
    cfg = PretrainConfig.from_mapping({**json.loads(pretrain.settings), "threads": pretrain.threads})
    assert {k: v for k, v in asdict(cfg).items() if k != "threads"} == schema_defaults("pretrain")
    probe = parser.parse_args(["linear-probe", "--task", "t", "--features", "f", "--task-labels", "l",
                               "--percent", "10", "--out-dir", "o"])
    assert asdict(ProbeConfig(**json.loads(probe.settings))) == _schema_subset(
        "linear_probe", [f.name for f in fields(ProbeConfig)])
