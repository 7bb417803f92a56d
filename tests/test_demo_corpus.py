"""The demo corpus: real layouts, read back by the real indexers and readers, deterministic."""

from __future__ import annotations

import ast
import filecmp
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from supreme_ecg import catalogue, datasets, formats
from supreme_ecg.demo import corpus
from supreme_ecg.demo import plan as plan_module
from supreme_ecg.demo import reports as demo_reports
from supreme_ecg.demo.conditions import conditions, conditions_version
from supreme_ecg.leads import CANONICAL_LEADS, MIMIC_LEAD_ORDER, reorder_by_name
from supreme_ecg.settings import fixtures_dir, shared_reference_dir

SIZES = {"n_pretrain": 60, "n_ptbxl": 30, "n_cpsc": 30, "n_csn": 30}
SEED = 7
SETS = ("mimic", "ptbxl", "cpsc2018", "csn")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    counts = corpus.generate_demo(root, seed=SEED, **SIZES)
    return root, counts, pd.read_parquet(root / "demo_truth.parquet")


@pytest.fixture(scope="module")
def manifests(demo):
    root = demo[0]
    return {name: datasets.index_dataset(name, root) for name in SETS}


def _read(root, manifest, record_id):
    return formats.read_record(root / manifest.set_index("record_id").loc[record_id, "source_path"])


def test_every_table_and_record_is_written(demo):
    root, counts, truth = demo
    assert counts["records"] == {"mimic": 60, "ptbxl": 30, "cpsc2018": 30, "csn": 30}
    for rel in ("mimic-iv-ecg/record_list.csv", "mimic-iv-ecg/machine_measurements.csv",
                "ptb-xl/ptbxl_database.csv", "ptb-xl/scp_statements.csv",
                "ecg-arrhythmia/ConditionNames_SNOMED-CT.csv", "demo_truth.parquet"):
        assert (root / rel).is_file(), rel
    records = pd.read_csv(root / "mimic-iv-ecg" / "record_list.csv")
    for row in records.itertuples():
        sid, study = str(row.subject_id), str(row.study_id)
        assert len(sid) == 8 and len(study) == 8
        assert row.path == f"files/p{sid[:4]}/p{sid}/s{study}/{study}"
        for ext in (".hea", ".dat"):
            assert (root / "mimic-iv-ecg" / f"{row.path}{ext}").is_file()
    assert len(list((root / "ptb-xl" / "records500" / "00000").glob("*_hr.dat"))) == 30
    assert len(list((root / "cpsc2018" / "training" / "cpsc_2018" / "g1").glob("A*.mat"))) == 30
    assert len(list((root / "ecg-arrhythmia" / "WFDBRecords" / "01" / "010").glob("JS*.mat"))) == 30
    measurements = pd.read_csv(root / "mimic-iv-ecg" / "machine_measurements.csv")
    assert list(measurements.columns) == ["subject_id", "study_id", "cart_id", "ecg_time",
                                          *datasets.REPORT_COLUMNS, "bandwidth", "filtering", "rr_interval",
                                          "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end", "p_axis",
                                          "qrs_axis", "t_axis"]


def test_indexers_read_back_every_record(demo, manifests):
    truth = demo[2]
    for name in SETS:
        expected = truth[truth["dataset"] == name]
        assert sorted(manifests[name]["record_id"]) == sorted(expected["record_id"]), name
        if name != "mimic":  # planned splits are the splits the indexers give
            merged = manifests[name].merge(expected, on="record_id", suffixes=("", "_truth"))
            assert (merged["split"] == merged["split_truth"]).all(), name
    assert (manifests["mimic"]["report"].str.split().str.len() >= 2).all()


def test_lead_names_and_order_per_set(demo, manifests):
    root, _, truth = demo
    clean = truth[truth["defect"].isna()].groupby("dataset")["record_id"].first()
    mimic = _read(root, manifests["mimic"], clean["mimic"])
    assert mimic.lead_names == list(MIMIC_LEAD_ORDER)  # aVF before aVL
    assert _read(root, manifests["ptbxl"], clean["ptbxl"]).lead_names == [n.upper() for n in CANONICAL_LEADS]
    assert _read(root, manifests["csn"], clean["csn"]).lead_names == list(CANONICAL_LEADS)
    signal, _, _ = reorder_by_name(mimic.signal, mimic.lead_names)  # permuted by name, so Goldberger holds
    step = 1 / corpus.MIMIC_GAIN  # 5 µV per unit: three roundings of half a step at most
    assert np.abs(signal[5] - (signal[1] - signal[0] / 2)).max() <= 1.25 * step + 1e-6
    assert np.abs(signal[4] - (signal[0] - signal[1] / 2)).max() <= 1.25 * step + 1e-6


