"""SuPreME-style supervised multimodal ECG pre-training, from raw records to zero-shot AUCs.

Stages (one rule file each under workflow/rules/, logic in the `supreme_ecg` package):
data -> index -> preprocess -> extract -> pretrain -> labels -> zeroshot + linear probes -> provenance
-> summary.
The pre-training corpus (data.pretrain_corpus: mimic, ptbxl or your own manifest) gives the reports
the labels come from; the zero-shot tasks are the benchmark's (labels.tasks) and your own
(labels.user_tasks). configs/real-fixtures.yaml runs the chain on the real records of ../shared.
"""

import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


# The rules run `python -m supreme_ecg.cli`; the package is importable without installing it.
SRC_DIR = os.path.join(workflow.basedir, "src")
sys.path.insert(0, SRC_DIR)
os.environ.update(PYTHONPATH=SRC_DIR)  # jobs import the package from this checkout

from supreme_ecg.config_schema import coerce_config

# --config key="{nested: 8}" hands nested values over as strings: type them by the schema first
coerce_config(
    config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")
)
validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/zeroshot.smk"
include: "workflow/rules/linear_probe.smk"
include: "workflow/rules/provenance.smk"


rule all:
    default_target: True
    input:
        "results/summary.md",
        "results/zeroshot/summary.csv",
        "results/linear_probe/summary.csv",
        expand("results/zeroshot/{task}/examples.png", task=TASKS),
        expand("results/preprocessed/{dataset}/summary.csv", dataset=DATASETS),
        "results/extract/label_vocabulary.parquet",
        "results/records.parquet",
        "results/provenance.json",


wildcard_constraints:
    task=_regex(TASKS),
    percent=_regex(PROBE_PERCENTS),
