"""Names shared by the rule files."""

import json

from supreme_ecg import catalogue
from supreme_ecg.datasets import DATASET_FOLDERS
from supreme_ecg.preprocess import manifest_shard_digests

DATA_ROOT = config["data"]["root"]
MERL_SPLITS_DIR = os.path.join(DATA_ROOT, "merl_splits")
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


def dataset_folder(dataset):
    """Folder of one dataset under the data root (PhysioNet layout)."""
    return os.path.join(DATA_ROOT, DATASET_FOLDERS[dataset])


def dataset_ready(wildcards):
    """What must exist before a dataset can be indexed (depends on data.source)."""
    if config["data"]["source"] == "demo":
        return f"{DATA_ROOT}/demo_truth.parquet"
    return f"results/data/{wildcards.dataset}.json"


def shard_manifest(wildcards):
    """The dataset's manifest, marked ancient: a shard reruns when its own rows change (digest)."""
    return ancient(checkpoints.index_dataset.get(dataset=wildcards.dataset).output[0])


def shard_digest(wildcards):
    """Content digest of the manifest rows of one shard."""
    manifest = checkpoints.index_dataset.get(dataset=wildcards.dataset).output[0]
    return manifest_shard_digests(manifest, int(wildcards.n))[int(wildcards.shard)]