def test_pretraining_reports_never_name_unseen_concepts(demo, manifests):
    root, counts, truth = demo
    pattern = demo_reports.mention_pattern(tuple(sorted(corpus.UNSEEN_DEFAULT)))
    raw = pd.read_csv(root / "mimic-iv-ecg" / "machine_measurements.csv")[list(datasets.REPORT_COLUMNS)]
    statements = [s for s in raw.to_numpy().ravel() if isinstance(s, str)]
    assert statements and not [s for s in statements if pattern.search(s)]
    assert not manifests["mimic"]["report"].str.contains(pattern).any()
    mimic = truth[truth["dataset"] == "mimic"]
    rendered = {c for concepts in mimic["concepts"] for c in concepts}
    assert set(corpus.UNSEEN_DEFAULT) <= rendered  # rendered in pre-training signals
    assert {c for u in mimic["unnamed"] for c in u} == set(corpus.UNSEEN_DEFAULT)


def test_downstream_labels_come_from_the_concepts(demo, manifests):
    truth = demo[2].set_index("record_id")
    for row in manifests["csn"].itertuples():
        codes = {s for c in truth.loc[row.record_id, "concepts"] for s in conditions()[c].snomed}
        assert set(row.dx_codes) == codes
    for row in manifests["cpsc2018"].itertuples():
        normal = "normal_ecg" in truth.loc[row.record_id, "concepts"]
        assert ("426783006" in list(row.dx_codes)) == normal
    for row in manifests["ptbxl"].itertuples():
        codes = {s for c in truth.loc[row.record_id, "concepts"] for s in conditions()[c].scp}
        assert set(ast.literal_eval(row.scp_codes)) == codes
    flutter = [r for r, c in truth["concepts"].items() if r.startswith("csn/") and "atrial_flutter" in c]
    labels = datasets.task_labels(manifests["csn"], "csn").set_index("record_id")
    assert flutter and (labels.loc[flutter, "AF"] == 1).all() and (labels.loc[flutter, "AFIB"] == 0).all()


def test_condition_plans_respect_the_rules():
    rng = np.random.default_rng(0)
    plans = corpus.plan_conditions(600, rng, 30)  # a CinC set at its default size
    for plan in plans:
        assert sum(c in plan_module.RHYTHMS for c in plan.rendered) == 1 and plan.rendered[0] in plan_module.RHYTHMS
        assert len(plan.rendered) <= 1 + plan_module.MAX_FINDINGS
        groups = [g for c in plan.rendered for g in plan_module.knob_groups(c)]
        assert len(groups) == len(set(groups)), plan.rendered
        assert ("normal_ecg" in plan.concepts) == (plan.rendered == ["sinus_rhythm"])
    counts = pd.Series([c for p in plans for c in p.concepts]).value_counts()
    assert counts.reindex(list(corpus.renderable()), fill_value=0).min() >= 30
    big = corpus.plan_conditions(2000, rng, corpus.MIMIC_MIN_POSITIVES)
    counts = pd.Series([c for p in big for c in p.concepts]).value_counts()
    assert counts.reindex(list(corpus.renderable()), fill_value=0).min() >= 30


def _test_positives(concepts, splits) -> pd.Series:
    """Test-split positives per renderable concept (``concepts``: each record's list)."""
    in_test = pd.Series([c for cs, s in zip(concepts, splits) if s == "test" for c in cs], dtype=object)
    return in_test.value_counts().reindex(list(corpus.renderable()), fill_value=0)


def test_downstream_quota_covers_the_test_share():
    assert plan_module.MIN_TEST_POSITIVES == 6
    assert corpus.min_positives_for_test(np.arange(1200) % 10 == 9) == 60  # PTB-XL: fold 10 of 10
    assert corpus.min_positives_for_test(np.arange(600) < 120) == 30  # CinC: 20 % test
    assert corpus.min_positives_for_test(np.arange(7) < 2) == 21  # rounded up


