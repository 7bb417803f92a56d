"""MERL-compatible labels (the released split CSVs as they are) and their disagreement with exact labels.

The real-data tests read the shared fixtures and MERL CSVs in place (``settings.fixtures_dir()``,
``settings.shared_reference_dir()``) and skip with the reason when they are absent; the
hand-made tests always run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from supreme_ecg import catalogue, datasets
from supreme_ecg.settings import fixtures_dir, shared_reference_dir

FIXTURES = fixtures_dir()
MERL_DIR = shared_reference_dir() / "merl_splits"
PTBXL = FIXTURES / "ptbxl"
CINC = FIXTURES / "cinc2020"
PTBXL_TASKS = ("ptbxl_super", "ptbxl_sub", "ptbxl_form", "ptbxl_rhythm")
needs_merl = pytest.mark.skipif(not MERL_DIR.is_dir(), reason=f"MERL split CSVs absent at {MERL_DIR}")
needs_ptbxl = pytest.mark.skipif(
    not (PTBXL / "ptbxl_database.csv").is_file(), reason=f"PTB-XL fixtures absent at {PTBXL} (set SUPREME_FIXTURES)")


def needs_cinc(sub: str):
    folder = CINC / sub
    return pytest.mark.skipif(not folder.is_dir(), reason=f"CinC fixtures absent at {folder} (set SUPREME_FIXTURES)")


def _released(task: str) -> pd.DataFrame:
    """The task's three CSVs read independently of the code under test: key, split, raw columns."""
    frames = []
    for split in datasets.MERL_SPLITS:
        csv = pd.read_csv(MERL_DIR / f"{datasets.MERL_CSV_STEMS[task]}_{split}.csv")
        dataset = catalogue.task_dataset(task)
        if dataset == "ptbxl":
            key = "ptbxl/" + csv["ecg_id"].astype(int).astype(str)
        elif dataset == "cpsc2018":
            key = "cpsc2018/" + csv["filename"].astype(str)
        else:  # /chapman/WFDBRecords/18/186/JS18048.mat → csn/JS18048
            key = "csn/" + csv["ecg_path"].str.extract(r"/([^/]+)\.mat$", expand=False)
        frames.append(csv.assign(record_id=key.to_numpy(), split=split))
    return pd.concat(frames, ignore_index=True).set_index("record_id")


def _assert_reproduces_csv(task: str, manifest: pd.DataFrame) -> pd.DataFrame:
    """merl_compat labels equal the released CSV cells, by class name, for every manifest record in a CSV."""
    labels = datasets.merl_compat_labels(task, MERL_DIR, manifest)
    names = [c.name for c in catalogue.task_classes(task)]
    assert list(labels.columns) == ["record_id", "split", *names]
    assert all(labels[n].dtype == np.int8 for n in names)
    released = _released(task)
    in_csv = manifest["record_id"].isin(released.index)
    assert labels["record_id"].tolist() == manifest.loc[in_csv, "record_id"].tolist()  # manifest order
    assert labels.attrs["n_dropped"] == int((~in_csv).sum())
    assert labels.attrs["n_csv_unmatched"] == len(released) - len(labels)
    expected = released.loc[labels["record_id"]]
    assert labels["split"].tolist() == expected["split"].tolist()
    assert np.array_equal(labels[names].to_numpy(), expected[names].to_numpy())
    return labels


# --------------------------------------------------------------------------- hand-made CSVs


def _write_csvs(tmp_path, task, rows_by_split, key_column, extra_columns=()):
    """Write ``{stem}_{split}.csv`` with the task's class columns in reversed order (selection by name)."""
    names = [c.name for c in catalogue.task_classes(task)][::-1]
    for split in datasets.MERL_SPLITS:
        rows = rows_by_split.get(split, [])
        frame = pd.DataFrame({key_column: [key for key, _ in rows], **dict.fromkeys(extra_columns, "x")})
        for name in names:
            frame[name] = [int(name in positives) for _, positives in rows]
        frame.to_csv(tmp_path / f"{datasets.MERL_CSV_STEMS[task]}_{split}.csv", index=False)


