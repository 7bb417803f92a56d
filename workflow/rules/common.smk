"""Names shared by the workflow files: data root, datasets, tasks, the pre-training corpus."""

import json
import re
import shlex

from snakemake.settings.types import DeploymentMethod

from snakemake.exceptions import WorkflowError

from supreme_ecg import catalogue
from supreme_ecg.datasets import DATASET_FOLDERS, DATASET_KINDS
from supreme_ecg.preprocess import manifest_shard_digests


def _data_root():
    """data.root, or the environment variable data.root_env names; local folders resolve from the repo."""
    data = config["data"]
    root = (os.environ.get(data["root_env"], "") if data["root_env"] else "") or data[
        "root"
    ]
    if data["source"] == "local" and not os.path.isabs(root):
        root = os.path.join(workflow.basedir, root)
    return os.path.normpath(root)


def _from_repo(path):
    """A path of the config: absolute as given, relative from the repository."""
    return os.path.normpath(os.path.join(workflow.basedir, path))


def _regex(names):
    """A wildcard constraint matching exactly ``names`` (nothing when empty)."""
    return "|".join(re.escape(n) for n in names) or "(?!x)x"


def _jobs_use_this_python():
    """Jobs run `python`/`torchrun` from the environment running Snakemake (so `.venv/bin/snakemake`
    needs no activated environment): its bin folder goes first on the jobs' PATH. Under `--sdm conda`
    each rule's environment provides them, but not the package: this checkout's `src/` goes first on
    the jobs' PYTHONPATH (`{{ }}`: Snakemake formats the prefix)."""
    settings = workflow.deployment_settings
    if settings is not None and DeploymentMethod.CONDA in settings.deployment_method:
        src = shlex.quote(SRC_DIR)
        export = f"PYTHONPATH={src}" + '"${{PYTHONPATH:+:$PYTHONPATH}}"'
    else:
        export = f'PATH={shlex.quote(os.path.dirname(sys.executable))}:"$PATH"'
    shell.prefix(f"set -euo pipefail; export {export}; ")


_jobs_use_this_python()
DATA_ROOT = _data_root()
MERL_SPLITS_DIR = os.path.join(DATA_ROOT, "merl_splits")
#: the corpus whose reports give the pre-training labels (mimic, ptbxl or manifest)
PRETRAIN_DATASET = config["data"]["pretrain_corpus"]
USER_TASKS = config["labels"]["user_tasks"]
_clash = set(USER_TASKS) & set(catalogue.task_names())
if _clash:
    raise WorkflowError(
        f"labels.user_tasks {sorted(_clash)} reuse benchmark task names"
    )
TASKS = list(config["labels"]["tasks"]) + list(USER_TASKS)


def task_dataset(task):
    """Dataset a task is evaluated on (a user task's own set, or the benchmark's)."""
    if task in USER_TASKS:
        return USER_TASKS[task].get("dataset", task)
    return catalogue.task_dataset(task)


#: pre-training corpus first, then the downstream sets of the zero-shot tasks
DATASETS = list(dict.fromkeys([PRETRAIN_DATASET, *(task_dataset(t) for t in TASKS)]))


def dataset_spec(dataset):
    """How one dataset is indexed (folder, kind, manifest, pre-training marks)."""
    spec = {
        "folder": dataset_folder_name(dataset),
        "kind": DATASET_KINDS.get(dataset, "cinc"),
        "manifest": "",
    }
    if dataset == "manifest" and PRETRAIN_DATASET == "manifest":
        if not config["data"]["pretrain_manifest"]:
            raise WorkflowError(
                "data.pretrain_corpus is manifest: set data.pretrain_manifest"
            )
        spec.update(
            kind="manifest", manifest=_from_repo(config["data"]["pretrain_manifest"])
        )
    for task, task_spec in USER_TASKS.items():
        if task_dataset(task) == dataset and task_spec.get("manifest"):
            spec.update(kind="manifest", manifest=_from_repo(task_spec["manifest"]))
    if dataset == PRETRAIN_DATASET:
        spec["pretrain_corpus"] = PRETRAIN_DATASET
        if PRETRAIN_DATASET == "ptbxl":
            spec["ptbxl_folds"] = config["data"]["ptbxl_pretrain_folds"]
    return spec


def dataset_folder_name(dataset):
    """Folder of one dataset under the data root (PhysioNet layout unless data.folders says otherwise)."""
    return config["data"]["folders"].get(dataset, DATASET_FOLDERS.get(dataset, dataset))


def dataset_folder(dataset):
    """Path of one dataset's folder."""
    return os.path.join(DATA_ROOT, dataset_folder_name(dataset))


#: datasets read in place without checksums: user manifests always, every set with data.verify false
UNVERIFIED = [
    d
    for d in DATASETS
    if dataset_spec(d)["kind"] == "manifest"
    or (config["data"]["source"] == "local" and not config["data"]["verify"])
]
for _d in DATASETS:
    if (
        config["data"]["source"] != "demo"
        and _d not in UNVERIFIED
        and _d not in DATASET_FOLDERS
    ):
        raise WorkflowError(
            f"dataset {_d} is not a PhysioNet set: it cannot be fetched or verified by checksum; "
            "give it as a manifest, or set data.source: local with data.verify: false"
        )


def dataset_ready(wildcards):
    """What must exist before a dataset can be indexed (depends on data.source)."""
    if wildcards.dataset in UNVERIFIED:
        return f"results/data/{wildcards.dataset}.json"
    if config["data"]["source"] == "demo":
        return f"{DATA_ROOT}/demo_truth.parquet"
    return f"results/data/{wildcards.dataset}.json"


def dataset_shards(wildcards=None, dataset=None, kind="shard"):
    """Paths of one dataset's preprocessed shards (kind="shard") or their rejects (kind="rejects")."""
    dataset = dataset or task_dataset(wildcards.task)
    n_shards = config["preprocess"]["shards"].get(dataset, 1)
    return expand(
        "results/preprocessed/{dataset}/{kind}-{shard}-of-{n}.parquet",
        dataset=dataset,
        kind=kind,
        shard=range(n_shards),
        n=n_shards,
    )


def shard_manifest(wildcards):
    """The dataset's manifest, marked ancient: a shard reruns when its own rows change (digest)."""
    return ancient(checkpoints.index_dataset.get(dataset=wildcards.dataset).output[0])


def shard_digest(wildcards):
    """Content digest of the manifest rows of one shard."""
    manifest = checkpoints.index_dataset.get(dataset=wildcards.dataset).output[0]
    return manifest_shard_digests(manifest, int(wildcards.n))[int(wildcards.shard)]


def task_label_spec(task):
    """JSON definition of a user task for the labels command ("" for a benchmark task)."""
    if task not in USER_TASKS:
        return ""
    spec = {k: v for k, v in USER_TASKS[task].items() if k != "manifest"}
    spec["dataset"] = task_dataset(task)
    return json.dumps(spec, sort_keys=True)


#: shares of the training labels the linear probes use, as path components ("1", "10", "100")
PROBE_PERCENTS = [f"{p:g}" for p in config["linear_probe"]["percents"]]
#: bootstrap options shared by the zero-shot and probe rules
BOOTSTRAP_ARGS = (
    f"--n-resamples {config['evaluation']['n_resamples']}"
    f" --bootstrap-seed {config['evaluation']['bootstrap_seed']}"
    f" --level {config['evaluation']['level']}"
)
