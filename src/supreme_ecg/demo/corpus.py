"""The demo stage: a miniature of MIMIC-IV-ECG, PTB-XL, CPSC2018 and CSN in their real formats.

:func:`generate_demo` plans each set (:mod:`supreme_ecg.demo.plan`), renders the signals with
:mod:`supreme_ecg.demo.synth` and writes each set in its PhysioNet layout with the project's writers
(:mod:`supreme_ecg.formats`), so exactly the loaders that read PhysioNet read the demo; reports and
labels come from :mod:`supreme_ecg.demo.reports`. ``unseen_concepts`` are rendered in pre-training
signals but never named in pre-training reports, so the demo shows zero-shot transfer.
``demo_truth.parquet`` records every record's conditions and defect.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from supreme_ecg import catalogue, datasets, formats
from supreme_ecg.demo.plan import (
    DEFECT_KINDS,
    FS,
    MIMIC_MIN_POSITIVES,
    NO_P_RHYTHMS,
    Plan,
    add_variants,
    apply_defect,
    min_positives_for_test,
    pick_defects,
    plan_conditions,
    render_batches,
    renderable,
    sample_knobs,
    stratify,
    truncate_file,
)
from supreme_ecg.demo.reports import (
    dx_codes,
    mimic_statements,
    ptbxl_report,
    scp_codes,
)
from supreme_ecg.leads import CANONICAL_LEADS, MIMIC_LEAD_ORDER

#: Concepts rendered in pre-training signals but never named in pre-training reports.
UNSEEN_DEFAULT = (
    "atrial_flutter", "ventricular_bigeminy", "supraventricular_tachycardia", "early_repolarization", "u_wave",
)
SET_FOLDERS = datasets.DATASET_FOLDERS
PTBXL_LEADS = tuple(name.upper() for name in CANONICAL_LEADS)
_MIMIC_ROWS = [CANONICAL_LEADS.index(name) for name in MIMIC_LEAD_ORDER]


def _write_record(writer, directory: Path, name: str, signal, leads, defect, rng, ext: str, **kw) -> None:
    """Write one record with its defect (NaN/flat before writing, truncation after)."""
    if defect is not None:
        signal = apply_defect(signal, defect[0], defect[1], leads, rng)
    writer(directory, name, signal, list(leads), FS, **kw)
    if defect is not None and defect[0] == "truncated":
        truncate_file(directory / f"{name}{ext}", rng)



# --------------------------------------------------------------------------- MIMIC-IV-ECG


def _unique_ints(rng: np.random.Generator, size: int, low: int, high: int) -> np.ndarray:
    """``size`` distinct integers in [low, high)."""
    return low + rng.choice(high - low, size=size, replace=False)


def _timestamps(rng: np.random.Generator, size: int, first_year: int, last_year: int) -> np.ndarray:
    """Random ``YYYY-MM-DD HH:MM:SS`` strings (seconds zero) between two years."""
    start = np.datetime64(f"{first_year}-01-01T00:00")
    minutes = rng.integers(0, (last_year - first_year) * 525_600, size)
    stamps = np.datetime_as_string(start + minutes.astype("timedelta64[m]"), unit="s")
    return np.char.replace(stamps, "T", " ")


def mimic_measurements(plans: list[Plan], knobs: dict[str, np.ndarray], rng: np.random.Generator) -> pd.DataFrame:
    """Interval and axis measurements consistent with the knobs (29999 = not measured, as in MIMIC)."""
    n = len(plans)
    no_p = np.array([p.rendered[0] in NO_P_RHYTHMS for p in plans])
    p_onset = rng.integers(30, 60, n)
    qrs_onset = np.where(no_p, rng.integers(180, 230, n), p_onset + np.rint(knobs["pr_ms"]).astype(int))
    t_axis = knobs["qrs_axis_deg"] + rng.normal(0, 20, n) + np.where(knobs["t_scale"] < 0, 180, 0)
    return pd.DataFrame({
        "bandwidth": "0.005-150 Hz",
        "filtering": "60 Hz notch Baseline filter",
        "rr_interval": np.rint(60000.0 / knobs["hr_bpm"]).astype(int),
        "p_onset": np.where(no_p, 29999, p_onset),
        "p_end": np.where(no_p, 29999, p_onset + rng.integers(90, 125, n)),
        "qrs_onset": qrs_onset,
        "qrs_end": qrs_onset + np.rint(knobs["qrs_ms"]).astype(int),
        "t_end": qrs_onset + np.rint(knobs["qt_ms"]).astype(int),
        "p_axis": np.where(no_p, 29999, rng.integers(20, 76, n)),
        "qrs_axis": np.rint(knobs["qrs_axis_deg"]).astype(int),
        "t_axis": np.rint((t_axis + 180) % 360 - 180).astype(int),
    })


MIMIC_GAIN = 200.0  # ADC units per mV (5 µV per unit), as in the real headers


def mimic_header(hea: Path, ecg_time: str) -> None:
    """Rewrite a header as MIMIC-IV-ECG writes it: ``NAME 12 500 5000 HH:MM:SS DD/MM/YYYY``, gain
    ``200.0(0)/mV`` and unsigned 16-bit checksums (the subject comment is written by the writer)."""
    lines = hea.read_text().split("\n")
    date, time = ecg_time.split(" ")
    year, month, day = date.split("-")
    lines[0] = f"{lines[0]} {time} {day}/{month}/{year}"
    gain = f" {MIMIC_GAIN:.10g}/mV "  # as formats.write_wfdb16 writes it
    for k, line in enumerate(lines[1:13], start=1):
        tokens = line.replace(gain, f" {MIMIC_GAIN:.1f}(0)/mV ", 1).split(" ")
        tokens[6] = str(int(tokens[6]) % 65536)
        lines[k] = " ".join(tokens)
    hea.write_text("\n".join(lines))


def write_mimic(root: Path, plans, knobs, poor, defects, unseen, rng) -> pd.DataFrame:
    """MIMIC-IV-ECG layout: WFDB-16 records (real header form), record_list.csv,
    machine_measurements.csv; truth rows."""
    n = len(plans)
    subjects = _unique_ints(rng, max(1, int(0.7 * n)), 10_000_000, 20_000_000)
    subject = subjects[rng.integers(0, subjects.size, n)]
    study = _unique_ints(rng, n, 40_000_000, 50_000_000)
    times = _timestamps(rng, n, 2110, 2200)
    paths = [f"files/p{str(s)[:4]}/p{s}/s{st}/{st}" for s, st in zip(subject, study)]
    for start, batch in render_batches(knobs, rng):
        for k, signal in enumerate(batch):
            i = start + k
            directory = root / Path(paths[i]).parent
            _write_record(formats.write_wfdb16, directory, str(study[i]), signal[_MIMIC_ROWS], MIMIC_LEAD_ORDER,
                          defects.get(i), rng, ".dat", gain=MIMIC_GAIN, comments=[f"# <subject_id>: {subject[i]}"])
            mimic_header(directory / f"{study[i]}.hea", str(times[i]))
    rows = pd.DataFrame({k: knobs[k] for k in ("hr_bpm", "st_region")}).to_dict("records")
    reports = [mimic_statements(p, rows[i], poor[i], defects.get(i), unseen, rng) for i, p in enumerate(plans)]
    head = pd.DataFrame({"subject_id": subject, "study_id": study, "file_name": study, "ecg_time": times,
                         "path": paths})
    order = np.lexsort((times, subject))
    head.iloc[order].to_csv(root / "record_list.csv", index=False)
    fields = pd.DataFrame([r + [""] * (datasets.N_REPORT_FIELDS - len(r)) for r in reports],
                          columns=list(datasets.REPORT_COLUMNS))
    table = pd.concat([head[["subject_id", "study_id"]],
                       pd.DataFrame({"cart_id": rng.integers(6000, 6030, n), "ecg_time": times}), fields,
                       mimic_measurements(plans, knobs, rng)], axis=1)
    table.iloc[order].to_csv(root / "machine_measurements.csv", index=False)
    return _truth("mimic", [str(s) for s in study], ["pretrain"] * n, plans, defects, unseen)


# --------------------------------------------------------------------------- PTB-XL


def _heart_axis(axis: float) -> str:
    """PTB-XL ``heart_axis`` code from a frontal QRS axis."""
    return "LAD" if axis < -30 else "RAD" if axis > 90 else "MID"


def ptbxl_database(plans, knobs, folds, rng) -> pd.DataFrame:
    """``ptbxl_database.csv`` rows with the real columns."""
    n = len(plans)
    ids = np.arange(1, n + 1)
    names = [f"{i // 1000 * 1000:05d}/{i:05d}" for i in ids]
    paced = ["ja, pacemaker" if "paced_rhythm" in p.concepts else np.nan for p in plans]
    beats = ["1ES" if {"premature_ventricular_complexes", "premature_atrial_complexes"} & set(p.concepts) else np.nan
             for p in plans]
    return pd.DataFrame({
        "ecg_id": ids, "patient_id": rng.choice(21_000, n, replace=False).astype(float) + 1.0,
        "age": rng.integers(18, 90, n).astype(float), "sex": rng.integers(0, 2, n),
        "height": np.nan, "weight": np.where(rng.random(n) < 0.5, rng.integers(50, 110, n), np.nan),
        "nurse": rng.integers(0, 12, n).astype(float), "site": rng.integers(0, 50, n).astype(float),
        "device": rng.choice(["CS-12   E", "AT-6 C", "AT-60    3", "CS100    3"], n),
        "recording_date": _timestamps(rng, n, 1984, 2001), "report": [ptbxl_report(p, rng) for p in plans],
        "scp_codes": [str(scp_codes(p)) for p in plans],
        "heart_axis": [_heart_axis(a) for a in knobs["qrs_axis_deg"]],
        "infarction_stadium1": np.nan, "infarction_stadium2": np.nan,
        "validated_by": rng.integers(0, 12, n).astype(float), "second_opinion": False,
        "initial_autogenerated_report": False, "validated_by_human": True,
        "baseline_drift": np.where(knobs["baseline_wander_mv"] > 0.1, ", I-AVF", None),
        "static_noise": np.where(knobs["mains_mv"] > 0.02, ", alles", None), "burst_noise": np.nan,
        "electrodes_problems": np.nan, "extra_beats": beats, "pacemaker": paced, "strat_fold": folds,
        "filename_lr": [f"records100/{x}_lr" for x in names], "filename_hr": [f"records500/{x}_hr" for x in names],
    })


def scp_statements_table() -> pd.DataFrame:
    """``scp_statements.csv`` from the catalogue's statement facts, with the real columns."""
    table = datasets.load_scp_statements()
    for column in ("diagnostic", "form", "rhythm"):
        table[column] = table[column].where(table[column] == 1)
    table["Statement Category"] = np.nan
    table["SCP-ECG Statement Description"] = table["description"]
    for column in ("AHA code", "aECG REFID", "CDISC Code", "DICOM Code"):
        table[column] = np.nan
    return table