def test_merl_compat_selects_columns_by_name_and_joins_on_file_stem(tmp_path):
    _write_csvs(tmp_path, "csn", {
        "train": [("/chapman/WFDBRecords/01/010/JS00001.mat", {"AF", "AFIB"})],
        "test": [("/chapman/WFDBRecords/01/010/JS00002.mat", {"SR"}), ("/chapman/WFDBRecords/99/999/JS99999.mat", {"ST"})],
    }, "ecg_path", extra_columns=("age", "diagnose"))
    manifest = pd.DataFrame({
        "record_id": ["csn/JS00002", "csn/JS00001", "csn/JS00003"],
        "source_path": ["ecg-arrhythmia/WFDBRecords/01/010/JS00002", "ecg-arrhythmia/WFDBRecords/01/010/JS00001",
                        "ecg-arrhythmia/WFDBRecords/01/010/JS00003"],
        "dx_codes": [["426783006"], ["164889003"], []],
    })
    labels = datasets.merl_compat_labels("csn", tmp_path, manifest)
    assert labels["record_id"].tolist() == ["csn/JS00002", "csn/JS00001"]
    assert labels["split"].tolist() == ["test", "train"]
    assert list(labels.columns)[2:] == [c.name for c in catalogue.task_classes("csn")]
    one = labels.set_index("record_id")
    assert one.loc["csn/JS00001", "AF"] == 1 and one.loc["csn/JS00001", "AFIB"] == 1 and one.loc["csn/JS00002", "SR"] == 1
    assert one.drop(columns="split").to_numpy().sum() == 3
    assert labels.attrs == {"n_dropped": 1, "n_csv_unmatched": 1}


def test_merl_compat_ptbxl_joins_on_ecg_id_column_or_record_id(tmp_path):
    _write_csvs(tmp_path, "ptbxl_super", {"train": [(1, {"NORM"})], "val": [(8, {"MI", "STTC"})]}, "ecg_id")
    with_column = pd.DataFrame({"record_id": ["ptbxl/8", "ptbxl/1", "ptbxl/2"], "ecg_id": [8, 1, 2]})
    without = with_column.drop(columns="ecg_id")
    for manifest in (with_column, without):
        labels = datasets.merl_compat_labels("ptbxl_super", tmp_path, manifest)
        assert labels["record_id"].tolist() == ["ptbxl/8", "ptbxl/1"] and labels["split"].tolist() == ["val", "train"]
        assert labels[["MI", "STTC", "NORM"]].to_numpy().tolist() == [[1, 1, 0], [0, 0, 1]]
        assert labels.attrs["n_dropped"] == 1


def test_merl_csv_problems_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        datasets.merl_compat_labels("cpsc2018", tmp_path, pd.DataFrame({"record_id": [], "source_path": []}))
    _write_csvs(tmp_path, "cpsc2018", {"train": [("A0001", {"NORM"})], "test": [("A0001", {"AFIB"})]}, "filename")
    with pytest.raises(ValueError, match="more than one"):
        datasets.read_merl_splits("cpsc2018", tmp_path)
    csv = pd.read_csv(tmp_path / "icbeb_test.csv").drop(columns="STE")
    csv.to_csv(tmp_path / "icbeb_test.csv", index=False)
    with pytest.raises(ValueError, match="STE"):
        datasets.read_merl_splits("cpsc2018", tmp_path)


def test_label_disagreement_counts():
    exact = pd.DataFrame({"record_id": ["a", "b", "c", "d"], "split": "test",
                          "AF": np.array([0, 1, 0, 0], np.int8), "AFIB": np.array([1, 0, 1, 0], np.int8)})
    merl = pd.DataFrame({"record_id": ["a", "b", "c", "e"], "split": "train",
                         "AF": np.array([1, 1, 0, 1], np.int8), "AFIB": np.array([1, 0, 0, 1], np.int8)})
    report = datasets.label_disagreement(exact, merl).set_index("class")
    assert report.loc["AF"].tolist() == [3, 1, 0, 1]  # compared, both, exact only, merl only
    assert report.loc["AFIB"].tolist() == [3, 1, 1, 0]
    with pytest.raises(ValueError):
        datasets.label_disagreement(pd.concat([exact, exact]), merl)


