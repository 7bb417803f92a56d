"""Entity extraction: statement splitting, lexicon backend, answer schema, answer cache, the stage."""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter

import jsonschema
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from supreme_ecg import extract as x
from supreme_ecg.catalogue import concepts
from supreme_ecg.llm_cache import AnswerCache, cache_key, main as cache_cli
from supreme_ecg.settings import fixtures_dir

LEX = x.LexiconBackend()


def entities_of(statement: str) -> list[tuple[str, str]]:
    """(concept, polarity) pairs the lexicon finds in one raw statement."""
    return [(e.concept, e.polarity) for e in LEX.extract([x.normalise_statement(statement)])[0].entities]


def write_manifest(path, reports, ids=None):
    """A manifest Parquet with int64 record ids."""
    ids = list(range(len(reports))) if ids is None else ids
    pq.write_table(pa.table({"record_id": pa.array(ids, pa.int64()), "report": pa.array(reports, pa.string())}), path)
    return path


class CountingBackend:
    """Wraps a backend and records every unit it is sent (optionally failing some)."""

    def __init__(self, inner=LEX, fail: frozenset[str] = frozenset()):
        self.inner, self.fail = inner, fail
        self.name, self.model, self.prompt_version = inner.name, inner.model, inner.prompt_version
        self.calls = 0
        self.sent: Counter = Counter()

    def extract(self, units):
        self.calls += 1
        self.sent.update(units)
        answers = self.inner.extract(units)
        return [x.Answer("", [], 0.0, error="boom") if u in self.fail else a for u, a in zip(units, answers)]


# --------------------------------------------------------------------------- splitting


def test_split_statements_on_separators_keeping_decimals_and_age_undetermined():
    report = "Sinus rhythm. Normal ECG; Inferior infarct - age undetermined\nQTc 0.5 s. v.a. LVH."
    assert x.split_statements(report) == [
        "Sinus rhythm",
        "Normal ECG",
        "Inferior infarct - age undetermined",
        "QTc 0.5 s",
        "v.a. LVH",
    ]


def test_split_statements_on_mimic_joins():
    report = x.clean_mimic_report(["Sinus rhythm", None, "", "***Abnormal ECG***", float("nan")])
    assert report == "sinus rhythm. abnormal ecg"
    assert x.split_statements(report) == ["sinus rhythm", "abnormal ecg"]
    assert x.split_statements(None) == [] and x.split_statements("  ") == []


def test_normalise_statement():
    assert x.normalise_statement("  ***Sinus   RHYTHM*** . ") == "sinus rhythm"
    assert x.normalise_statement("qt-verla\u0308ngerung") == "qt-verl\u00e4ngerung"  # NFC
    assert x.normalise_statement("QT-VERLÄNGERUNG") == "qt-verlängerung"
    assert x.normalise_statement("lvh?") == "lvh?"


def test_segment_report_drops_and_counts_empty_and_noise():
    report = "Sinus rhythm. ***. Poor data quality, interpretation may be adversely affected. Abnormal ECG. !!"
    seg = x.segment_report(report)
    assert seg.units == ("sinus rhythm", "abnormal ecg")
    assert (seg.n_empty, seg.n_noise) == (2, 1)
    assert x.segment_report(report, unit="report").units == ("sinus rhythm. abnormal ecg",)
    assert x.segment_report("Poor data quality", unit="report").units == ()


# --------------------------------------------------------------------------- lexicon