@pytest.mark.parametrize("seed", range(5))
def test_stratify_fills_the_test_split_where_rounding_leaves_fewer(seed):
    """Iterative stratification alone leaves 2-4 test positives for some concept with these seeds."""
    rng = np.random.default_rng(seed)
    groups = corpus.cinc_split_groups("cpsc2018", [f"A{i + 1:04d}" for i in range(600)])
    plans = corpus.plan_conditions(600, rng, corpus.min_positives_for_test(groups == "test"))
    out = corpus.stratify(plans, groups, rng, test_group="test")
    assert sorted(map(id, out)) == sorted(map(id, plans))  # the same plans, reordered
    assert _test_positives([p.concepts for p in out], groups).min() >= plan_module.MIN_TEST_POSITIVES
    in_val = pd.Series([c for p, g in zip(out, groups) if g == "val" for c in p.concepts]).value_counts()
    assert in_val.reindex(list(corpus.renderable()), fill_value=0).min() >= 1


def _default_demo_config() -> dict:
    import inspect

    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())["demo"]
    defaults = inspect.signature(corpus.generate_demo).parameters
    assert {k: defaults[k].default for k in ("n_ptbxl", "n_cpsc", "n_csn")} == \
        {k: config[k] for k in ("n_ptbxl", "n_cpsc", "n_csn")}
    return config


@pytest.mark.parametrize("dataset, size", [("ptbxl", "n_ptbxl"), ("cpsc2018", "n_cpsc"), ("csn", "n_csn")])
def test_default_demo_has_six_test_positives_per_concept(dataset, size):
    """The plans generate_demo writes at the default sizes and seed (the first draws of the set's
    generator; demo_truth holds these plans: test_demo_truth_holds_the_planned_downstream_sets):
    ≥ 6 test positives per concept, on the benchmark's own splits."""
    config = _default_demo_config()
    n = config[size]
    plans, groups, splits = corpus.plan_downstream(dataset, n, corpus._set_rngs(config["seed"])[dataset])
    if dataset == "ptbxl":
        assert sorted(np.bincount(groups)[1:]) == [n // 10] * 10
        assert (splits == pd.Series(groups).map(datasets.PTBXL_FOLD_SPLIT).to_numpy()).all()
    else:
        names = [p.rsplit("/", 1)[1] for p in corpus.cinc_paths(dataset, n)]
        split = datasets.random_split([f"{dataset}/{name}" for name in names])
        assert list(splits) == [split[f"{dataset}/{name}"] for name in names]
    positives = _test_positives([p.concepts for p in plans], splits)
    assert positives.min() >= plan_module.MIN_TEST_POSITIVES, positives[positives < plan_module.MIN_TEST_POSITIVES].to_dict()


def test_default_csn_set_has_six_test_positives_per_concept_and_class(tmp_path):
    """The default demo's CSN set itself (a set depends only on the seed and its own size), read back
    from demo_truth.parquet and through the indexer and the benchmark task labels."""
    config = _default_demo_config()
    corpus.generate_demo(tmp_path, seed=config["seed"], n_pretrain=20, n_ptbxl=20, n_cpsc=20,
                         n_csn=config["n_csn"], unseen_concepts=config["unseen_concepts"])
    truth = pd.read_parquet(tmp_path / "demo_truth.parquet")
    csn = truth[truth["dataset"] == "csn"]
    assert len(csn) == config["n_csn"]
    assert _test_positives(csn["concepts"], csn["split"]).min() >= 6
    labels = datasets.task_labels(datasets.index_dataset("csn", tmp_path), "csn")
    rendered = {code for c in corpus.renderable().values() for code in c.snomed}
    classes = [c.name for c in catalogue.task_classes("csn") if rendered & set(c.snomed)]
    assert len(classes) >= 30
    assert labels.loc[labels["split"] == "test", classes].sum().min() >= 6


def test_demo_truth_holds_the_planned_downstream_sets(demo):
    truth = demo[2]
    for dataset, size in (("ptbxl", "n_ptbxl"), ("cpsc2018", "n_cpsc"), ("csn", "n_csn")):
        plans, _, splits = corpus.plan_downstream(dataset, SIZES[size], corpus._set_rngs(SEED)[dataset])
        rows = truth[truth["dataset"] == dataset]
        assert list(rows["split"]) == list(splits), dataset
        assert [list(c) for c in rows["concepts"]] == [p.concepts for p in plans], dataset


def test_cpsc_lengths_vary_and_mat_first_token_headers_exist(demo, manifests):
    root = demo[0] / "cpsc2018"
    headers = sorted(root.rglob("*.hea"))
    lengths = {formats.read_header(h).n_samples for h in headers}
    assert min(lengths) >= 6 * corpus.FS and max(lengths) <= 20 * corpus.FS and len(lengths) > 10
    quirky = [h for h in headers if h.read_text().split()[0].endswith(".mat")]
    assert quirky
    assert all(not r.endswith(".mat") for r in manifests["cpsc2018"]["record_id"])


def test_each_defect_kind_is_present_and_visible(demo, manifests):
    root, _, truth = demo
    defects = truth.dropna(subset=["defect"])
    for name in SETS:
        assert set(defects.loc[defects["dataset"] == name, "defect"]) == set(corpus.DEFECT_KINDS), name
    for row in defects.itertuples():
        manifest = manifests[row.dataset]
        if row.defect == "truncated":
            with pytest.raises(formats.RecordReadError):
                _read(root, manifest, row.record_id)
            continue
        record = _read(root, manifest, row.record_id)
        lead = [formats_name.upper() for formats_name in record.lead_names].index(row.defect_lead.upper())
        values = record.signal[lead]
        if row.defect == "flat":
            assert np.ptp(values) == 0
        else:
            share = np.isnan(values).mean()
            assert (share > 0.1) if row.defect == "nan_long" else (0 < share < 0.02)


def test_same_seed_same_bytes_other_seed_other_bytes(demo, tmp_path):
    root = demo[0]
    corpus.generate_demo(tmp_path / "again", seed=SEED, **SIZES)
    corpus.generate_demo(tmp_path / "other", seed=SEED + 1, **SIZES)
    rels = ["mimic-iv-ecg/machine_measurements.csv", "mimic-iv-ecg/record_list.csv", "ptb-xl/ptbxl_database.csv"]
    rels += [str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".dat", ".mat", ".hea")]
    for rel in rels:
        assert filecmp.cmp(root / rel, tmp_path / "again" / rel, shallow=False), rel
    assert not filecmp.cmp(root / rels[0], tmp_path / "other" / rels[0], shallow=False)
    pd.testing.assert_frame_equal(pd.read_parquet(root / "demo_truth.parquet"),
                                  pd.read_parquet(tmp_path / "again" / "demo_truth.parquet"))


