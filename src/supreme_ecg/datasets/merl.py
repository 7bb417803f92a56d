"""MERL-compatible labels: task labels and splits from MERL's released split CSVs, and their disagreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from supreme_ecg import catalogue
from supreme_ecg.datasets.indexers import record_stem

# --------------------------------------------------------------------------- MERL-compatible labels

#: File stem of each task's released MERL split CSVs (``{stem}_{train,val,test}.csv``).
MERL_CSV_STEMS = {
    "ptbxl_super": "ptbxl_super_class", "ptbxl_sub": "ptbxl_sub_class", "ptbxl_form": "ptbxl_form",
    "ptbxl_rhythm": "ptbxl_rhythm", "cpsc2018": "icbeb", "csn": "chapman",
}
MERL_SPLITS = ("train", "val", "test")


def _merl_csv_keys(task: str, csv: pd.DataFrame, path: Path) -> pd.Series:
    """Join keys of a released CSV: PTB-XL ``ecg_id`` (int), else the record's file name stem."""
    column = {"ptbxl": "ecg_id", "cpsc2018": "filename", "csn": "ecg_path"}[catalogue.task_dataset(task)]
    if column not in csv.columns:
        raise ValueError(f"{path} has no {column!r} column to join on")
    if column == "ecg_id":
        return csv[column].astype(np.int64)
    return csv[column].astype(str).map(record_stem)


def read_merl_splits(task: str, split_csv_dir) -> pd.DataFrame:
    """A task's three released MERL CSVs as ``key, split, <class columns>`` (int8, benchmark class order).

    Label columns are selected *by name* (the PTB-XL sub train CSV orders three columns unlike
    val/test). Raises when a CSV is missing, lacks a class column, holds a value other than 0/1,
    or when a record appears twice.
    """
    stem, names = MERL_CSV_STEMS[task], [c.name for c in catalogue.task_classes(task)]
    frames = []
    for split in MERL_SPLITS:
        path = Path(split_csv_dir) / f"{stem}_{split}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"MERL split CSV {path} not found")
        csv = pd.read_csv(path)
        missing = [name for name in names if name not in csv.columns]
        if missing:
            raise ValueError(f"{path} lacks class columns {missing}")
        values = csv[names].to_numpy()
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"{path}: class columns hold values other than 0/1")
        frame = pd.DataFrame(values.astype(np.int8), columns=names)
        frame.insert(0, "split", split)
        frame.insert(0, "key", _merl_csv_keys(task, csv, path).to_numpy())
        frames.append(frame)
    released = pd.concat(frames, ignore_index=True)
    twice = released["key"][released["key"].duplicated()]
    if len(twice):
        raise ValueError(f"{stem}: {len(twice)} records appear in more than one row, e.g. {twice.iloc[0]!r}")
    return released


def _manifest_merl_keys(task: str, manifest: pd.DataFrame) -> np.ndarray:
    """Join keys of manifest rows: PTB-XL ``ecg_id`` (column, else from ``ptbxl/<id>``), else the file stem."""
    if catalogue.task_dataset(task) == "ptbxl":
        if "ecg_id" in manifest.columns:
            return pd.to_numeric(manifest["ecg_id"], errors="coerce").fillna(-1).astype(np.int64).to_numpy()
        ids = manifest["record_id"].astype(str).str.rsplit("/", n=1).str[-1]
        return pd.to_numeric(ids, errors="coerce").fillna(-1).astype(np.int64).to_numpy()
    source = manifest["source_path"] if "source_path" in manifest.columns else manifest["record_id"]
    return np.array([record_stem(p) for p in source.astype(str)], dtype=object)


def merl_compat_labels(task: str, split_csv_dir, manifest: pd.DataFrame) -> pd.DataFrame:
    """Task labels and splits taken from MERL's released split CSVs, joined to ``manifest``.

    Same shape as :func:`task_labels` (record_id, split, one int8 column per class in benchmark
    order), in manifest order. PTB-XL joins on ``ecg_id``; CPSC2018 (``icbeb``) and CSN
    (``chapman``) on the record's file name stem. ``split`` is that of the CSV a row came from.
    Manifest records in no CSV are dropped: ``.attrs["n_dropped"]`` counts them and
    ``.attrs["n_csv_unmatched"]`` counts CSV rows that match no manifest record.
    """
    released = read_merl_splits(task, split_csv_dir)
    keys = _manifest_merl_keys(task, manifest)
    positions = pd.Index(released["key"]).get_indexer(keys)
    keep = positions >= 0
    rows = positions[keep]
    labels = pd.DataFrame({
        "record_id": manifest["record_id"].to_numpy()[keep],
        "split": released["split"].to_numpy()[rows],
    })
    for cls in catalogue.task_classes(task):
        labels[cls.name] = released[cls.name].to_numpy()[rows]
    labels.attrs["n_dropped"] = int((~keep).sum())
    labels.attrs["n_csv_unmatched"] = int(len(released) - np.unique(rows).size)
    return labels


def label_disagreement(exact: pd.DataFrame, merl: pd.DataFrame) -> pd.DataFrame:
    """Per class present in both label tables, on the records in both (joined on ``record_id``).

    Columns: class, n_records_compared, n_both (positive in both), n_exact_only, n_merl_only.
    """
    for name, table in (("exact", exact), ("merl", merl)):
        if table["record_id"].duplicated().any():
            raise ValueError(f"{name} labels repeat record ids")
    classes = [c for c in exact.columns if c not in ("record_id", "split") and c in merl.columns]
    joined = exact[["record_id", *classes]].merge(
        merl[["record_id", *classes]], on="record_id", how="inner", suffixes=("__exact", "__merl"))
    rows = []
    for cls in classes:
        e = joined[f"{cls}__exact"].to_numpy() != 0
        m = joined[f"{cls}__merl"].to_numpy() != 0
        rows.append({"class": cls, "n_records_compared": len(joined), "n_both": int((e & m).sum()),
                     "n_exact_only": int((e & ~m).sum()), "n_merl_only": int((~e & m).sum())})
    return pd.DataFrame(rows, columns=["class", "n_records_compared", "n_both", "n_exact_only", "n_merl_only"])