def write_ptbxl(root: Path, plans, knobs, folds, defects, rng) -> pd.DataFrame:
    """PTB-XL layout: records500/NNNNN/NNNNN_hr WFDB-16, ptbxl_database.csv, scp_statements.csv."""
    database = ptbxl_database(plans, knobs, folds, rng)
    for start, batch in render_batches(knobs, rng):
        for k, signal in enumerate(batch):
            path = root / database["filename_hr"].iat[start + k]
            _write_record(formats.write_wfdb16, path.parent, path.name, signal, PTBXL_LEADS,
                          defects.get(start + k), rng, ".dat")
    database.to_csv(root / "ptbxl_database.csv", index=False)
    scp_statements_table().to_csv(root / "scp_statements.csv")
    splits = [datasets.PTBXL_FOLD_SPLIT[int(f)] for f in folds]
    return _truth("ptbxl", [f"ptbxl/{i}" for i in database["ecg_id"]], splits, plans, defects, ())


# --------------------------------------------------------------------------- CinC form (CPSC2018, CSN)


def cinc_comments(plan: Plan, dataset: str, age: int, sex: str) -> list[str]:
    """CinC header comments: Age, Sex, Dx (SNOMED), Rx/Hx/Sx."""
    return [f"Age: {age}", f"Sex: {sex}", f"Dx: {','.join(dx_codes(plan, dataset))}",
            "Rx: Unknown", "Hx: Unknown", "Sx: Unknown"]