@pytest.mark.parametrize(
    "statement, expected",
    [
        ("Sinus rhythm", [("sinus_rhythm", "present")]),
        ("Atrial fibrillation with rapid ventricular response", [("atrial_fibrillation", "present")]),
        ("Inferior infarct - age undetermined", [("inferior_myocardial_infarction", "present")]),
        ("Possible left atrial enlargement", [("left_atrial_enlargement", "uncertain")]),
        ("No ST elevation", [("st_elevation", "absent")]),
        ("Incomplete right bundle branch block", [("incomplete_right_bundle_branch_block", "present")]),
        ("Sinus rhythm with 1st degree A-V block", [("sinus_rhythm", "present"), ("first_degree_av_block", "present")]),
        ("No ST elevation or T wave inversion", [("st_elevation", "absent"), ("t_wave_inversion", "absent")]),
        ("Consider anterior ischemia", [("anterior_ischaemia", "uncertain")]),
        ("Old anteroseptal infarct cannot be excluded", [("anterior_myocardial_infarction", "uncertain")]),
        ("Anterior myocardial infarction, probably old", [("anterior_myocardial_infarction", "present")]),
        (
            "Voltages are high in chest leads suggesting LVH",
            [("high_qrs_voltage", "present"), ("left_ventricular_hypertrophy", "uncertain")],
        ),
        ("Borderline left axis deviation", [("left_axis_deviation", "uncertain")]),
        ("Sinus rhythm. No definite pathology", [("sinus_rhythm", "present"), ("normal_ecg", "present")]),
    ],
)
def test_lexicon_english_statements(statement, expected):
    assert entities_of(statement) == expected


@pytest.mark.parametrize(
    "statement, expected",
    [
        ("sinusrhythmus qt-verlÄngerung", [("sinus_rhythm", "present"), ("long_qt", "present")]),
        ("sinusrytm vÄnster el-axel", [("sinus_rhythm", "present"), ("left_axis_deviation", "present")]),
        ("FÖRMAKSFLIMMER", [("atrial_fibrillation", "present")]),
        ("v.a. linksherzhypertrophie", [("left_ventricular_hypertrophy", "uncertain")]),
        ("kein vorhofflimmern", [("atrial_fibrillation", "absent")]),
        (
            "sinusrhythmus linkstyp inferiorer infarkt mÖglich",
            [
                ("sinus_rhythm", "present"),
                ("left_axis_deviation", "present"),
                ("inferior_myocardial_infarction", "uncertain"),
            ],
        ),
        ("inferiorer infarkt wahrscheinlich alt", [("inferior_myocardial_infarction", "present")]),
    ],
)
def test_lexicon_german_and_swedish_statements(statement, expected):
    assert entities_of(statement) == expected


def test_lexicon_summary_lines_yield_nothing_and_unknown_statements_are_unmapped():
    assert entities_of("Abnormal ECG") == [] and entities_of("Borderline ECG") == []
    [entity] = LEX.extract(["abnormal r-wave progression, early transition"])[0].entities
    assert entity == x.Entity("abnormal r-wave progression, early transition", x.UNMAPPED, "present", "other")


def test_lexicon_is_a_backend_with_valid_answers():
    assert isinstance(LEX, x.ExtractionBackend)
    assert (LEX.name, LEX.prompt_version) == ("lexicon", "none") and LEX.model.startswith("concepts-v")
    answer = LEX.extract(["sinus rhythm"])[0]
    assert answer.error is None and x.validate_answer(answer.raw, "sinus rhythm") == answer.entities


# --------------------------------------------------------------------------- answer schema


def item(**kw):
    return {
        "text": "st elevation",
        "concept": "st_elevation",
        "polarity": "absent",
        "category": "ischaemia_infarction",
    } | kw


def test_answer_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(x.ANSWER_SCHEMA)
    assert isinstance(x.SCHEMA_VERSION, int)


def test_validate_answer_maps_unknown_concepts_to_unmapped_and_takes_catalogue_category():
    entities = x.validate_answer(
        {
            "entities": [
                item(),
                item(text="pericarditis", concept="pericarditis", category="other"),
                item(text="sinus rhythm", concept="sinus_rhythm", category="other", polarity="present"),
            ]
        },
        unit="no st elevation, pericarditis, sinus rhythm",
    )
    assert entities == [
        x.Entity("st elevation", "st_elevation", "absent", "ischaemia_infarction"),
        x.Entity("pericarditis", x.UNMAPPED, "absent", "other"),
        x.Entity("sinus rhythm", "sinus_rhythm", "present", "rhythm"),
    ]


@pytest.mark.parametrize(
    "answer",
    [
        {"entities": [item(polarity="negative")]},
        {"entities": [item(category="cardiac")]},
        {"entities": [{k: v for k, v in item().items() if k != "concept"}]},
        {"entities": [item(extra=1)]},
        {"entities": [item(text=3)]},
        {"entities": [item(text="  ")]},
        {"entities": {}},
        {},
        "not json {",
        {"entities": [item(text="st depression")]},  # not a span of the unit
    ],
)
def test_validate_answer_rejects_schema_violations(answer):
    with pytest.raises(x.AnswerError):
        x.validate_answer(answer, unit="no st elevation")