def test_support_tables_match_the_catalogue(demo):
    root = demo[0]
    names = pd.read_csv(root / "ecg-arrhythmia" / "ConditionNames_SNOMED-CT.csv", dtype=str)
    assert list(names.columns) == ["Acronym Name", "Full Name", "Snomed_CT"]
    assert len(names) == len(catalogue.task_classes("csn")) + 1
    assert names.set_index("Acronym Name").loc["SB", "Snomed_CT"] == "426177001"
    assert names.set_index("Acronym Name").loc["AF", "Snomed_CT"] == "164890007"
    statements = datasets.load_scp_statements(root / "ptb-xl" / "scp_statements.csv")
    facts = catalogue.scp_statement_facts()
    assert set(statements.index) == set(facts)
    assert statements.loc["1AVB", "diagnostic_subclass"] == "_AVB" and statements.loc["SR", "rhythm"] == 1


def test_unknown_unseen_concept_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unseen_concepts"):
        corpus.generate_demo(tmp_path, seed=1, n_pretrain=5, n_ptbxl=5, n_cpsc=5, n_csn=5,
                             unseen_concepts=("no_such_concept",))


# --------------------------------------------------------------------------- MIMIC-IV-ECG realism

REAL_MIMIC = fixtures_dir() / "mimic_iv_ecg"
VERDICTS = {"Normal ECG", "Normal ECG except for rate", "Otherwise normal ECG", "Borderline ECG", "Abnormal ECG"}
RECORD_LINE = re.compile(r"^(\d{8}) 12 500 5000 (\d\d:\d\d:\d\d) (\d\d)/(\d\d)/(\d{4})$")


@pytest.fixture(scope="module")
def mimic_reports():
    """2,000 planned pre-training records and their statements (no signals: fast)."""
    return _reports(2000, seed=5)


def _reports(n, seed, unseen=corpus.UNSEEN_DEFAULT):
    rng = np.random.default_rng(seed)
    plans = corpus.plan_conditions(n, rng, corpus.MIMIC_MIN_POSITIVES, mimic=True)
    corpus.add_variants(plans, rng)
    knobs, poor = corpus.sample_knobs(plans, rng)
    rows = pd.DataFrame({k: knobs[k] for k in ("hr_bpm", "st_region")}).to_dict("records")
    return plans, [corpus.mimic_statements(p, rows[i], poor[i], None, unseen, rng) for i, p in enumerate(plans)]


