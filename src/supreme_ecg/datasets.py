"""Indexers that turn a dataset folder into a manifest (one row per record) and task labels.

The same functions read the demo corpus and the real PhysioNet sets:

* :func:`index_mimic` — MIMIC-IV-ECG (``record_list.csv`` + ``machine_measurements.csv``).
* :func:`index_ptbxl` — PTB-XL (``ptbxl_database.csv``; splits from ``strat_fold``).
* :func:`index_cinc` — CinC-form sets (CPSC2018, CSN): header text only, the benchmark's random split.
* :func:`index_cpsc2018_original` — the original CPSC2018 release (struct ``.mat`` + ``REFERENCE.csv``).
* :func:`index_user_manifest` — a user's own corpus or labelled set (CSV/Parquet: record path, report
  text and patient id, or codes/class names), read in place.
* :func:`mark_pretraining` / :func:`pretraining_rows` — which rows of the pre-training corpus train
  and validate (``pretrain_split``); only those rows' reports reach the extraction stage.
* :func:`task_labels` — one int8 column per class of a zero-shot task, codes matched exactly.
* :func:`user_task_labels` — the same for a task the user defines in the config (classes with
  name, description, codes), written with its class list in the Parquet metadata
  (:func:`write_task_labels`, read back by :func:`task_classes_from_labels`).
* :func:`merl_compat_labels` — the same table from MERL's released split CSVs, used as they are
  (their labels and splits, defects included), to compare with published numbers;
  :func:`label_disagreement` counts, per class, where the two label sets differ.

The ``index_*`` functions give ``source_path`` relative to the *set* folder they are given;
:func:`index_dataset` (what the workflow calls) prefixes the set folder so that ``source_path`` is
relative to the *data root* holding all sets (the preprocess stage's ``--root``).
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from supreme_ecg import catalogue, formats

#: ``random_state`` of the benchmark's random splits (CPSC2018, CSN).
SPLIT_SEED = 42
#: Number of free-text statement fields in ``machine_measurements.csv``.
N_REPORT_FIELDS = 18
REPORT_COLUMNS = tuple(f"report_{k}" for k in range(N_REPORT_FIELDS))
#: PTB-XL ``strat_fold`` → split (the benchmark's rule).
PTBXL_FOLD_SPLIT = {**{fold: "train" for fold in range(1, 9)}, 9: "val", 10: "test"}
#: Datasets whose tasks keep only records with at least one label of the task.
#: MERL's PTB-XL CSVs (from the PTB-XL benchmarking code) drop unlabelled records in all four
#: PTB-XL tasks (e.g. 23 of ecg_id 1–500 are absent from super/sub); CPSC2018/CSN keep every record.
MIN_ONE_LABEL_DATASETS = ("ptbxl",)
#: Folder of each dataset under a data root (the PhysioNet project slugs; CPSC2018 as its own folder).
DATASET_FOLDERS = {"mimic": "mimic-iv-ecg", "ptbxl": "ptb-xl", "cpsc2018": "cpsc2018", "csn": "ecg-arrhythmia"}


# --------------------------------------------------------------------------- MIMIC-IV-ECG


def index_mimic(root) -> pd.DataFrame:
    """MIMIC-IV-ECG manifest: record_id, dataset, source_path, patient_id, split, report, n_report_fields."""
    from supreme_ecg.extract import clean_mimic_report  # MERL's report cleaning, owned by the extract stage

    root = Path(root)
    records = pd.read_csv(root / "record_list.csv", dtype={"path": str})
    cols = ["study_id", *REPORT_COLUMNS]
    reports = pd.read_csv(root / "machine_measurements.csv", usecols=lambda c: c in cols, dtype=str)
    reports["study_id"] = reports["study_id"].astype(np.int64)
    merged = records.merge(reports, on="study_id", how="left")
    report_cols = [c for c in REPORT_COLUMNS if c in merged]
    fields = merged[report_cols].to_numpy(dtype=object)
    return pd.DataFrame({
        "record_id": merged["study_id"].astype(str),
        "dataset": "mimic",
        "source_path": merged["path"].astype(str),
        "patient_id": merged["subject_id"].astype(np.int64),
        "split": "pretrain",
        "report": [clean_mimic_report(row) for row in fields],
        "n_report_fields": [sum(isinstance(f, str) and bool(f.strip()) for f in row) for row in fields],
    })


# --------------------------------------------------------------------------- PTB-XL


def parse_scp_codes(text) -> dict[str, float]:
    """PTB-XL ``scp_codes`` (Python-literal or JSON dict string, or a dict) → {code: likelihood}."""
    if isinstance(text, dict):
        return {str(k): float(v) for k, v in text.items()}
    if not isinstance(text, str) or not text.strip():
        return {}
    return {str(k): float(v) for k, v in ast.literal_eval(text).items()}


def index_ptbxl(root, sampling_rate: int = 500) -> pd.DataFrame:
    """PTB-XL manifest: record_id ``ptbxl/{ecg_id}``, source_path, patient_id, split, report, scp_codes, strat_fold."""
    column = {500: "filename_hr", 100: "filename_lr"}[int(sampling_rate)]
    db = pd.read_csv(Path(root) / "ptbxl_database.csv")
    folds = db["strat_fold"].astype(int)
    return pd.DataFrame({
        "record_id": "ptbxl/" + db["ecg_id"].astype(int).astype(str),
        "dataset": "ptbxl",
        "source_path": db[column].astype(str),
        "patient_id": db["patient_id"].astype("Int64"),
        "split": folds.map(PTBXL_FOLD_SPLIT),
        "report": db["report"].fillna("").astype(str),
        "scp_codes": [json.dumps(parse_scp_codes(s)) for s in db["scp_codes"]],
        "strat_fold": folds,
        "ecg_id": db["ecg_id"].astype(int),
        "age": pd.to_numeric(db.get("age"), errors="coerce"),
        "sex": db.get("sex"),
    })


def load_scp_statements(path=None) -> pd.DataFrame:
    """``scp_statements.csv`` indexed by SCP code; None → the catalogue's statement facts."""
    if path is not None:
        return pd.read_csv(path, index_col=0)
    frame = pd.DataFrame.from_dict(catalogue.scp_statement_facts(), orient="index")
    return frame.reindex(columns=["description", "diagnostic", "form", "rhythm",
                                  "diagnostic_class", "diagnostic_subclass"])