def test_prompt_renders_vocabulary_schema_and_statement():
    prompt = x.render_prompt("possible left atrial enlargement")
    assert all(cid in prompt for cid in concepts())
    assert '"polarity"' in prompt and prompt.rstrip().endswith("Statement: possible left atrial enlargement\nAnswer:")
    assert "$" not in prompt


# --------------------------------------------------------------------------- cache


def test_cache_put_get_reopen_stats_and_export(tmp_path):
    path = tmp_path / "c" / "cache.sqlite"
    answer = LEX.extract(["sinus rhythm"])[0]
    key = x.unit_key(LEX, "Sinus   Rhythm")
    assert key == x.unit_key(LEX, "sinus rhythm") and key != cache_key("other")
    with AnswerCache(path) as cache:
        assert cache.put(key, answer, unit="sinus rhythm", backend="lexicon") is True
        assert cache.put(key, answer) is False  # first answer wins
        assert cache.get_many([key, "missing"]).keys() == {key}
    with AnswerCache(path) as cache:
        got = cache.get_many([key])[key]
        assert x.answer_from_cached(got).entities == answer.entities and got.unit == "sinus rhythm"
        stats = cache.stats()
        assert (stats["hits"], stats["misses"], stats["rows"]) == (1, 0, 1) and stats["file_bytes"] > 0
        assert cache.export_parquet(tmp_path / "export.parquet") == 1
    exported = pd.read_parquet(tmp_path / "export.parquet")
    assert exported.key.tolist() == [key] and json.loads(exported.entities[0])[0]["concept"] == "sinus_rhythm"


def test_cache_cli(tmp_path, capsys):
    path = tmp_path / "cache.sqlite"
    with AnswerCache(path) as cache:
        cache.put("k", LEX.extract(["sinus rhythm"])[0])
    assert cache_cli(["--cache", str(path), "stats"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 1
    assert cache_cli(["--cache", str(path), "export", str(tmp_path / "e.parquet")]) == 0
    assert len(pd.read_parquet(tmp_path / "e.parquet")) == 1


def test_cache_keeps_lifetime_hits_and_misses_and_rows_per_backend(tmp_path):
    path = tmp_path / "cache.sqlite"
    with AnswerCache(path) as cache:
        cache.get_many(["a", "b"])
        cache.put("a", LEX.extract(["sinus rhythm"])[0], backend="lexicon", model=LEX.model, prompt_version="none")
    with AnswerCache(path) as cache:
        cache.get_many(["a", "b", "a"])
        stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["total_hits"], stats["total_misses"]) == (1, 1, 1, 3)
    assert stats["by_backend"][0] | {"mean_latency_s": 0} == {
        "backend": "lexicon", "model": LEX.model, "prompt_version": "none", "rows": 1, "mean_latency_s": 0
    }


def _write_keys(path: str, keys: list[str]) -> None:
    answer = x.Answer('{"entities": []}', [], 0.0)
    with AnswerCache(path, timeout_s=30) as cache:
        for k in keys:
            cache.put(k, answer, unit=k)


def test_cache_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "cache.sqlite")
    a, b = [f"k{i}" for i in range(0, 300)], [f"k{i}" for i in range(150, 450)]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_keys, args=(path, keys)) for keys in (a, b)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    with AnswerCache(path) as cache:
        assert len(cache) == 450


# --------------------------------------------------------------------------- the stage

CORPUS = [
    "Sinus rhythm. Normal ECG",
    "Sinus rhythm. Possible left atrial enlargement. Abnormal ECG",
    "Atrial fibrillation with rapid ventricular response. No ST elevation",
    "Sinus rhythm. Inferior infarct - age undetermined. Abnormal ECG",
    "Sinus bradycardia. Poor data quality, interpretation may be adversely affected",
]


def repeated_corpus(n: int = 40) -> list[str | None]:
    """``n`` reports cycling through CORPUS, plus an empty and a missing report."""
    return [CORPUS[i % len(CORPUS)] for i in range(n)] + ["", None]