def test_mimic_headers_are_written_as_the_real_ones(demo):
    root = demo[0] / "mimic-iv-ecg"
    records = pd.read_csv(root / "record_list.csv", dtype=str)
    real = sorted((REAL_MIMIC / "headers").glob("*.hea"))
    for row in records.itertuples():
        lines = (root / f"{row.path}.hea").read_text().splitlines()
        match = RECORD_LINE.match(lines[0])
        assert match and match.group(1) == row.study_id, lines[0]
        hhmmss, day, month, year = match.group(2, 3, 4, 5)
        assert row.ecg_time == f"{year}-{month}-{day} {hhmmss}"
        signals = [line.split() for line in lines[1:13]]
        assert [t[8] for t in signals] == list(MIMIC_LEAD_ORDER)
        assert all(t[0] == f"{row.study_id}.dat" and t[1:5] == ["16", "200.0(0)/mV", "16", "0"] for t in signals)
        assert all(0 <= int(t[6]) < 65536 for t in signals)  # unsigned checksums, as in the real files
        assert lines[13:] == [f"# <subject_id>: {row.subject_id}"]
    for path in real:  # the same shape as the real headers, token by token
        lines = path.read_text().splitlines()
        assert RECORD_LINE.match(lines[0]) and lines[13].startswith("# <subject_id>: ")
        assert [line.split()[1:5] for line in lines[1:13]] == [["16", "200.0(0)/mV", "16", "0"]] * 12
        assert [line.split()[8] for line in lines[1:13]] == list(MIMIC_LEAD_ORDER)


def test_mimic_header_round_trips_through_both_readers(tmp_path):
    import wfdb

    rng = np.random.default_rng(3)
    signal = rng.normal(0.0, 1.5, (12, 5000)).astype(np.float32)
    signal[0, :3] = [160.0, -160.0, 0.0]  # near the int16 limits at 200/mV
    signal[4, 10:50] = np.nan
    formats.write_wfdb16(tmp_path, "40689238", signal, list(MIMIC_LEAD_ORDER), 500, gain=corpus.MIMIC_GAIN,
                         comments=["# <subject_id>: 10000032"])
    corpus.mimic_header(tmp_path / "40689238.hea", "2180-07-23 08:44:00")
    assert (tmp_path / "40689238.hea").read_text().splitlines()[0] == "40689238 12 500 5000 08:44:00 23/07/2180"
    record = formats.read_record(tmp_path / "40689238.hea")
    assert record.lead_names == list(MIMIC_LEAD_ORDER) and record.fs == 500
    half_step = 0.5 / corpus.MIMIC_GAIN + 1e-6
    assert np.nanmax(np.abs(record.signal - signal)) <= half_step
    assert np.isnan(record.signal[4, 10:50]).all() and not np.isnan(record.signal[4, 50:]).any()
    ref = wfdb.rdrecord(str(tmp_path / "40689238"))
    assert str(ref.base_date) == "2180-07-23" and str(ref.base_time) == "08:44:00"
    assert ref.comments == ["<subject_id>: 10000032"]
    assert np.nanmax(np.abs(ref.p_signal.T - record.signal)) <= 1e-5


def test_pretraining_reports_read_like_mimic(mimic_reports):
    plans, reports = mimic_reports
    statements = pd.Series([s for r in reports for s in r])
    counts = statements.value_counts()
    top = list(counts.index[:6])
    assert {"Abnormal ECG", "Sinus rhythm", "Normal ECG", "Borderline ECG"} <= set(top), top
    for wording in ("Sinus rhythm with borderline 1st degree A-V block", "Sinus rhythm with 1st degree A-V block",
                    "Sinus rhythm with PVC(s)", "Sinus bradycardia",
                    "Atrial fibrillation with rapid ventricular response", "Left axis deviation",
                    "Inferior infarct - age undetermined", "Possible anterior infarct - age undetermined",
                    "RBBB with left anterior fascicular block", "Nonspecific T wave abnormality", "Prolonged QT",
                    "Normal ECG except for rate", "*** Poor data quality, interpretation may be adversely affected"):
        assert counts.get(wording, 0) >= 3, wording
    verdicts = [r[-1] for r in reports if r[-1] in VERDICTS]
    assert 0.85 < len(verdicts) / len(reports) < 0.99  # a few reports have none, or another cart's "Summary: ..."
    shares = pd.Series(verdicts).value_counts(normalize=True)
    assert 0.3 < shares["Abnormal ECG"] < 0.6 and 0.1 < shares["Normal ECG"] < 0.3
    assert 0.1 < shares["Borderline ECG"] < 0.35
    rhythm_first = [next(s for s in r if not s.startswith("***")) for r in reports]
    sinus = np.mean([s.lower().startswith("sinus") for s in rhythm_first])
    assert 0.6 < sinus < 0.9
    assert not [s for s in statements if s != s.strip() or ", ," in s or not s]