# --------------------------------------------------------------------------- CinC form


def _header_files(root: Path) -> list[Path]:
    """Every ``*.hea`` under ``root``, sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".hea")]
    return found


def random_split(record_ids, seed: int = SPLIT_SEED) -> dict[str, str]:
    """The benchmark's split: 80/20 train/test, then 10 % of train to val, on the sorted ids."""
    from sklearn.model_selection import train_test_split

    ids = sorted(record_ids)
    if len(ids) < 5:
        return {i: "train" for i in ids}
    train, test = train_test_split(ids, test_size=0.2, random_state=seed)
    train, val = train_test_split(train, test_size=0.1, random_state=seed)
    return {**{i: "train" for i in train}, **{i: "val" for i in val}, **{i: "test" for i in test}}


def index_cinc(root, dataset: str) -> pd.DataFrame:
    """CinC-form manifest (header text only): record_id ``{dataset}/{name}``, source_path, dx_codes, age, sex, split."""
    root = Path(root)
    rows = []
    for hea in _header_files(root):
        meta = formats.parse_comments(formats.read_header(hea).comments)
        name = hea.name[: -len(".hea")]
        rows.append({
            "record_id": f"{dataset}/{name}", "dataset": dataset,
            "source_path": hea.relative_to(root).with_name(name).as_posix(),
            "dx_codes": list(meta["dx_codes"]), "age": meta["age"], "sex": meta["sex"],
        })
    frame = pd.DataFrame(rows, columns=["record_id", "dataset", "source_path", "dx_codes", "age", "sex"])
    frame["age"] = frame["age"].astype("Int64")
    frame["split"] = frame["record_id"].map(random_split(frame["record_id"]))
    return frame