def _mat_first_token(hea: Path) -> None:
    """Rewrite a header's first token as ``NAME.mat`` (a quirk of real CinC files)."""
    lines = hea.read_text().split("\n")
    lines[0] = lines[0].replace(hea.stem, f"{hea.stem}.mat", 1)
    hea.write_text("\n".join(lines))


def write_cinc(root: Path, dataset: str, plans, knobs, paths, lengths, defects, quirks, rng) -> None:
    """CinC-form records (``.hea`` + v4 ``.mat``) at ``root/paths[i]``, cropped to ``lengths[i]``."""
    ages = rng.integers(18, 90, len(plans))
    sexes = rng.choice(["Male", "Female"], len(plans))
    for start, batch in render_batches(knobs, rng, n_samples=int(max(lengths))):
        for k, signal in enumerate(batch):
            i = start + k
            path = root / paths[i]
            comments = cinc_comments(plans[i], dataset, int(ages[i]), str(sexes[i]))
            _write_record(formats.write_cinc_mat, path.parent, path.name, signal[:, : lengths[i]],
                          CANONICAL_LEADS, defects.get(i), rng, ".mat", comments=comments)
            if i in quirks:
                _mat_first_token(path.parent / f"{path.name}.hea")


def cinc_split_groups(dataset: str, names: list[str]) -> np.ndarray:
    """The benchmark split each record will get from :func:`supreme_ecg.datasets.random_split`."""
    split = datasets.random_split([f"{dataset}/{name}" for name in names])
    return np.array([split[f"{dataset}/{name}"] for name in names])