def test_stage_sends_each_distinct_unit_once_and_nothing_on_rerun(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", repeated_corpus())
    backend = CountingBackend()
    counts = x.extract_reports(manifest, tmp_path / "o1", backend, tmp_path / "cache.sqlite", batch_size=7)
    distinct = {u for r in CORPUS for u in x.segment_report(r).units}
    assert set(backend.sent) == distinct and set(backend.sent.values()) == {1}
    assert counts["n_backend_units"] == len(distinct) < counts["n_units"]
    assert counts["n_noise"] == 8 and counts["n_records"] == 42
    rerun = CountingBackend()
    counts2 = x.extract_reports(manifest, tmp_path / "o2", rerun, tmp_path / "cache.sqlite", batch_size=7)
    assert rerun.calls == 0 and counts2["n_backend_units"] == 0 and counts2["n_cache_hits"] == len(distinct)
    for name in ("entities", "records", "labels", "label_vocabulary", "unmapped"):
        assert pd.read_parquet(tmp_path / "o1" / f"{name}.parquet").equals(
            pd.read_parquet(tmp_path / "o2" / f"{name}.parquet")
        )
    assert not list((tmp_path / "o1").glob("*.tmp.parquet"))


def test_stage_outputs_account_for_every_record(tmp_path):
    reports = repeated_corpus(10)
    manifest = write_manifest(tmp_path / "m.parquet", reports, ids=[100 + i for i in range(len(reports))])
    x.extract_reports(manifest, tmp_path / "o", LEX, tmp_path / "c.sqlite", min_label_count=1, batch_size=3)
    records = pd.read_parquet(tmp_path / "o" / "records.parquet")
    labels = pd.read_parquet(tmp_path / "o" / "labels.parquet")
    entities = pd.read_parquet(tmp_path / "o" / "entities.parquet")
    assert records.record_id.tolist() == labels.record_id.tolist() == [100 + i for i in range(len(reports))]
    assert str(records.record_id.dtype) == "int64" and set(records.backend) == {"lexicon"}
    assert records.iloc[-2:][["n_units", "n_entities"]].to_numpy().sum() == 0
    assert records.n_entities.sum() == len(entities)
    assert list(entities.columns) == [
        "record_id",
        "unit",
        "text",
        "concept_id",
        "concept_name",
        "polarity",
        "category",
        "backend",
        "model",
        "prompt_version",
    ]
    row = entities[entities.concept_id == "inferior_myocardial_infarction"].iloc[0]
    assert (row.unit, row.concept_name, row.polarity) == (
        "inferior infarct - age undetermined",
        "inferior myocardial infarction",
        "present",
    )
    assert labels.drop(columns="record_id").dtypes.astype(str).eq("int8").all()
    assert labels.iloc[-2:, 1:].to_numpy().sum() == 0


def test_stage_uncertain_policy_changes_labels(tmp_path):
    reports = [
        "Left atrial enlargement",
        "Sinus rhythm. Left atrial enlargement",
        "Possible left atrial enlargement",
        "Sinus rhythm. No ST elevation",
    ]
    manifest = write_manifest(tmp_path / "m.parquet", reports)
    expected = {"positive": ([1, 1, 1, 0], 3), "negative": ([1, 1, 0, 0], 2), "ignore": ([1, 1, -1, 0], 2)}
    for policy, (column, n_records) in expected.items():
        out = tmp_path / policy
        x.extract_reports(manifest, out, LEX, tmp_path / "c.sqlite", uncertain_policy=policy, min_label_count=1)
        labels = pd.read_parquet(out / "labels.parquet")
        vocab = pd.read_parquet(out / "label_vocabulary.parquet").set_index("concept_id")
        assert labels["left_atrial_enlargement"].tolist() == column
        assert vocab.loc["left_atrial_enlargement", ["n_present", "n_uncertain", "n_records"]].tolist() == [
            2,
            1,
            n_records,
        ]
        assert "st_elevation" not in labels  # only ever absent: no positive record


def test_stage_min_label_count_filters_and_orders_the_vocabulary(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", repeated_corpus(40))  # each CORPUS report 8 times
    for min_count, expected in [
        (9, ["sinus_rhythm"]),
        (
            8,
            [
                "sinus_rhythm",
                "atrial_fibrillation",
                "inferior_myocardial_infarction",
                "left_atrial_enlargement",
                "normal_ecg",
                "sinus_bradycardia",
            ],
        ),
    ]:
        out = tmp_path / str(min_count)
        x.extract_reports(manifest, out, LEX, tmp_path / "c.sqlite", min_label_count=min_count)
        vocab = pd.read_parquet(out / "label_vocabulary.parquet")
        labels = pd.read_parquet(out / "labels.parquet")
        assert vocab.concept_id.tolist() == expected
        assert vocab.label_index.tolist() == list(range(len(expected)))
        assert list(labels.columns) == ["record_id", *expected]
        assert vocab.name[0] == "sinus rhythm" and vocab.n_records[0] == 24


def test_stage_failed_units_are_not_cached_and_retried(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", repeated_corpus(10))
    failing = CountingBackend(fail=frozenset({"normal ecg"}))
    counts = x.extract_reports(manifest, tmp_path / "o1", failing, tmp_path / "c.sqlite", batch_size=3)
    records = pd.read_parquet(tmp_path / "o1" / "records.parquet")
    assert failing.sent["normal ecg"] == 1 and counts["n_failed_units"] == 1 and records.n_failed.sum() == 2
    retry = CountingBackend()
    x.extract_reports(manifest, tmp_path / "o2", retry, tmp_path / "c.sqlite")
    assert dict(retry.sent) == {"normal ecg": 1}


def test_stage_report_units_and_unmapped_audit(tmp_path):
    reports = repeated_corpus(10) + ["Sinus rhythm. Abnormal R-wave progression, early transition"] * 3
    manifest = write_manifest(tmp_path / "m.parquet", reports)
    backend = CountingBackend()
    counts = x.extract_reports(manifest, tmp_path / "o", backend, tmp_path / "c.sqlite", unit="report")
    assert counts["n_backend_units"] == len(CORPUS) + 1 and set(backend.sent.values()) == {1}
    unmapped = pd.read_parquet(tmp_path / "o" / "unmapped.parquet")
    assert unmapped.iloc[0].to_dict() == {
        "text": "abnormal r-wave progression, early transition",
        "n_mentions": 3,
        "example_unit": "sinus rhythm. abnormal r-wave progression, early transition",
    }


def test_stage_rejects_bad_arguments(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", ["Sinus rhythm"])
    with pytest.raises(ValueError, match="uncertain_policy"):
        x.extract_reports(manifest, tmp_path / "o", LEX, tmp_path / "c.sqlite", uncertain_policy="maybe")
    pq.write_table(pa.table({"record_id": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="report"):
        x.extract_reports(tmp_path / "bad.parquet", tmp_path / "o", LEX, tmp_path / "c.sqlite")


# --------------------------------------------------------------------------- real PTB-XL reports

PTBXL_CSV = fixtures_dir() / "ptbxl" / "ptbxl_database.csv"
needs_ptbxl = pytest.mark.skipif(not PTBXL_CSV.exists(), reason=f"PTB-XL fixture reports not found at {PTBXL_CSV}")


@pytest.mark.fixtures
@needs_ptbxl
def test_ptbxl_german_report():
    report = pd.read_csv(PTBXL_CSV).set_index("ecg_id").report[3]
    assert report == "sinusrhythmus normales ekg"
    assert {c for u in x.segment_report(report).units for c, _ in entities_of(u)} == {"sinus_rhythm", "normal_ecg"}


@pytest.mark.fixtures
@needs_ptbxl
def test_ptbxl_reports_mostly_yield_a_concept(tmp_path):
    db = pd.read_csv(PTBXL_CSV)
    manifest = write_manifest(tmp_path / "m.parquet", db.report.tolist(), ids=db.ecg_id.tolist())
    counts = x.extract_reports(manifest, tmp_path / "o", LEX, tmp_path / "c.sqlite", batch_size=128)
    records = pd.read_parquet(tmp_path / "o" / "records.parquet")
    assert len(records) == len(db) == counts["n_records"] == 500
    share = counts["n_records_with_concept"] / len(db)
    assert share >= 0.94, f"only {share:.1%} of PTB-XL reports yield a concept (measured 96.4 %)"