# --------------------------------------------------------------------------- original CPSC2018 release

#: ``REFERENCE.csv`` label codes of the original CPSC2018 release → benchmark class names.
CPSC2018_REFERENCE_CLASSES = {1: "NORM", 2: "AFIB", 3: "1AVB", 4: "CLBBB", 5: "CRBBB", 6: "PAC", 7: "VPC",
                              8: "STD", 9: "STE"}
CPSC2018_REFERENCE = "REFERENCE.csv"


def _reference_codes(row: pd.Series, label_columns: list[str], code_of: dict[str, str]) -> list[str]:
    """SNOMED codes of one ``REFERENCE.csv`` row (``code_of``: class name → its first SNOMED code)."""
    codes = []
    for column in label_columns:
        value = row[column]
        if pd.isna(value):
            continue
        number = float(value)
        if not number.is_integer() or int(number) not in CPSC2018_REFERENCE_CLASSES:
            raise ValueError(f"{CPSC2018_REFERENCE}: {row['Recording']} has {column}={value!r}; "
                             f"the release uses 1-9 ({CPSC2018_REFERENCE_CLASSES})")
        code = code_of[CPSC2018_REFERENCE_CLASSES[int(number)]]
        if code not in codes:
            codes.append(code)
    return codes


def index_cpsc2018_original(root) -> pd.DataFrame:
    """Manifest of the original CPSC2018 release: ``A0001.mat`` (struct ``ECG``) + ``REFERENCE.csv``.

    Labels 1–9 become the SNOMED codes of the CinC form (``dx_codes``), so task labels, splits and
    record ids (``cpsc2018/A0001``) match :func:`index_cinc` on the CinC copy. Every ``.mat`` and
    every ``REFERENCE.csv`` row is a manifest row: a ``.mat`` without a row has ``labelled`` False
    (preprocessed, left out of the task labels and counted there); a row without a ``.mat`` is
    rejected by preprocess as ``missing_file``. Age and sex live inside each ``.mat`` and are left
    to the preprocess stage, so indexing reads only the CSV and the folder listing.
    """
    root = Path(root)
    reference = pd.read_csv(root / CPSC2018_REFERENCE, dtype={"Recording": str})
    missing = {"Recording", "First_label"} - set(reference.columns)
    if missing:
        raise ValueError(f"{root / CPSC2018_REFERENCE} lacks columns {sorted(missing)}")
    reference["Recording"] = reference["Recording"].str.strip()
    duplicated = reference["Recording"][reference["Recording"].duplicated()]
    if len(duplicated):
        raise ValueError(f"{root / CPSC2018_REFERENCE} lists {sorted(set(duplicated))[:5]} more than once")
    label_columns = [c for c in reference.columns if c != "Recording"]
    code_of = {c.name: c.snomed[0] for c in catalogue.task_classes("cpsc2018")}
    codes = {row["Recording"]: _reference_codes(row, label_columns, code_of) for _, row in reference.iterrows()}
    mats = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(".mat"):
                mats.setdefault(name[: -len(".mat")], (Path(dirpath) / name).relative_to(root).as_posix())
    names = sorted(set(codes) | set(mats))
    frame = pd.DataFrame({
        "record_id": [f"cpsc2018/{name}" for name in names],
        "dataset": "cpsc2018",
        "source_path": [mats.get(name, f"{name}.mat") for name in names],
        "dx_codes": [codes.get(name, []) for name in names],
        "labelled": [name in codes for name in names],
        "age": pd.array([pd.NA] * len(names), dtype="Int64"),
        "sex": pd.Series([None] * len(names), dtype=object),
    })
    frame["split"] = frame["record_id"].map(random_split(frame["record_id"]))
    return frame


def is_cpsc2018_original(root) -> bool:
    """Whether a CPSC2018 folder is the original release (``REFERENCE.csv``, no WFDB headers)."""
    root = Path(root)
    if not (root / CPSC2018_REFERENCE).is_file():
        return False
    return not any(name.endswith(".hea") for _, _, filenames in os.walk(root) for name in filenames)