def csn_paths(n: int) -> list[str]:
    """``WFDBRecords/NN/NNN/JSNNNNN`` (100 records per sub-folder, 10 sub-folders per folder)."""
    out = []
    for i in range(n):
        sub = i // 100
        top = sub // 10 + 1
        out.append(f"WFDBRecords/{top:02d}/{top:02d}{sub % 10}/JS{i + 1:05d}")
    return out


def condition_names_table() -> pd.DataFrame:
    """``ConditionNames_SNOMED-CT.csv`` from the CSN task classes plus SB."""
    rows = [(c.name, c.description, c.snomed[0]) for c in catalogue.task_classes("csn")]
    rows.append(("SB", "sinus bradycardia", "426177001"))
    return pd.DataFrame(rows, columns=["Acronym Name", "Full Name", "Snomed_CT"])


# --------------------------------------------------------------------------- truth and driver


def _truth(dataset, record_ids, splits, plans, defects, unseen) -> pd.DataFrame:
    """demo_truth rows of one set."""
    return pd.DataFrame({
        "record_id": record_ids, "dataset": dataset, "split": splits,
        "concepts": [list(p.concepts) for p in plans],
        "hedged": [sorted(p.hedged) for p in plans],
        "variants": [sorted(p.variants) for p in plans],
        "unnamed": [[c for c in p.concepts if c in unseen] for p in plans],
        "defect": [defects[i][0] if i in defects else None for i in range(len(plans))],
        "defect_lead": [defects[i][1] if i in defects else None for i in range(len(plans))],
    })


def _check_unseen(unseen) -> tuple[str, ...]:
    """Validate the unseen concept ids (renderable, not a sinus rhythm or normal ECG)."""
    unseen = tuple(unseen)
    bad = [c for c in unseen if c not in renderable() or c in ("sinus_rhythm", "normal_ecg")]
    if bad:
        raise ValueError(f"unseen_concepts must be renderable concepts, got {bad}")
    return unseen


def _n_defects(n: int, share: float, downstream: bool) -> int:
    """Defective records of a set: ``share`` of MIMIC, half that downstream; ≥ one per kind if any."""
    if share <= 0 or n == 0:
        return 0
    return min(n, max(len(DEFECT_KINDS), round(n * share / (2 if downstream else 1))))


def _fresh_dir(path: Path) -> Path:
    """Remove and recreate a set folder (no stale records from an earlier run)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _set_rngs(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per set, so each set depends only on the seed and its own size."""
    children = np.random.SeedSequence(seed).spawn(4)
    return {name: np.random.default_rng(s) for name, s in zip(("mimic", "ptbxl", "cpsc2018", "csn"), children)}


def _generate_mimic(root, n, rng, unseen, defect_share) -> pd.DataFrame:
    """Plan, render and write the pre-training set."""
    plans = plan_conditions(n, rng, MIMIC_MIN_POSITIVES, mimic=True)
    add_variants(plans, rng)
    knobs, poor = sample_knobs(plans, rng)
    defects = pick_defects(plans, _n_defects(n, defect_share, False), rng)
    return write_mimic(_fresh_dir(root / SET_FOLDERS["mimic"]), plans, knobs, poor, defects, unseen, rng)


