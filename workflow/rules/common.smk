"""Names shared by the rule files."""

import json

from supreme_ecg import catalogue

DATA_ROOT = config["data"]["root"]
#: pre-training corpus first, then the downstream sets of the zero-shot benchmark
DATASETS = ["mimic", "ptbxl", "cpsc2018", "csn"]
TASKS = catalogue.task_names()


def dataset_shards(wildcards=None, dataset=None, kind="shard"):
    """Paths of one dataset's preprocessed shards (kind="shard") or their rejects (kind="rejects")."""
    dataset = dataset or catalogue.task_dataset(wildcards.task)
    n_shards = config["preprocess"]["shards"].get(dataset, 1)
    return expand(
        "results/preprocessed/{dataset}/{kind}-{shard}-of-{n}.parquet",
        dataset=dataset,
        kind=kind,
        shard=range(n_shards),
        n=n_shards,
    )