# --------------------------------------------------------------------------- task labels


def _code_list(value) -> list[str]:
    """A record's code list from a list/array, a JSON list, or a comma-separated string."""
    if isinstance(value, str):
        text = value.strip()
        items = json.loads(text) if text.startswith("[") else text.split(",")
    elif value is None or (isinstance(value, float) and np.isnan(value)):
        items = []
    else:
        items = list(value)
    return [str(c).strip() for c in items if str(c).strip()]


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


# --------------------------------------------------------------------------- MERL-compatible labels

#: File stem of each task's released MERL split CSVs (``{stem}_{train,val,test}.csv``).
MERL_CSV_STEMS = {
    "ptbxl_super": "ptbxl_super_class", "ptbxl_sub": "ptbxl_sub_class", "ptbxl_form": "ptbxl_form",
    "ptbxl_rhythm": "ptbxl_rhythm", "cpsc2018": "icbeb", "csn": "chapman",
}
MERL_SPLITS = ("train", "val", "test")
_RECORD_EXTENSIONS = (".hea", ".mat", ".dat", ".h5", ".hdf5")


def record_stem(path) -> str:
    """File name without folder and record extension: ``/chapman/WFDBRecords/18/186/JS18048.mat`` → ``JS18048``."""
    name = str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    for ext in _RECORD_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


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


# --------------------------------------------------------------------------- a user's own manifest

#: Column names a user manifest may use for each manifest field (the first one present wins).
MANIFEST_ALIASES = {
    "source_path": ("path", "source_path", "record_path", "file"),
    "report": ("report", "text", "report_text"),
    "patient_id": ("patient_id", "subject_id", "patient"),
    "record_id": ("record_id", "id", "ecg_id"),
    "source_fs": ("sampling_rate", "fs", "sampling_frequency"),
    "split": ("split",),
    "codes": ("codes", "labels", "dx_codes", "scp_codes", "classes"),
}


def read_table(path) -> pd.DataFrame:
    """A CSV or Parquet table (by extension: ``.parquet``/``.pq``, else CSV)."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _user_columns(table: pd.DataFrame, path, required) -> dict[str, str]:
    """Manifest field → the table's column that holds it; raises when a required field has none."""
    found = {}
    for field_name, aliases in MANIFEST_ALIASES.items():
        column = next((c for c in aliases if c in table.columns), None)
        if column is not None:
            found[field_name] = column
    missing = [f for f in required if f not in found]
    if missing:
        wanted = "; ".join(f"{f}: one of {list(MANIFEST_ALIASES[f])}" for f in missing)
        raise ValueError(f"manifest {path} lacks {wanted} (it has {list(table.columns)})")
    return found


def _without_record_extension(path: str) -> str:
    """``a/b/E00001.mat`` → ``a/b/E00001`` (only record extensions are removed)."""
    return path[: len(path) - len(Path(path).name)] + record_stem(path)


