"""Extraction quality on real PTB-XL reports: extracted concepts vs the records' SCP codes.

    python -m supreme_ecg.extraction_quality --ptbxl ../shared/fixtures/ptbxl --backend lexicon --out results/quality/
    python -m supreme_ecg.extraction_quality --ptbxl ... --backend ollama --model llama3.1:70b [--host URL] --out ...

Runs the extract stage (same splitting, cache and validation as the workflow) on the ``report``
column of ``ptbxl_database.csv``, then scores per record the set of extracted concepts against the
concepts of the record's ``scp_codes`` (SCP code → concept via the catalogue's ``scp`` lists). Only
concepts that have an SCP code are scored, and only they count as predictions. An extracted
concept counts if it is ``present`` (and, with ``--uncertain positive``, the default, if it is
``uncertain``); by default every SCP code of a record counts whatever its likelihood (PTB-XL gives
rhythm and form statements likelihood 0). An SCP code that maps to several concepts (``QWAVE``)
excuses them rather than demanding all (:func:`gold_concepts`).

Writes ``quality_<tag>.csv`` / ``.parquet`` (one row per concept: support, tp, fp, fn, precision,
recall, f1, plus a ``micro`` and a ``macro`` row) and ``quality_<tag>.json`` (summary) to ``--out``,
where ``<tag>`` is the backend (and model); prints the summary and the weakest concepts. The
PTB-XL gold labels are cardiologists' SCP statements, not a transcription of the report, so
they disagree with the report text now and then: the figures are a floor, comparable across backends.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from supreme_ecg import extract
from supreme_ecg.catalogue import concepts
from supreme_ecg.datasets import parse_scp_codes
from supreme_ecg.llm_cache import CACHE_ENV
from supreme_ecg.settings import fixtures_dir

METRIC_COLUMNS = ("concept_id", "name", "scp", "support", "n_predicted", "tp", "fp", "fn", "precision", "recall", "f1")


def scp_concepts() -> dict[str, set[str]]:
    """SCP code → concepts that express it."""
    table: dict[str, set[str]] = defaultdict(set)
    for c in concepts().values():
        for code in c.scp:
            table[code].add(c.id)
    return dict(table)


def gold_concepts(scp_codes: str | dict, min_likelihood: float = 0.0) -> tuple[set[str], set[str]]:
    """(gold concepts, excused concepts) of a record's ``scp_codes`` (a dict or its literal string).

    A code that maps to one concept makes it gold. A code that maps to several (``QWAVE``: Q waves
    of an anterior, inferior or lateral infarct) says only that one of them may be right: those
    concepts are *excused* — predicting them is neither a hit nor a false alarm, missing them is no miss.
    """
    codes = parse_scp_codes(scp_codes)
    table = scp_concepts()
    kept = [table.get(code, set()) for code, lik in codes.items() if float(lik) >= min_likelihood]
    gold = {cid for cids in kept if len(cids) == 1 for cid in cids}
    return gold, {cid for cids in kept if len(cids) > 1 for cid in cids} - gold


def predicted_concepts(entities: pd.DataFrame, uncertain: str = "positive") -> dict[object, set[str]]:
    """record_id → concepts extracted as present (and uncertain, if counted), never absent ones."""
    rank = {"absent": 0, "uncertain": 1, "present": 2}
    best: dict[tuple, int] = {}
    for rid, cid, pol in entities[["record_id", "concept_id", "polarity"]].itertuples(index=False):
        if cid != extract.UNMAPPED:
            best[(rid, cid)] = max(best.get((rid, cid), 0), rank[pol])
    keep = {2, 1} if uncertain == "positive" else {2}
    out: dict[object, set[str]] = defaultdict(set)
    for (rid, cid), r in best.items():
        if r in keep:
            out[rid].add(cid)
    return out


def score(gold: dict[object, tuple[set[str], set[str]]], predicted: dict[object, set[str]]) -> pd.DataFrame:
    """Per-concept and micro/macro precision, recall, F1 over the records of ``gold`` (see :func:`gold_concepts`)."""
    scored = sorted({cid for cid in concepts() if concepts()[cid].scp})
    counts = {cid: [0, 0, 0] for cid in scored}  # tp, fp, fn
    for rid, (truth, excused) in gold.items():
        pred = (predicted.get(rid, set()) & set(scored)) - excused
        for cid in truth & pred:
            counts[cid][0] += 1
        for cid in pred - truth:
            counts[cid][1] += 1
        for cid in truth - pred:
            counts[cid][2] += 1
    rows = [_row(cid, *counts[cid]) for cid in scored if sum(counts[cid])]
    table = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    table = table.sort_values(["support", "concept_id"], ascending=[False, True], ignore_index=True)
    tp, fp, fn = (int(table[c].sum()) for c in ("tp", "fp", "fn"))
    micro = _row("micro", tp, fp, fn)
    with_support = table[table.support > 0]
    macro = {**_row("macro", tp, fp, fn), **{m: float(with_support[m].mean()) for m in ("precision", "recall", "f1")}}
    macro["scp"] = f"mean over the {len(with_support)} concepts with support"
    return pd.concat([table, pd.DataFrame([micro, macro], columns=list(METRIC_COLUMNS))], ignore_index=True)


def _row(cid: str, tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    c = concepts().get(cid)
    return {"concept_id": cid, "name": c.name if c else cid, "scp": " ".join(c.scp) if c else "",
            "support": tp + fn, "n_predicted": tp + fp, "tp": tp, "fp": fp, "fn": fn,
            "precision": precision, "recall": recall, "f1": f1}  # fmt: skip


def evaluate(ptbxl_dir, backend: extract.ExtractionBackend, cache_path, work_dir, *, unit: str = "statement",
             uncertain: str = "positive", min_likelihood: float = 0.0) -> tuple[pd.DataFrame, dict]:  # fmt: skip
    """Run the stage on the PTB-XL reports and score it; (metrics table, stage counts)."""
    db = pd.read_csv(Path(ptbxl_dir) / "ptbxl_database.csv", usecols=["ecg_id", "report", "scp_codes"])
    manifest = Path(work_dir) / "ptbxl_reports.parquet"
    pq.write_table(pa.table({"record_id": pa.array(db.ecg_id, pa.int64()), "report": pa.array(db.report, pa.string())}),
                   manifest)  # fmt: skip
    out = Path(work_dir) / "extract"
    counts = extract.extract_reports(manifest, out, backend, cache_path, unit=unit, min_label_count=1)
    entities = pd.read_parquet(out / "entities.parquet")
    gold = {rid: gold_concepts(codes, min_likelihood) for rid, codes in zip(db.ecg_id, db.scp_codes)}
    return score(gold, predicted_concepts(entities, uncertain)), {**counts, "n_reports": len(db)}


def _tag(backend: extract.ExtractionBackend) -> str:
    tag = backend.name if backend.name == "lexicon" else f"{backend.name}_{backend.model}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", tag)


def main(argv: list[str] | None = None) -> int:
    from supreme_ecg.llm_backends import add_backend_arguments, backend_options

    parser = argparse.ArgumentParser(prog="python -m supreme_ecg.extraction_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--ptbxl", type=Path, default=fixtures_dir() / "ptbxl", help="folder with ptbxl_database.csv")
    parser.add_argument("--backend", default="lexicon", choices=list(extract.BACKENDS))
    parser.add_argument("--out", type=Path, default=Path("results/quality"))
    parser.add_argument("--cache", type=Path, default=None,
                        help=f"answer cache (default ${CACHE_ENV}, else cache/llm/answers.sqlite)")  # fmt: skip
    parser.add_argument("--unit", choices=list(extract.UNITS), default="statement")
    parser.add_argument("--uncertain", choices=["positive", "negative"], default="positive",
                        help="whether hedged findings count as predictions")  # fmt: skip
    parser.add_argument("--min-likelihood", type=float, default=0.0, help="SCP codes below this likelihood are not gold")
    parser.add_argument("--worst", type=int, default=8, help="weakest concepts to print")
    add_backend_arguments(parser)
    args = parser.parse_args(argv)
    if not (args.ptbxl / "ptbxl_database.csv").exists():
        parser.error(f"no ptbxl_database.csv in {args.ptbxl}")
    cache = args.cache or Path(os.environ.get(CACHE_ENV) or "cache/llm/answers.sqlite")
    backend = extract.make_backend(args.backend, **backend_options(args, args.backend))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="extraction_quality_") as work:
        table, counts = evaluate(args.ptbxl, backend, cache, work, unit=args.unit, uncertain=args.uncertain,
                                 min_likelihood=args.min_likelihood)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    tag = _tag(backend)
    table.to_csv(args.out / f"quality_{tag}.csv", index=False, float_format="%.4f")
    table.to_parquet(args.out / f"quality_{tag}.parquet", index=False)
    micro, macro = (table[table.concept_id == k].iloc[0] for k in ("micro", "macro"))
    per_concept = table[~table.concept_id.isin(["micro", "macro"])]
    scored = per_concept[per_concept.support > 0]
    summary = {
        "backend": backend.name, "model": backend.model, "prompt_version": backend.prompt_version,
        "unit": args.unit, "uncertain": args.uncertain, "min_likelihood": args.min_likelihood,
        "n_reports": counts["n_reports"], "n_concepts_scored": int(len(scored)),
        "micro_precision": float(micro.precision), "micro_recall": float(micro.recall), "micro_f1": float(micro.f1),
        "macro_f1": float(macro.f1), "n_failed_units": int(counts["n_failed_units"]),
        "n_backend_units": int(counts["n_backend_units"]), "seconds": round(time.perf_counter() - t0, 2),
    }  # fmt: skip
    (args.out / f"quality_{tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    worst = scored[scored.support >= 3].sort_values(["f1", "support"], ascending=[True, False]).head(args.worst)
    print(worst[["concept_id", "scp", "support", "tp", "fp", "fn", "precision", "recall", "f1"]]
          .to_string(index=False, float_format=lambda v: f"{v:.2f}"))  # fmt: skip
    print(json.dumps(summary))
    print(f"backend={backend.name} model={backend.model} reports={summary['n_reports']} "
          f"micro_f1={summary['micro_f1']:.4f} macro_f1={summary['macro_f1']:.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
