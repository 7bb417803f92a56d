"""Task labels: benchmark tasks (codes matched exactly), user-defined tasks, their Parquet definition, split policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from supreme_ecg import catalogue
from supreme_ecg.datasets.indexers import _code_list, load_scp_statements, parse_scp_codes

#: Datasets whose tasks keep only records with at least one label of the task.
#: MERL's PTB-XL CSVs (from the PTB-XL benchmarking code) drop unlabelled records in all four
#: PTB-XL tasks (e.g. 23 of ecg_id 1–500 are absent from super/sub); CPSC2018/CSN keep every record.
MIN_ONE_LABEL_DATASETS = ("ptbxl",)


# --------------------------------------------------------------------------- task labels


def _ptbxl_names(codes: dict, statements: pd.DataFrame, source: str) -> set[str]:
    """Label names of one record's SCP codes for a PTB-XL label source (underscores stripped)."""
    flag = {"diagnostic_class": "diagnostic", "diagnostic_subclass": "diagnostic"}.get(source, source)
    names = set()
    for code in codes:
        if code not in statements.index or statements.at[code, flag] != 1:
            continue
        name = code if source in ("form", "rhythm") else statements.at[code, source]
        if isinstance(name, str) and name:
            names.add(name.strip("_"))
    return names


def _snomed_names(codes: list[str], classes) -> set[str]:
    """Classes whose SNOMED codes contain one of the record's codes (exact string equality)."""
    have = set(codes)
    return {c.name for c in classes if have.intersection(c.snomed)}


def task_labels_and_dropped(manifest: pd.DataFrame, task: str, scp_statements: pd.DataFrame | None = None
                            ) -> tuple[pd.DataFrame, int]:
    """(labels, n_dropped): record_id, split, one int8 column per class.

    Drops records by the ≥1-label rule and records a manifest marks ``labelled`` False (no
    reference labels at all); ``n_dropped`` counts both.
    """
    spec = catalogue.benchmark()["tasks"][task]
    classes = catalogue.task_classes(task)
    n_unlabelled = 0
    if "labelled" in manifest:
        labelled = manifest["labelled"].fillna(True).astype(bool).to_numpy()
        n_unlabelled = int((~labelled).sum())
        manifest = manifest[labelled]
    if spec["label_source"] == "snomed":
        names = [_snomed_names(_code_list(v), classes) for v in manifest["dx_codes"]]
    else:
        statements = load_scp_statements() if scp_statements is None else scp_statements
        names = [_ptbxl_names(parse_scp_codes(v), statements, spec["label_source"]) for v in manifest["scp_codes"]]
    labels = pd.DataFrame({"record_id": manifest["record_id"].to_numpy(), "split": manifest["split"].to_numpy()})
    for cls in classes:
        labels[cls.name] = np.fromiter((cls.name.strip("_") in n for n in names), np.int8, len(names))
    if spec["dataset"] not in MIN_ONE_LABEL_DATASETS:
        return labels, n_unlabelled
    keep = labels[[c.name for c in classes]].to_numpy().any(axis=1)
    return labels[keep].reset_index(drop=True), int((~keep).sum()) + n_unlabelled


def task_labels(manifest: pd.DataFrame, task: str, scp_statements: pd.DataFrame | None = None) -> pd.DataFrame:
    """Task label table (see :func:`task_labels_and_dropped`); ``.attrs["n_dropped"]`` holds the drop count."""
    labels, dropped = task_labels_and_dropped(manifest, task, scp_statements)
    labels.attrs["n_dropped"] = dropped
    return labels


# --------------------------------------------------------------------------- user-defined zero-shot tasks

#: What a user task's codes are matched against: SNOMED CT codes (CinC ``#Dx``), PTB-XL SCP codes,
#: or class names as written in the manifest's ``codes`` column (case-insensitive).
USER_LABEL_SOURCES = ("snomed", "scp", "name")


def user_task_classes(task: str, spec: dict) -> list[catalogue.BenchmarkClass]:
    """Classes of a user task (``spec["classes"]``: name, description, codes) as benchmark classes."""
    classes = spec.get("classes") or []
    if not classes:
        raise ValueError(f"task {task}: no classes")
    names = [str(c["name"]) for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"task {task}: class names repeat")
    out = []
    for c in classes:
        codes = tuple(str(x).strip() for x in (c.get("codes") or ()))
        if not codes and spec.get("label_source", "snomed") != "name":
            raise ValueError(f"task {task}: class {c['name']} has no codes")
        out.append(catalogue.BenchmarkClass(task=task, name=str(c["name"]),
                                            description=str(c.get("description") or c["name"]), snomed=codes))
    return out


