"""Dataset folders → manifests (one row per record) and task labels; the same code reads the demo corpus and the real sets.

* :mod:`~supreme_ecg.datasets.indexers` — MIMIC-IV-ECG, PTB-XL, CinC-form sets, the original CPSC2018
  release and a user's own manifest (CSV/Parquet, read in place) → manifest;
* :mod:`~supreme_ecg.datasets.corpus` — which rows of the pre-training corpus train and validate;
* :mod:`~supreme_ecg.datasets.labels` — task labels (benchmark tasks, codes matched exactly; user tasks
  with their class list in the Parquet metadata), the split policy;
* :mod:`~supreme_ecg.datasets.merl` — the same table from MERL's released split CSVs, and where the two differ;
* here — the workflow's entry points (:func:`index_dataset`, :func:`task_labels_for`, :func:`describe_unverified`).

The ``index_*`` functions give ``source_path`` relative to the *set* folder they are given;
:func:`index_dataset` (what the workflow calls) prefixes the set folder so that ``source_path`` is
relative to the *data root* holding all sets (the preprocess stage's ``--root``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from supreme_ecg import catalogue
from supreme_ecg.datasets.corpus import (
    DEFAULT_PTBXL_PRETRAIN_FOLDS,
    PRETRAIN_CORPORA,
    PRETRAIN_SPLITS,
    mark_pretraining,
    pretraining_rows,
)
from supreme_ecg.datasets.indexers import (
    CPSC2018_REFERENCE,
    CPSC2018_REFERENCE_CLASSES,
    MANIFEST_ALIASES,
    N_REPORT_FIELDS,
    PTBXL_FOLD_SPLIT,
    REPORT_COLUMNS,
    SPLIT_SEED,
    _code_list,  # noqa: F401  (not public; tests use it)
    index_cinc,
    index_cpsc2018_original,
    index_mimic,
    index_ptbxl,
    index_user_manifest,
    is_cpsc2018_original,
    load_scp_statements,
    parse_scp_codes,
    random_split,
    read_table,
    record_stem,
)
from supreme_ecg.datasets.labels import (
    MIN_ONE_LABEL_DATASETS,
    TASK_METADATA_KEY,
    USER_LABEL_SOURCES,
    apply_split_policy,
    task_classes,
    task_classes_from_labels,
    task_definition,
    task_labels,
    task_labels_and_dropped,
    user_task_classes,
    user_task_labels,
    write_task_labels,
)
from supreme_ecg.datasets.merl import (
    MERL_CSV_STEMS,
    MERL_SPLITS,
    label_disagreement,
    merl_compat_labels,
    read_merl_splits,
)

__all__ = [
    "CPSC2018_REFERENCE", "CPSC2018_REFERENCE_CLASSES", "DATASET_FOLDERS", "DATASET_KINDS",
    "DEFAULT_PTBXL_PRETRAIN_FOLDS", "INDEX_KINDS", "MANIFEST_ALIASES", "MERL_CSV_STEMS", "MERL_SPLITS",
    "MIN_ONE_LABEL_DATASETS", "N_REPORT_FIELDS", "PRETRAIN_CORPORA", "PRETRAIN_SPLITS", "PTBXL_FOLD_SPLIT",
    "REPORT_COLUMNS", "SPLIT_SEED", "TASK_METADATA_KEY", "USER_LABEL_SOURCES", "apply_split_policy",
    "describe_unverified", "index_cinc", "index_cpsc2018_original", "index_dataset", "index_mimic", "index_ptbxl",
    "index_user_manifest", "is_cpsc2018_original", "label_disagreement", "load_scp_statements",
    "mark_pretraining", "merl_compat_labels", "parse_scp_codes", "pretraining_rows", "random_split",
    "read_merl_splits", "read_table", "record_stem", "task_classes", "task_classes_from_labels", "task_definition",
    "task_labels", "task_labels_and_dropped", "task_labels_for", "user_task_classes", "user_task_labels",
    "write_task_labels",
]

#: Folder of each dataset under a data root (the PhysioNet project slugs; CPSC2018 as its own folder).
DATASET_FOLDERS = {"mimic": "mimic-iv-ecg", "ptbxl": "ptb-xl", "cpsc2018": "cpsc2018", "csn": "ecg-arrhythmia"}


# --------------------------------------------------------------------------- workflow entry points

#: How each known dataset is indexed; any other dataset is a CinC-form folder or a user manifest.
DATASET_KINDS = {"mimic": "mimic", "ptbxl": "ptbxl", "cpsc2018": "cinc", "csn": "cinc"}
INDEX_KINDS = ("mimic", "ptbxl", "cinc", "manifest")


def index_dataset(dataset: str, data_root, folder: str | None = None, kind: str | None = None,
                  manifest: str | None = None, pretrain_corpus: str | None = None,
                  ptbxl_folds: dict | None = None) -> pd.DataFrame:
    """Manifest of one set under ``data_root`` with ``source_path`` relative to ``data_root``.

    ``folder`` (default :data:`DATASET_FOLDERS`) is the set's folder under ``data_root``; ``kind``
    (mimic, ptbxl, cinc, manifest; default by name) says how it is read; a ``manifest`` kind reads
    the user's table at ``manifest`` (its paths absolute afterwards). When this set is the
    pre-training corpus (``pretrain_corpus`` names its kind), ``pretrain_split`` marks the rows that
    pre-train (:func:`mark_pretraining`).
    """
    kind = kind or DATASET_KINDS.get(dataset) or ("manifest" if manifest else "cinc")
    if kind not in INDEX_KINDS:
        raise ValueError(f"{dataset}: unknown index kind {kind!r}; known: {INDEX_KINDS}")
    if kind == "manifest":
        if not manifest:
            raise ValueError(f"{dataset}: a manifest kind needs the manifest's path")
        required = ("source_path", "report", "patient_id") if pretrain_corpus else ("source_path",)
        frame = index_user_manifest(manifest, dataset, required=required)
    else:
        folder = folder or DATASET_FOLDERS.get(dataset, dataset)
        set_root = Path(data_root) / folder
        if not set_root.is_dir():
            raise FileNotFoundError(f"{dataset}: no folder {set_root}")
        if kind == "mimic":
            frame = index_mimic(set_root)
        elif kind == "ptbxl":
            frame = index_ptbxl(set_root)
        elif dataset == "cpsc2018" and is_cpsc2018_original(set_root):
            frame = index_cpsc2018_original(set_root)
        else:
            frame = index_cinc(set_root, dataset)
        frame["source_path"] = folder.rstrip("/") + "/" + frame["source_path"]
    frame["dataset"] = dataset
    if "split" not in frame:
        frame["split"] = "pretrain" if pretrain_corpus else frame["record_id"].map(random_split(frame["record_id"]))
    if pretrain_corpus:
        frame = mark_pretraining(frame, pretrain_corpus, ptbxl_folds)
    return frame


def task_labels_for(task: str, manifest_path, data_root, merl_splits_dir=None, spec: dict | None = None,
                    ptbxl_folder: str | None = None) -> tuple[pd.DataFrame, int]:
    """(labels, n_dropped) of a task from a manifest Parquet.

    ``spec``: a user task (:func:`user_task_labels`). With ``merl_splits_dir``, the labels and
    splits of MERL's released CSVs (:func:`merl_compat_labels`); otherwise exact labels, PTB-XL
    from the set's own scp_statements.csv (under ``ptbxl_folder``, default ``ptb-xl``).
    """
    manifest = pd.read_parquet(manifest_path)
    if spec is not None:
        labels = user_task_labels(manifest, task, spec)
        return labels, labels.attrs["n_dropped"]
    if merl_splits_dir is not None:
        labels = merl_compat_labels(task, merl_splits_dir, manifest)
        return labels, labels.attrs["n_dropped"]
    statements = None
    if catalogue.task_dataset(task) == "ptbxl":
        path = Path(data_root) / (ptbxl_folder or DATASET_FOLDERS["ptbxl"]) / "scp_statements.csv"
        if not path.is_file():
            raise FileNotFoundError(f"PTB-XL task labels need the set's {path}")
        statements = load_scp_statements(path)
    return task_labels_and_dropped(manifest, task, statements)


def describe_unverified(dataset: str, folder) -> dict:
    """The data report of a local folder read in place *without* verification (``data.verify: false``)."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{dataset}: {folder} does not exist")
    n_files = n_bytes = 0
    if folder.is_file():
        n_files, n_bytes = 1, folder.stat().st_size
    else:
        for dirpath, _, filenames in os.walk(folder):
            for name in filenames:
                n_files += 1
                n_bytes += (Path(dirpath) / name).stat().st_size
    return {"dataset": dataset, "source": "local", "dest": str(folder.resolve()), "files": n_files,
            "bytes": n_bytes, "verified": 0, "checksums_checked": False,
            "note": "read in place WITHOUT checksum verification (data.verify: false); "
                    "the files were neither downloaded nor copied"}
