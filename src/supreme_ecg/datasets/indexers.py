"""Indexers: a dataset folder (MIMIC-IV-ECG, PTB-XL, CinC form, original CPSC2018) or a user's table → manifest."""

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
PTBXL_FOLD_SPLIT = {**dict.fromkeys(range(1, 9), "train"), 9: "val", 10: "test"}


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
        return dict.fromkeys(ids, "train")
    train, test = train_test_split(ids, test_size=0.2, random_state=seed)
    train, val = train_test_split(train, test_size=0.1, random_state=seed)
    return {**dict.fromkeys(train, "train"), **dict.fromkeys(val, "val"), **dict.fromkeys(test, "test")}


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


# --------------------------------------------------------------------------- a user's own manifest

_RECORD_EXTENSIONS = (".hea", ".mat", ".dat", ".h5", ".hdf5")


def record_stem(path) -> str:
    """File name without folder and record extension: ``/chapman/WFDBRecords/18/186/JS18048.mat`` → ``JS18048``."""
    name = str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    for ext in _RECORD_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


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