def test_task_labels_for_switches_to_merl_compat(tmp_path):
    _write_csvs(tmp_path, "cpsc2018", {"val": [("A0002", {"PAC", "STD"})]}, "filename")
    manifest = pd.DataFrame({"record_id": ["cpsc2018/A0001", "cpsc2018/A0002"], "dataset": "cpsc2018",
                             "source_path": ["cpsc2018/A0001", "cpsc2018/A0002"], "split": ["train", "test"],
                             "dx_codes": [["164889003"], ["284470004"]]})
    path = tmp_path / "manifest.parquet"
    manifest.to_parquet(path)
    exact, dropped = datasets.task_labels_for("cpsc2018", path, tmp_path)
    assert dropped == 0 and exact["split"].tolist() == ["train", "test"] and exact["AFIB"].tolist() == [1, 0]
    merl, dropped = datasets.task_labels_for("cpsc2018", path, tmp_path, merl_splits_dir=tmp_path)
    assert dropped == 1 and merl["record_id"].tolist() == ["cpsc2018/A0002"] and merl["split"].tolist() == ["val"]
    assert merl[["PAC", "STD", "AFIB"]].to_numpy().tolist() == [[1, 1, 0]]


# --------------------------------------------------------------------------- real fixtures and released CSVs


@pytest.mark.fixtures
@needs_merl
@needs_ptbxl
@pytest.mark.parametrize("task", PTBXL_TASKS)
def test_merl_compat_reproduces_released_ptbxl_csvs(task):
    manifest = datasets.index_ptbxl(PTBXL)
    labels = _assert_reproduces_csv(task, manifest)
    assert len(labels) > 0
    # the released PTB-XL splits are strat_fold 1-8 / 9 / 10, like the exact labels
    assert labels["split"].tolist() == manifest.set_index("record_id").loc[labels["record_id"], "split"].tolist()
    if task in ("ptbxl_super", "ptbxl_sub"):
        assert labels.attrs["n_dropped"] == 23  # ecg_id 1-500 without a diagnostic label (see datasets/labels.py)
    exact = datasets.task_labels(manifest, task, datasets.load_scp_statements(PTBXL / "scp_statements.csv"))
    report = datasets.label_disagreement(exact, labels)
    assert (report["n_records_compared"] == len(labels)).all()
    print(f"\n{task}: {len(labels)} records, exact vs merl_compat disagreements:",
          int(report["n_exact_only"].sum() + report["n_merl_only"].sum()))


@pytest.mark.fixtures
@needs_merl
@needs_cinc("cpsc2018")
def test_merl_compat_reproduces_released_icbeb_csvs():
    manifest = datasets.index_cinc(CINC / "cpsc2018", "cpsc2018")
    labels = _assert_reproduces_csv("cpsc2018", manifest)
    names = set(labels["record_id"].str.split("/").str[-1])
    assert names and all(name.startswith("A") for name in names)  # Q* (CPSC-Extra) are not in the benchmark
    assert labels.attrs["n_dropped"] == (~manifest["record_id"].str.contains("/A")).sum()


@pytest.mark.fixtures
@needs_merl
@needs_cinc("chapman_ningbo")
def test_merl_compat_reproduces_released_chapman_csvs_and_reports_the_substring_defect():
    manifest = datasets.index_cinc(CINC / "chapman_ningbo", "csn")
    merl = _assert_reproduces_csv("csn", manifest)
    assert len(merl) > 0
    exact = datasets.task_labels(manifest, "csn")
    report = datasets.label_disagreement(exact, merl).set_index("class")
    both = exact.set_index("record_id").loc[merl["record_id"]]
    merl_by_id = merl.set_index("record_id")
    names = [c.name for c in catalogue.task_classes("csn")]
    # the report's counts add up to each table's positives on the compared records
    assert (report["n_records_compared"] == len(merl)).all()
    assert (report["n_both"] + report["n_exact_only"]).tolist() == both[names].sum().tolist()
    assert (report["n_both"] + report["n_merl_only"]).tolist() == merl_by_id[names].sum().tolist()
    # MERL's substring matching: AFIB (164889003) without flutter (164890007) also sets "AF"
    codes = manifest.set_index("record_id").loc[merl["record_id"], "dx_codes"]
    afib_only = [rid for rid, dx in codes.items() if "164889003" in dx and "164890007" not in dx]
    if not afib_only:
        pytest.skip("no fixture record in the chapman CSVs with AFIB but not flutter")
    for rid in afib_only:
        assert merl_by_id.loc[rid, "AF"] == 1 and both.loc[rid, "AF"] == 0 and both.loc[rid, "AFIB"] == 1
    assert report.loc["AF", "n_merl_only"] >= len(afib_only)
