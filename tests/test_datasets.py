"""Indexers and task labels: on hand-made tables and on the real fixtures (skipped without them)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from supreme_ecg import catalogue, datasets
from supreme_ecg.settings import fixtures_dir, shared_reference_dir

FIXTURES = fixtures_dir()
REFERENCE = shared_reference_dir()
needs_ptbxl = pytest.mark.skipif(
    not (FIXTURES / "ptbxl" / "ptbxl_database.csv").is_file(),
    reason=f"PTB-XL fixtures absent at {FIXTURES / 'ptbxl'} (set SUPREME_FIXTURES)",
)
needs_cinc = pytest.mark.skipif(
    not (FIXTURES / "cinc2020" / "cpsc2018").is_dir(),
    reason=f"CinC 2020 fixtures absent at {FIXTURES / 'cinc2020'} (set SUPREME_FIXTURES)",
)
needs_merl = pytest.mark.skipif(
    not (REFERENCE / "merl_splits").is_dir(), reason=f"MERL split CSVs absent at {REFERENCE / 'merl_splits'}"
)
MERL_CSV = {"ptbxl_super": "ptbxl_super_class", "ptbxl_sub": "ptbxl_sub_class",
            "ptbxl_form": "ptbxl_form", "ptbxl_rhythm": "ptbxl_rhythm"}


# --------------------------------------------------------------------------- hand-made tables


def _write_mimic_tables(root):
    """Three records; the third has no machine_measurements row."""
    pd.DataFrame({
        "subject_id": [10000032, 10000032, 10000117],
        "study_id": [40689238, 44458630, 45000000],
        "file_name": [40689238, 44458630, 45000000],
        "ecg_time": ["2180-07-23 08:44:00"] * 3,
        "path": ["files/p1000/p10000032/s40689238/40689238", "files/p1000/p10000032/s44458630/44458630",
                 "files/p1000/p10000117/s45000000/45000000"],
    }).to_csv(root / "record_list.csv", index=False)
    reports = {f"report_{k}": [None, None] for k in range(18)}
    reports["report_0"] = ["*** Poor data quality, interpretation may be adversely affected", "Sinus rhythm"]
    reports["report_1"] = ["Sinus rhythm", "  "]
    reports["report_2"] = ["Borderline ECG", None]
    pd.DataFrame({"subject_id": [10000032, 10000032], "study_id": [40689238, 44458630], "cart_id": [6001, 6002],
                  "ecg_time": ["2180-07-23 08:44:00"] * 2, **reports, "rr_interval": [800, 900]}
                 ).to_csv(root / "machine_measurements.csv", index=False)


def test_index_mimic_cleans_reports_and_keeps_records_without_measurements(tmp_path):
    _write_mimic_tables(tmp_path)
    m = datasets.index_mimic(tmp_path)
    assert list(m["record_id"]) == ["40689238", "44458630", "45000000"]
    assert (m["dataset"] == "mimic").all() and (m["split"] == "pretrain").all()
    assert m["source_path"].iloc[0] == "files/p1000/p10000032/s40689238/40689238"
    first = "poor data quality, interpretation may be adversely affected. sinus rhythm. borderline ecg"
    assert m["report"].tolist()[0] == first
    assert m["report"].tolist()[1:] == ["sinus rhythm", ""]
    assert m["n_report_fields"].tolist() == [3, 1, 0]
    assert m["patient_id"].tolist() == [10000032, 10000032, 10000117]


def test_parse_scp_codes_accepts_python_literal_json_and_dict():
    assert datasets.parse_scp_codes("{'NORM': 100.0, 'SR': 0.0}") == {"NORM": 100.0, "SR": 0.0}
    assert datasets.parse_scp_codes('{"NST_": 50}') == {"NST_": 50.0}
    assert datasets.parse_scp_codes({"AFIB": 1}) == {"AFIB": 1.0}
    assert datasets.parse_scp_codes("") == {} and datasets.parse_scp_codes(None) == {}


def _ptbxl_manifest(codes: list[dict]) -> pd.DataFrame:
    return pd.DataFrame({"record_id": [f"ptbxl/{i + 1}" for i in range(len(codes))], "split": "test",
                         "scp_codes": [json.dumps(c) for c in codes]})


def test_ptbxl_labels_strip_underscores_and_drop_unlabelled():
    manifest = _ptbxl_manifest([{"1AVB": 100.0, "SR": 0.0}, {"NST_": 100.0}, {"SR": 0.0}, {"STD_": 0.0}])
    sub, dropped = datasets.task_labels_and_dropped(manifest, "ptbxl_sub")
    assert dropped == 2 and sub["record_id"].tolist() == ["ptbxl/1", "ptbxl/2"]
    assert sub.loc[0, "AVB"] == 1 and sub.loc[1, "NST"] == 1 and sub.loc[0, "NST"] == 0
    assert sub["AVB"].dtype == np.int8
    form = datasets.task_labels(manifest, "ptbxl_form")
    assert form.attrs["n_dropped"] == 2
    assert form.set_index("record_id").loc["ptbxl/2", "NST"] == 1  # NST_ (form) → class NST
    assert form.set_index("record_id").loc["ptbxl/4", "STD"] == 1  # likelihood 0 still counts
    rhythm = datasets.task_labels(manifest, "ptbxl_rhythm")
    assert rhythm["record_id"].tolist() == ["ptbxl/1", "ptbxl/3"] and (rhythm["SR"] == 1).all()


def test_task_label_columns_follow_the_catalogue():
    for task in catalogue.task_names():
        if catalogue.task_dataset(task) == "ptbxl":
            manifest = _ptbxl_manifest([{"NORM": 100.0, "SR": 0.0, "PVC": 0.0}])
        else:
            manifest = pd.DataFrame({"record_id": ["x/1"], "split": ["train"], "dx_codes": [["426783006"]]})
        labels = datasets.task_labels(manifest, task)
        assert list(labels.columns) == ["record_id", "split"] + [c.name for c in catalogue.task_classes(task)]


def test_csn_snomed_match_is_exact_not_substring():
    manifest = pd.DataFrame({"record_id": ["csn/A", "csn/B", "csn/C"], "split": "test",
                             "dx_codes": [["164889003"], "164890007,59118001", json.dumps(["426177001"])]})
    labels = datasets.task_labels(manifest, "csn").set_index("record_id")
    assert labels.loc["csn/A", "AFIB"] == 1 and labels.loc["csn/A", "AF"] == 0
    assert labels.loc["csn/B", "AF"] == 1 and labels.loc["csn/B", "AFIB"] == 0 and labels.loc["csn/B", "RBBB"] == 1
    assert labels.loc["csn/C"].drop("split").sum() == 0  # sinus bradycardia is no CSN class
    assert labels.attrs["n_dropped"] == 0  # CSN keeps unlabelled records


def test_random_split_is_the_benchmark_rule():
    from sklearn.model_selection import train_test_split

    ids = [f"cpsc2018/A{i:04d}" for i in range(100, 0, -1)]
    split = datasets.random_split(ids)
    train, test = train_test_split(sorted(ids), test_size=0.2, random_state=42)
    train, val = train_test_split(train, test_size=0.1, random_state=42)
    assert {i for i, s in split.items() if s == "test"} == set(test)
    assert {i for i, s in split.items() if s == "val"} == set(val)
    assert sum(s == "train" for s in split.values()) == 72
    assert datasets.random_split(ids[:3]) == dict.fromkeys(ids[:3], "train")


# --------------------------------------------------------------------------- real fixtures


@needs_ptbxl
def test_index_ptbxl_on_fixtures():
    m = datasets.index_ptbxl(FIXTURES / "ptbxl")
    assert len(m) == 500 and m["record_id"].iloc[0] == "ptbxl/1"
    expected = m["strat_fold"].map(lambda f: "train" if f <= 8 else "val" if f == 9 else "test")
    assert (m["split"] == expected).all()
    assert m["source_path"].iloc[0] == "records500/00000/00001_hr"
    assert (FIXTURES / "ptbxl" / (m["source_path"].iloc[0] + ".hea")).is_file()
    assert json.loads(m["scp_codes"].iloc[0]) == {"NORM": 100.0, "LVOLT": 0.0, "SR": 0.0}
    low = datasets.index_ptbxl(FIXTURES / "ptbxl", sampling_rate=100)
    assert low["source_path"].iloc[0] == "records100/00000/00001_lr"


@needs_ptbxl
@needs_merl
@pytest.mark.parametrize("task", list(MERL_CSV))
def test_ptbxl_labels_agree_with_merl_csvs(task):
    manifest = datasets.index_ptbxl(FIXTURES / "ptbxl")
    statements = datasets.load_scp_statements(FIXTURES / "ptbxl" / "scp_statements.csv")
    ours = datasets.task_labels(manifest, task, statements)
    ours.index = ours["record_id"].str.split("/").str[1].astype(int)
    merl = pd.concat([pd.read_csv(REFERENCE / "merl_splits" / f"{MERL_CSV[task]}_{s}.csv").assign(split=s)
                      for s in ("train", "val", "test")]).set_index("ecg_id")
    common = merl.index.intersection(ours.index)
    assert len(common) > 100
    assert set(merl.index.intersection(manifest["record_id"].str[6:].astype(int))) <= set(ours.index)
    names = [c.name for c in catalogue.task_classes(task)]
    agreement = (ours.loc[common, names].to_numpy() == merl.loc[common, names].to_numpy()).all(axis=1).mean()
    print(f"{task}: {len(common)} records in both, label agreement {agreement:.3f}")
    assert agreement == 1.0
    assert (ours.loc[common, "split"] == merl.loc[common, "split"]).all()


@needs_cinc
def test_index_cinc_reads_snomed_codes_and_cpsc_labels():
    root = FIXTURES / "cinc2020" / "cpsc2018"
    m = datasets.index_cinc(root, "cpsc2018")
    assert len(m) == len(list(root.glob("*.hea")))
    row = m.set_index("record_id").loc["cpsc2018/A0001"]
    assert list(row["dx_codes"]) == ["59118001"] and row["source_path"] == "A0001"
    assert row["age"] == 74 and row["sex"] == "M"
    assert set(m["split"]) <= {"train", "val", "test"}
    labels = datasets.task_labels(m, "cpsc2018").set_index("record_id")
    assert labels.loc["cpsc2018/A0001", "CRBBB"] == 1
    assert labels.loc["cpsc2018/A0001"].drop(["split", "CRBBB"]).sum() == 0


@needs_cinc
def test_csn_afib_fixture_does_not_fire_atrial_flutter():
    m = datasets.index_cinc(FIXTURES / "cinc2020" / "chapman_ningbo", "csn")
    labels = datasets.task_labels(m, "csn").set_index("record_id")
    assert "164889003" in list(m.set_index("record_id").loc["csn/JS00001", "dx_codes"])
    assert labels.loc["csn/JS00001", "AFIB"] == 1 and labels.loc["csn/JS00001", "AF"] == 0


@needs_cinc
def test_index_dataset_paths_are_relative_to_the_data_root(tmp_path):
    (tmp_path / "cpsc2018").symlink_to(FIXTURES / "cinc2020" / "cpsc2018", target_is_directory=True)
    m = datasets.index_dataset("cpsc2018", tmp_path)
    assert m["source_path"].iloc[0] == "cpsc2018/A0001"
    assert (tmp_path / (m["source_path"].iloc[0] + ".hea")).is_file()


# --------------------------------------------------------------------------- original CPSC2018 release


def _write_original_release(root, names=None):
    """The original CPSC2018 release rebuilt from the real CinC fixtures: one struct ``ECG`` ``.mat``
    per record (the CinC signal in mV, sex and age) and ``REFERENCE.csv`` with the 1–9 codes of its
    classes. The release holds the ``A`` records only (the ``Q`` ones are CPSC-Extra). Returns the
    CinC-form manifest of the records written."""
    import scipy.io

    from supreme_ecg import formats

    cinc_root = FIXTURES / "cinc2020" / "cpsc2018"
    cinc = datasets.index_cinc(cinc_root, "cpsc2018")
    stems = cinc["record_id"].str.split("/").str[1]
    cinc = cinc[stems.isin(names) if names is not None else stems.str.startswith("A")].reset_index(drop=True)
    cinc["split"] = cinc["record_id"].map(datasets.random_split(cinc["record_id"]))  # of these records
    labels = datasets.task_labels(cinc, "cpsc2018").set_index("record_id")
    number = {name: k for k, name in datasets.CPSC2018_REFERENCE_CLASSES.items()}
    root.mkdir(parents=True)
    rows = []
    for row in cinc.itertuples():
        name = row.record_id.split("/")[1]
        record = formats.read_record(cinc_root / row.source_path)
        scipy.io.savemat(str(root / f"{name}.mat"), {"ECG": {
            "sex": {"M": "Male", "F": "Female"}[row.sex], "age": float(row.age),
            "data": record.signal.astype(np.float64)}})
        present = [number[c] for c in labels.columns[1:] if labels.at[row.record_id, c]]
        rows.append({"Recording": name, **{col: (present[k] if k < len(present) else None)
                                           for k, col in enumerate(["First_label", "Second_label", "Third_label"])}})
    pd.DataFrame(rows).to_csv(root / datasets.CPSC2018_REFERENCE, index=False)
    return cinc


@needs_cinc
def test_original_cpsc2018_release_indexes_like_the_cinc_copy(tmp_path):
    cinc = _write_original_release(tmp_path / "cpsc2018")
    assert datasets.is_cpsc2018_original(tmp_path / "cpsc2018")
    assert not datasets.is_cpsc2018_original(FIXTURES / "cinc2020" / "cpsc2018")
    original = datasets.index_dataset("cpsc2018", tmp_path)
    assert list(original["record_id"]) == sorted(cinc["record_id"])
    assert original["source_path"].iloc[0] == "cpsc2018/A0001.mat" and original["labelled"].all()
    assert len(original) >= 10 and original["dx_codes"].map(len).min() >= 1
    ours = datasets.task_labels(original, "cpsc2018").set_index("record_id").sort_index()
    theirs = datasets.task_labels(cinc, "cpsc2018").set_index("record_id").sort_index()
    pd.testing.assert_frame_equal(ours, theirs)  # same classes and the same random split
    assert ours.drop(columns="split").to_numpy().sum(axis=1).min() == 1  # every record has a class


@needs_cinc
def test_original_cpsc2018_release_preprocesses_to_the_cinc_signal(tmp_path):
    from supreme_ecg import formats
    from supreme_ecg import preprocess as pp

    cinc = _write_original_release(tmp_path / "cpsc2018", names=["A0001", "A0002"])
    cfg = pp.PreprocessConfig()
    for row in cinc.itertuples():
        name = row.record_id.split("/")[1]
        struct = formats.read_record(tmp_path / "cpsc2018" / f"{name}.mat")
        assert struct.source_format == "cpsc2018_mat" and struct.sex == row.sex and struct.age == row.age
        ours, _ = pp.preprocess_record(struct, cfg)
        theirs, _ = pp.preprocess_record(formats.read_record(FIXTURES / "cinc2020" / "cpsc2018" / row.source_path), cfg)
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


@needs_cinc
def test_original_cpsc2018_release_accounts_for_strays_and_rejects_bad_codes(tmp_path):
    from supreme_ecg import preprocess as pp

    root = tmp_path / "cpsc2018"
    _write_original_release(root, names=["A0001", "A0002", "A0003"])
    (root / "A0002.mat").rename(root / "A9000.mat")  # a .mat without a row, a row without its .mat
    m = datasets.index_dataset("cpsc2018", tmp_path).set_index("record_id")
    assert list(m.index) == ["cpsc2018/A0001", "cpsc2018/A0002", "cpsc2018/A0003", "cpsc2018/A9000"]
    assert not m.at["cpsc2018/A9000", "labelled"] and list(m.at["cpsc2018/A9000", "dx_codes"]) == []
    m.reset_index().to_parquet(tmp_path / "manifest.parquet")
    counts = pp.preprocess_shard(tmp_path / "manifest.parquet", 0, 1, pp.PreprocessConfig(), tmp_path / "out.parquet",
                                 tmp_path / "rejects.parquet", root=tmp_path)
    rejects = pd.read_parquet(tmp_path / "rejects.parquet")
    assert counts["n_written"] == 3 and list(rejects["record_id"]) == ["cpsc2018/A0002"]
    assert list(rejects["reason"]) == ["missing_file"]
    labels, dropped = datasets.task_labels_and_dropped(m.reset_index(), "cpsc2018")
    assert dropped == 1 and "cpsc2018/A9000" not in set(labels["record_id"])
    reference = pd.read_csv(root / datasets.CPSC2018_REFERENCE)
    reference.loc[0, "Second_label"] = 10
    reference.to_csv(root / datasets.CPSC2018_REFERENCE, index=False)
    with pytest.raises(ValueError, match="A0001 has Second_label=10"):
        datasets.index_dataset("cpsc2018", tmp_path)


# --------------------------------------------------------------------------- any corpus pre-trains; user tasks


def _ptbxl_like(folds) -> pd.DataFrame:
    return pd.DataFrame({"record_id": [f"ptbxl/{i}" for i in range(len(folds))], "strat_fold": folds,
                         "split": "x", "report": "sinusrhythmus"})


def test_ptbxl_corpus_pretrains_on_the_chosen_folds_only():
    marked = datasets.mark_pretraining(_ptbxl_like([1, 8, 9, 10, 10]), "ptbxl", {"train": [1, 8], "val": [9]})
    assert marked["pretrain_split"].tolist() == ["train", "train", "val", "", ""]
    rows = datasets.pretraining_rows(marked)
    assert rows["record_id"].tolist() == ["ptbxl/0", "ptbxl/1", "ptbxl/2"] and rows.attrs["n_left_out"] == 2
    default = datasets.mark_pretraining(_ptbxl_like(list(range(1, 11))), "ptbxl")
    assert default["pretrain_split"].tolist() == ["train"] * 8 + ["val", ""]
    with pytest.raises(ValueError, match="both"):
        datasets.mark_pretraining(_ptbxl_like([1]), "ptbxl", {"train": [1], "val": [1]})
    with pytest.raises(ValueError, match="not the pre-training corpus"):
        datasets.pretraining_rows(_ptbxl_like([1]))


def test_mimic_corpus_pretrains_on_every_record():
    marked = datasets.mark_pretraining(pd.DataFrame({"record_id": ["1", "2"], "split": "pretrain"}), "mimic")
    assert marked["pretrain_split"].tolist() == ["train", "train"]


def _write_user_corpus(tmp_path, suffix=".csv", **extra):
    (tmp_path / "ecg").mkdir()
    table = pd.DataFrame({"path": ["ecg/a1.hea", "ecg/b2", "/abs/c3.mat"],
                          "report": ["Sinus rhythm. Left axis deviation", "Atrial fibrillation", ""],
                          "patient_id": ["p1", "p1", "p2"], "sampling_rate": [500, 500, 250], **extra})
    path = tmp_path / f"corpus{suffix}"
    if suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        table.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_user_manifest_becomes_a_pretraining_corpus(tmp_path, suffix):
    path = _write_user_corpus(tmp_path, suffix)
    m = datasets.index_dataset("manifest", tmp_path / "unused", kind="manifest", manifest=str(path),
                               pretrain_corpus="manifest")
    assert m["record_id"].tolist() == ["manifest/ecg/a1", "manifest/ecg/b2", "manifest/abs/c3"]
    assert m["source_path"].tolist() == [str(tmp_path / "ecg/a1.hea"), str(tmp_path / "ecg/b2"), "/abs/c3.mat"]
    assert m["report"].tolist()[:2] == ["Sinus rhythm. Left axis deviation", "Atrial fibrillation"]
    assert m["patient_id"].tolist() == ["p1", "p1", "p2"] and m["source_fs"].tolist() == [500, 500, 250]
    assert (m["dataset"] == "manifest").all() and (m["pretrain_split"] == "train").all()


def test_user_manifest_split_column_chooses_validation_and_ids_are_kept(tmp_path):
    path = _write_user_corpus(tmp_path, record_id=["r1", "r2", "r3"], split=["train", "val", "test"])
    m = datasets.index_dataset("manifest", tmp_path, kind="manifest", manifest=str(path), pretrain_corpus="manifest")
    assert m["record_id"].tolist() == ["r1", "r2", "r3"]
    assert m["pretrain_split"].tolist() == ["train", "val", ""]


def test_user_manifest_names_what_it_lacks(tmp_path):
    pd.DataFrame({"path": ["a"], "text_of_report": ["x"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match=r"report: one of \['report'"):
        datasets.index_user_manifest(tmp_path / "m.csv", "manifest")
    pd.DataFrame({"path": ["a", "a"], "report": "x", "patient_id": 1}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(ValueError, match="repeat"):
        datasets.index_user_manifest(tmp_path / "d.csv", "manifest")


GEORGIA_LIKE = {"label_source": "snomed", "classes": [
    {"name": "AF", "description": "atrial fibrillation", "codes": ["164889003"]},
    {"name": "PAC", "description": "premature atrial contraction", "codes": ["284470004", 63593006]},
    {"name": "SR", "codes": ["426783006"]},
]}


def test_user_task_labels_from_snomed_codes_with_definition_in_the_parquet(tmp_path):
    manifest = pd.DataFrame({"record_id": ["g/1", "g/2", "g/3"], "split": ["train", "val", "test"],
                             "dx_codes": [["164889003", "63593006"], ["426783006"], []]})
    labels = datasets.user_task_labels(manifest, "mine", GEORGIA_LIKE)
    assert labels[["AF", "PAC", "SR"]].to_numpy().tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
    assert labels["AF"].dtype == np.int8 and labels.attrs["n_dropped"] == 0
    labels = datasets.apply_split_policy(labels, "all_test")
    assert (labels["split"] == "test").all()
    path = tmp_path / "mine.parquet"
    datasets.write_task_labels(labels, path, datasets.task_definition("mine", GEORGIA_LIKE), "all_test")
    classes = datasets.task_classes_from_labels(path)
    assert [(c.name, c.description, c.snomed) for c in classes] == [
        ("AF", "atrial fibrillation", ("164889003",)),
        ("PAC", "premature atrial contraction", ("284470004", "63593006")), ("SR", "SR", ("426783006",))]
    assert pd.read_parquet(path).equals(labels)


def test_user_task_labels_from_class_names_and_scp_codes():
    names = {"label_source": "name", "classes": [{"name": "AF", "codes": ["atrial fibrillation"]}, {"name": "NORM"}]}
    manifest = pd.DataFrame({"record_id": ["1", "2"], "split": "test", "codes": ["af;norm", "Atrial Fibrillation"]})
    m = datasets.user_task_labels(manifest.assign(codes=[datasets._code_list(v.replace(";", ",")) for v in
                                                         manifest["codes"]]), "t", names)
    assert m[["AF", "NORM"]].to_numpy().tolist() == [[1, 1], [1, 0]]
    scp = {"label_source": "scp", "classes": [{"name": "LVH", "codes": ["LVH"]}]}
    ptb = pd.DataFrame({"record_id": ["1", "2"], "split": "test", "scp_codes": ["{'LVH': 50.0}", "{'NORM': 100.0}"]})
    assert datasets.user_task_labels(ptb, "t", scp)["LVH"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="no codes"):
        datasets.user_task_classes("t", {"classes": [{"name": "X"}]})


def test_benchmark_task_definition_is_written_too(tmp_path):
    definition = datasets.task_definition("cpsc2018")
    assert definition["dataset"] == "cpsc2018" and not definition["user"]
    assert [c["name"] for c in definition["classes"]] == [c.name for c in catalogue.task_classes("cpsc2018")]


@needs_cinc
def test_index_dataset_reads_a_cinc_folder_of_any_name(tmp_path):
    m = datasets.index_dataset("georgia", FIXTURES, folder="cinc2020/georgia")
    assert len(m) == 13 and (m["dataset"] == "georgia").all()
    assert m["record_id"].iloc[0] == "georgia/E00001"
    assert (FIXTURES / (m["source_path"].iloc[0] + ".hea")).is_file()
    assert set(m["split"]) <= {"train", "val", "test"}


def test_describe_unverified_says_so(tmp_path):
    (tmp_path / "a.hea").write_text("x")
    report = datasets.describe_unverified("georgia", tmp_path)
    assert report["files"] == 1 and report["verified"] == 0 and not report["checksums_checked"]
    assert "WITHOUT checksum verification" in report["note"]