def test_pretraining_statements_are_real_mimic_wording(mimic_reports):
    """Rhythm, conduction and infarct statements are the real machine's own (the fixture's 992
    real statements cover exactly those): at least 90 % of such statements occur there verbatim."""
    path = REAL_MIMIC / "statements.csv"
    if not path.is_file():
        pytest.skip(f"{path} absent (set SUPREME_FIXTURES to the shared fixtures)")
    real = set(pd.read_csv(path)["statement"])
    key = re.compile(r"^(sinus|atrial fib)|infarct|bundle branch block|rbbb|lbbb", re.IGNORECASE)
    ours = [s.lower().rstrip(".") for r in mimic_reports[1] for s in r if key.search(s)]
    assert len(ours) > 1000
    known = np.mean([s in real for s in ours])
    assert known >= 0.9, known


def test_pretraining_reports_never_name_unseen_conditions_at_scale(monkeypatch):
    monkeypatch.setattr(demo_reports, "_guard_unseen", lambda lines, unseen: lines)  # the wording itself must not
    plans, reports = _reports(3000, seed=11)
    pattern = demo_reports.mention_pattern(tuple(sorted(corpus.UNSEEN_DEFAULT)))
    rendered = {c for p in plans for c in p.concepts}
    assert set(corpus.UNSEEN_DEFAULT) <= rendered
    assert not [s for r in reports for s in r if pattern.search(s)]
    _, named = _reports(600, seed=11, unseen=())  # seen, the same conditions are named
    assert [s for r in named for s in r if pattern.search(s)]


def test_mimic_statements_are_deterministic():
    assert _reports(300, seed=2)[1] == _reports(300, seed=2)[1]
    assert _reports(300, seed=2)[1] != _reports(300, seed=3)[1]


def test_mimic_prevalences_follow_the_shares():
    rng = np.random.default_rng(4)
    plans = corpus.plan_conditions(2000, rng, corpus.MIMIC_MIN_POSITIVES, mimic=True)
    counts = pd.Series([c for p in plans for c in p.concepts]).value_counts()
    for cid, condition in corpus.renderable().items():
        share = condition.mimic.get("share")
        if share:
            assert counts[cid] >= round(share * 2000) * 0.9, cid
    assert counts["sinus_bradycardia"] > counts["atrial_tachycardia"]


# --------------------------------------------------------------------------- the demo's condition list


def test_conditions_are_the_demo_world():
    world = conditions()
    assert len(world) >= 50 and conditions_version() >= 3
    for cid, condition in corpus.renderable().items():
        assert condition.mimic.get("statements"), f"{cid} needs MIMIC wording"
        for key in ("statements", "hedged", "with", "with_af", "fast", "also", "flag", "with_rbbb"):
            assert all(isinstance(w, (int, float)) and w > 0 for w in condition.mimic.get(key, {}).values())
    assert set(corpus.UNSEEN_DEFAULT) <= set(corpus.renderable())


def test_condition_scp_codes_exist_in_ptbxl():
    path = fixtures_dir() / "ptbxl" / "scp_statements.csv"
    used = {code for c in conditions().values() for code in c.scp}
    assert used <= set(catalogue.scp_statement_facts())
    if not path.is_file():
        pytest.skip(f"{path} absent (set SUPREME_FIXTURES to the shared fixtures)")
    assert used <= set(pd.read_csv(path, index_col=0).index)


def test_condition_snomed_codes_exist_in_the_challenge_tables():
    ref = shared_reference_dir() / "snomed"
    tables = sorted(ref.glob("*.csv")) if ref.is_dir() else []
    if not tables:
        pytest.skip(f"no SNOMED tables under {ref}")
    known = set(pd.concat([pd.read_csv(t, dtype=str) for t in tables])["snomed_code"])
    missing = {code for c in conditions().values() for code in c.snomed} - known
    assert not missing, f"codes not in the Challenge tables: {sorted(missing)}"