def cinc_paths(dataset: str, n: int) -> list[str]:
    """Record paths of a CinC-form set under its folder (CPSC2018 ``g1/A0001``, CSN ``WFDBRecords``)."""
    if dataset == "cpsc2018":
        return [f"training/cpsc_2018/g{i // 1000 + 1}/A{i + 1:04d}" for i in range(n)]
    return csn_paths(n)


def plan_downstream(dataset: str, n: int, rng: np.random.Generator) -> tuple[list[Plan], np.ndarray, np.ndarray]:
    """(plans, groups, splits) of a downstream set: its benchmark split (PTB-XL: 10 folds, fold 10
    test; CinC: :func:`cinc_split_groups`) and quotas such that every renderable concept has
    ``MIN_TEST_POSITIVES`` test positives once stratified (when ``n`` leaves room for the quotas)."""
    if dataset == "ptbxl":
        groups = rng.permutation(np.arange(n) % 10 + 1)
        splits = np.array([datasets.PTBXL_FOLD_SPLIT[int(f)] for f in groups])
        test_group = next(f for f, split in datasets.PTBXL_FOLD_SPLIT.items() if split == "test")
    else:
        groups = splits = cinc_split_groups(dataset, [p.rsplit("/", 1)[1] for p in cinc_paths(dataset, n)])
        test_group = "test"
    plans = plan_conditions(n, rng, min_positives_for_test(splits == "test"))
    return stratify(plans, groups, rng, test_group), groups, splits


def _generate_ptbxl(root, n, rng, defect_share) -> pd.DataFrame:
    """Plan (stratified over 10 folds), render and write PTB-XL."""
    plans, folds, _ = plan_downstream("ptbxl", n, rng)
    knobs, _ = sample_knobs(plans, rng)
    defects = pick_defects(plans, _n_defects(n, defect_share, True), rng)
    return write_ptbxl(_fresh_dir(root / SET_FOLDERS["ptbxl"]), plans, knobs, folds, defects, rng)


def _generate_cinc(root, dataset, n, rng, defect_share) -> pd.DataFrame:
    """Plan (stratified over the benchmark split), render and write CPSC2018 or CSN."""
    plans, _, splits = plan_downstream(dataset, n, rng)
    paths = cinc_paths(dataset, n)
    lengths = rng.integers(6 * FS, 20 * FS + 1, n) if dataset == "cpsc2018" else np.full(n, 10 * FS)
    knobs, _ = sample_knobs(plans, rng)
    defects = pick_defects(plans, _n_defects(n, defect_share, True), rng)
    n_quirks = min(n, max(2, round(0.02 * n))) if dataset == "cpsc2018" else 0
    quirks = set(rng.choice(n, size=n_quirks, replace=False).tolist())
    set_root = _fresh_dir(root / SET_FOLDERS[dataset])
    write_cinc(set_root, dataset, plans, knobs, paths, lengths, defects, quirks, rng)
    if dataset == "csn":
        condition_names_table().to_csv(set_root / "ConditionNames_SNOMED-CT.csv", index=False)
    names = [p.rsplit("/", 1)[1] for p in paths]
    return _truth(dataset, [f"{dataset}/{name}" for name in names], list(splits), plans, defects, ())


def generate_demo(out_root, seed: int, n_pretrain: int = 2000, n_ptbxl: int = 1200, n_cpsc: int = 600,
                  n_csn: int = 600, unseen_concepts=UNSEEN_DEFAULT, defect_share: float = 0.02) -> dict:
    """Write the four demo sets and ``demo_truth.parquet`` under ``out_root``; returns counts."""
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    unseen = _check_unseen(unseen_concepts)
    rngs = _set_rngs(seed)
    truth = pd.concat([
        _generate_mimic(root, n_pretrain, rngs["mimic"], unseen, defect_share),
        _generate_ptbxl(root, n_ptbxl, rngs["ptbxl"], defect_share),
        _generate_cinc(root, "cpsc2018", n_cpsc, rngs["cpsc2018"], defect_share),
        _generate_cinc(root, "csn", n_csn, rngs["csn"], defect_share),
    ], ignore_index=True)
    truth.to_parquet(root / "demo_truth.parquet", index=False)
    defects = truth["defect"].dropna()
    return {
        "records": truth.groupby("dataset", sort=False).size().to_dict(),
        "defects": {f"{d}/{k}": int(v) for (d, k), v in defects.groupby([truth["dataset"], defects]).size().items()},
        "unseen_concepts": list(unseen),
    }