def index_user_manifest(path, dataset: str, required=("source_path", "report", "patient_id")) -> pd.DataFrame:
    """A user's manifest (CSV or Parquet) as a manifest of the workflow, records read in place.

    Columns (aliases in :data:`MANIFEST_ALIASES`): the record path (WFDB record or header, CinC
    ``.mat``, HDF5; relative paths are relative to the manifest's folder), the report text, the
    patient id, and optionally ``record_id`` (default: the path without extension), the sampling
    rate (kept as ``source_fs``; preprocessing reads the rate from the record itself), ``split``
    and ``codes`` (SNOMED/SCP codes or class names: JSON list, comma- or semicolon-separated).
    ``source_path`` becomes absolute, so the preprocess stage's data root does not apply to it.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found")
    table = read_table(path)
    columns = _user_columns(table, path, required)
    paths = [str(p).strip() for p in table[columns["source_path"]]]
    if any(not p for p in paths):
        raise ValueError(f"manifest {path}: {sum(not p for p in paths)} rows have no record path")
    resolved = [p if os.path.isabs(p) else str(path.parent / p) for p in paths]
    if "record_id" in columns:
        ids = table[columns["record_id"]].astype(str).str.strip().tolist()
    else:
        ids = [f"{dataset}/{_without_record_extension(p).lstrip('/')}" for p in paths]
    frame = pd.DataFrame({"record_id": ids, "dataset": dataset, "source_path": resolved})
    twice = frame["record_id"][frame["record_id"].duplicated()]
    if len(twice):
        raise ValueError(f"manifest {path}: record ids repeat, e.g. {twice.iloc[0]!r}")
    if "patient_id" in columns:
        frame["patient_id"] = table[columns["patient_id"]].astype(str).str.strip().to_numpy()
    if "report" in columns:
        frame["report"] = table[columns["report"]].fillna("").astype(str).to_numpy()
    if "source_fs" in columns:
        frame["source_fs"] = pd.to_numeric(table[columns["source_fs"]], errors="coerce").to_numpy()
    if "codes" in columns:
        frame["codes"] = [_code_list(v.replace(";", ",") if isinstance(v, str) else v)
                          for v in table[columns["codes"]]]
    if "split" in columns:
        frame["split"] = table[columns["split"]].astype(str).str.strip().str.lower().to_numpy()
    return frame


# --------------------------------------------------------------------------- the pre-training corpus

#: Corpora that can be the pre-training corpus (``data.pretrain_corpus``).
PRETRAIN_CORPORA = ("mimic", "ptbxl", "manifest")
#: Rows of the corpus that pre-train (``train``) and validate (``val``); any other value: not used.
PRETRAIN_SPLITS = ("train", "val")
#: PTB-XL as the corpus: folds 1–8 train, fold 9 validates (fold 10 stays for zero-shot tests).
DEFAULT_PTBXL_PRETRAIN_FOLDS = {"train": list(range(1, 9)), "val": [9]}


def mark_pretraining(manifest: pd.DataFrame, corpus: str, ptbxl_folds: dict | None = None) -> pd.DataFrame:
    """Add ``pretrain_split`` (train / val / "" = not pre-training) to the corpus manifest.

    MIMIC-IV-ECG: every record trains (the trainer holds out its own validation share). PTB-XL:
    by ``strat_fold`` (``ptbxl_folds``: {"train": [...], "val": [...]}). A user manifest: its
    ``split`` column where it says train/val, every record trains otherwise.
    """
    manifest = manifest.copy()
    if corpus == "ptbxl":
        folds = ptbxl_folds or DEFAULT_PTBXL_PRETRAIN_FOLDS
        train, val = {int(f) for f in folds.get("train", ())}, {int(f) for f in folds.get("val", ())}
        if train & val:
            raise ValueError(f"PTB-XL folds {sorted(train & val)} are both pre-training train and val")
        fold = manifest["strat_fold"].astype(int)
        manifest["pretrain_split"] = np.where(fold.isin(train), "train", np.where(fold.isin(val), "val", ""))
    elif corpus == "manifest" and "split" in manifest and manifest["split"].isin(PRETRAIN_SPLITS).any():
        manifest["pretrain_split"] = manifest["split"].where(manifest["split"].isin(PRETRAIN_SPLITS), "")
    elif corpus in PRETRAIN_CORPORA:
        manifest["pretrain_split"] = "train"
    else:
        raise ValueError(f"unknown pre-training corpus {corpus!r}; known: {PRETRAIN_CORPORA}")
    return manifest


def pretraining_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows of a marked corpus manifest that pre-train (their reports go to the extraction stage)."""
    if "pretrain_split" not in manifest:
        raise ValueError("the manifest has no pretrain_split column: it is not the pre-training corpus")
    keep = manifest["pretrain_split"].isin(PRETRAIN_SPLITS).to_numpy()
    rows = manifest[keep].reset_index(drop=True)
    rows.attrs["n_left_out"] = int((~keep).sum())
    return rows


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