def _record_codes(manifest: pd.DataFrame, label_source: str) -> list[set[str]]:
    """Each record's codes for a label source (``codes``, ``dx_codes`` or ``scp_codes`` column)."""
    if label_source == "scp" and "scp_codes" in manifest:
        return [set(parse_scp_codes(v)) for v in manifest["scp_codes"]]
    for column in ("codes", "dx_codes"):
        if column in manifest:
            return [set(_code_list(v)) for v in manifest[column]]
    raise ValueError(f"the manifest has no codes column (codes, dx_codes or scp_codes) for {label_source} labels")


def user_task_labels(manifest: pd.DataFrame, task: str, spec: dict) -> pd.DataFrame:
    """Labels of a user task: record_id, split, one int8 column per class (1 = one of its codes is present).

    ``label_source`` snomed/scp: exact code equality; name: the class name or one of its codes,
    case-insensitive. Records a manifest marks ``labelled`` False are dropped (``.attrs["n_dropped"]``).
    """
    label_source = spec.get("label_source", "snomed")
    if label_source not in USER_LABEL_SOURCES:
        raise ValueError(f"task {task}: label_source {label_source!r} not in {USER_LABEL_SOURCES}")
    classes = user_task_classes(task, spec)
    n_dropped = 0
    if "labelled" in manifest:
        labelled = manifest["labelled"].fillna(True).astype(bool).to_numpy()
        n_dropped, manifest = int((~labelled).sum()), manifest[labelled]
    have = _record_codes(manifest, label_source)
    labels = pd.DataFrame({"record_id": manifest["record_id"].astype(str).to_numpy(),
                           "split": manifest["split"].astype(str).to_numpy() if "split" in manifest else "test"})
    for cls in classes:
        wanted = set(cls.snomed)
        if label_source == "name":
            wanted = {w.lower() for w in wanted | {cls.name}}
            hits = [bool(wanted & {c.lower() for c in codes}) for codes in have]
        else:
            hits = [bool(wanted & codes) for codes in have]
        labels[cls.name] = np.asarray(hits, dtype=np.int8)
    labels.attrs["n_dropped"] = n_dropped
    return labels


#: Parquet metadata key of a task label table's definition (task, dataset, label source, classes).
TASK_METADATA_KEY = b"supreme_ecg.task"


def task_definition(task: str, spec: dict | None = None) -> dict:
    """A task's definition: the benchmark's (``spec`` None) or a user task's."""
    if spec is None:
        bench = catalogue.benchmark()["tasks"][task]
        classes = catalogue.task_classes(task)
        return {"task": task, "dataset": bench["dataset"], "label_source": bench["label_source"], "user": False,
                "classes": [{"name": c.name, "description": c.description, "codes": list(c.snomed)}
                            for c in classes]}
    classes = user_task_classes(task, spec)
    return {"task": task, "dataset": spec.get("dataset", task), "label_source": spec.get("label_source", "snomed"),
            "user": True, "classes": [{"name": c.name, "description": c.description, "codes": list(c.snomed)}
                                      for c in classes]}


def write_task_labels(labels: pd.DataFrame, path, definition: dict, split_policy: str = "dataset") -> None:
    """Write a task label table with its definition (and the split policy) in the Parquet metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(labels, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[TASK_METADATA_KEY] = json.dumps({**definition, "split_policy": split_policy}).encode()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(meta), path)


def task_classes_from_labels(path) -> list[catalogue.BenchmarkClass]:
    """The classes (name, description, codes) of a task label table written by :func:`write_task_labels`."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    if TASK_METADATA_KEY not in meta:
        raise ValueError(f"{path} carries no task definition (written before user tasks existed?)")
    definition = json.loads(meta[TASK_METADATA_KEY])
    return [catalogue.BenchmarkClass(task=definition["task"], name=c["name"], description=c["description"],
                                     snomed=tuple(c.get("codes") or ())) for c in definition["classes"]]


def task_classes(task: str, task_labels_path) -> list[catalogue.BenchmarkClass]:
    """The task's classes: the definition stored in its label table (benchmark or user task), else the
    benchmark's (a label table written without one)."""
    import pyarrow.parquet as pq

    if TASK_METADATA_KEY in (pq.read_schema(task_labels_path).metadata or {}):
        return task_classes_from_labels(task_labels_path)
    return catalogue.task_classes(task)


# --------------------------------------------------------------------------- split policy


def apply_split_policy(labels: pd.DataFrame, policy: str) -> pd.DataFrame:
    """``dataset``: keep the manifest's split; ``all_test``: every record is a test record.

    ``all_test`` suits small evaluation-only sets: zero-shot never trains on a downstream record,
    so the benchmark's train/val records of such a set are test records that would otherwise be
    left unscored.
    """
    if policy == "all_test":
        return labels.assign(split="test")
    if policy != "dataset":
        raise ValueError(f"unknown split policy {policy!r} (dataset, all_test)")
    return labels
