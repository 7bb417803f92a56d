"""Extraction quality on real PTB-XL reports: extracted open entities vs the records' SCP codes.

    python -m supreme_ecg.extraction_quality --ptbxl ../shared/fixtures/ptbxl --backend lexicon --out results/quality/
    python -m supreme_ecg.extraction_quality --split heldout --backend lexicon --out results/quality/
    python -m supreme_ecg.extraction_quality --mimic-statements ../shared/fixtures/mimic_iv_ecg/statements.csv --top 50

The extraction stage (same splitting, cache and validation as the workflow; ``--direct`` calls the
backend on the split statements instead) runs on the ``report`` column of ``ptbxl_database.csv``.
Per record, gold = every SCP code of its ``scp_codes`` (any likelihood unless ``--min-likelihood``),
and predicted = the SCP codes that the AUDIT mapping (:mod:`supreme_ecg.label_codes`: exact name,
else text-encoder nearest neighbour above a threshold) gives the names of its present entities (and
uncertain ones with ``--uncertain positive``, the default). Every code of ``scp_statements.csv`` is
scored; macro-F1 averages the codes with support. Rows per language (de/en/sv, :func:`language`).

The split (``--split``): *tune* = every record of ``--ptbxl`` plus the records of ``--more`` whose
sha256(str(ecg_id)) lies in the lower half; *heldout* = the upper half of ``--more``; *all* =
``--ptbxl`` only. Rules are tuned on *tune* only. PTB-XL's codes are cardiologists' statements, not
a transcription of the report, so the figures are a floor, comparable across backends.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd

from supreme_ecg.datasets import parse_scp_codes
from supreme_ecg.label_codes import DEFAULT_THRESHOLD, CodeMapper, scp_names
from supreme_ecg.settings import fixtures_dir

METRIC_COLUMNS = ("code", "description", "support", "n_predicted", "tp", "fp", "fn", "precision", "recall", "f1")
SPLITS = ("all", "tune", "heldout")
_SV = re.compile(r"sinusrytm|v[äa]nster|h[öo]ger|f[öo]rmak|avvikande|normalt ekg|kammar|sk[äa]nkelblock|el-axel|"
                 r"s[åa]som vid|\bischemi\b|s[äa]nkning|eljest|b[öo]r [öo]verv|arytmi\b")  # fmt: skip
_DE = re.compile(r"sinusrhythmus|sinusbradykardie|sinustachykardie|lagetyp|linkstyp|rechtstyp|vorhof|schenkelblock|"
                 r"\babnorm\b|infarkt|isch[äa]mie|hypertrophie|unbest|wahrscheinlich|ableitungen|arrhythmie|"
                 r"extrasystole|\bekg\b|senkung|hebung|verl[äa]ngerung|\bund\b")  # fmt: skip


def language(report: str) -> str:
    """"sv", "de" or "en" by characteristic words (Swedish checked first: it shares "ekg", "infarkt")."""
    text = str(report).casefold()
    return "sv" if _SV.search(text) else "de" if _DE.search(text) else "en"


def in_lower_half(ecg_id) -> bool:
    """True if sha256(str(ecg_id)) falls in the lower half of its range (the *tune* half)."""
    return hashlib.sha256(str(ecg_id).encode()).digest()[0] < 128


def load_split(ptbxl_dir, split: str = "all", more_dir=None) -> pd.DataFrame:
    """ecg_id, report, scp_codes of the records of a split (see the module docstring)."""
    cols = ["ecg_id", "report", "scp_codes"]
    base = pd.read_csv(Path(ptbxl_dir) / "ptbxl_database.csv", usecols=cols)
    if split == "all":
        return base
    more = pd.read_csv(Path(more_dir) / "ptbxl_database.csv", usecols=cols)
    lower = more.ecg_id.map(in_lower_half)
    picked = pd.concat([base, more[lower]]) if split == "tune" else more[~lower]
    return picked.drop_duplicates("ecg_id").reset_index(drop=True)


def direct_entities(db: pd.DataFrame, backend) -> pd.DataFrame:
    """record_id, name, polarity of every entity, by calling ``backend`` on the split statements."""
    from supreme_ecg.extract.statements import segment_report

    units = {rid: segment_report(r, "statement").units for rid, r in zip(db.ecg_id, db.report)}
    distinct = list(dict.fromkeys(u for us in units.values() for u in us))
    answers = dict(zip(distinct, backend.extract(distinct)))
    rows = [(rid, e.name, e.polarity) for rid, us in units.items() for u in us for e in answers[u].entities]
    return pd.DataFrame(rows, columns=["record_id", "name", "polarity"])


def stage_entities(db: pd.DataFrame, backend, cache_path, work_dir) -> pd.DataFrame:
    """The same, through the extraction stage (:func:`supreme_ecg.extract.stage.extract_reports`)."""
    from supreme_ecg.extract.stage import extract_reports

    manifest = Path(work_dir) / "reports.csv"
    db.rename(columns={"ecg_id": "record_id"})[["record_id", "report"]].to_csv(manifest, index=False)
    extract_reports(manifest, Path(work_dir) / "extract", backend, cache_path, min_label_count=1)
    return pd.read_parquet(Path(work_dir) / "extract" / "entities.parquet", columns=["record_id", "name", "polarity"])


def predicted_codes(entities: pd.DataFrame, mapper: CodeMapper, uncertain: str = "positive") -> dict:
    """record_id → audit-mapped codes of its present (and, if counted, uncertain) entities."""
    keep = {"present", "uncertain"} if uncertain == "positive" else {"present"}
    kept = entities[entities.polarity.isin(keep)]
    code_of = {m.name: m.code for m in mapper.map(kept.name.unique())}
    out: dict = defaultdict(set)
    for rid, name in zip(kept.record_id, kept.name):
        if code_of[name]:
            out[rid].add(code_of[name])
    return out


def _row(code: str, description: str, tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"code": code, "description": description, "support": tp + fn, "n_predicted": tp + fp,
            "tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}  # fmt: skip


def score(gold: dict, predicted: dict, codes: dict[str, str]) -> pd.DataFrame:
    """Per-code rows (every code of ``codes``: code → description) plus ``micro`` and ``macro`` rows."""
    counts = {c: [0, 0, 0] for c in codes}
    for rid, truth in gold.items():
        pred = predicted.get(rid, set()) & set(codes)
        for c in truth & pred:
            counts[c][0] += 1
        for c in pred - truth:
            counts[c][1] += 1
        for c in truth - pred:
            counts[c][2] += 1
    table = pd.DataFrame([_row(c, codes[c], *counts[c]) for c in codes], columns=list(METRIC_COLUMNS))
    table = table.sort_values(["support", "code"], ascending=[False, True], ignore_index=True)
    tp, fp, fn = (int(table[k].sum()) for k in ("tp", "fp", "fn"))
    with_support = table[table.support > 0]
    macro = {**_row("macro", f"mean over the {len(with_support)} codes with support", tp, fp, fn),
             **{m: float(with_support[m].mean()) if len(with_support) else 0.0 for m in ("precision", "recall", "f1")}}  # fmt: skip
    micro = _row("micro", "all codes pooled", tp, fp, fn)
    return pd.concat([table, pd.DataFrame([micro, macro], columns=list(METRIC_COLUMNS))], ignore_index=True)


def evaluate(db: pd.DataFrame, entities: pd.DataFrame, scp_csv, *, threshold: float = DEFAULT_THRESHOLD,
             uncertain: str = "positive", min_likelihood: float = 0.0, encoder=None) -> tuple[pd.DataFrame, pd.DataFrame, CodeMapper]:  # fmt: skip
    """(per-code table, per-language table, the mapper) for the records of ``db``."""
    statements = pd.read_csv(Path(scp_csv), index_col=0)
    codes = {str(c): str(d) for c, d in statements["description"].items()}
    mapper = CodeMapper(scp_names(scp_csv), threshold, encoder)
    predicted = predicted_codes(entities, mapper, uncertain)
    gold = {rid: {c for c, lik in parse_scp_codes(s).items() if lik >= min_likelihood}
            for rid, s in zip(db.ecg_id, db.scp_codes)}  # fmt: skip
    table = score(gold, predicted, codes)
    langs = db.report.map(language)
    rows = []
    for lang in sorted(langs.unique()):
        ids = set(db.ecg_id[langs == lang])
        t = score({r: g for r, g in gold.items() if r in ids}, predicted, codes).set_index("code")
        rows.append({"language": lang, "n_reports": len(ids), "micro_precision": t.loc["micro", "precision"],
                     "micro_recall": t.loc["micro", "recall"], "micro_f1": t.loc["micro", "f1"],
                     "macro_f1": t.loc["macro", "f1"]})  # fmt: skip
    return table, pd.DataFrame(rows), mapper


def print_mimic(path, top: int = 50) -> None:
    """Print the ``top`` commonest MIMIC statements with their lexicon entities."""
    from supreme_ecg.extract.lexicon import statement_entities

    table = pd.read_csv(path).sort_values("n_records", ascending=False).head(top)
    for statement, n in zip(table.statement, table.n_records):
        ents = statement_entities(statement)
        shown = "; ".join(
            f"{e['name']} [{e['polarity']}" + "".join(f", {k}={v}" for k, v in
                                                      (("leads", ",".join(e["qualifiers"]["leads"])),
                                                       ("acuity", e["qualifiers"]["acuity"]),
                                                       ("severity", e["qualifiers"]["severity"])) if v) + "]"
            for e in ents) or "(no entity)"  # fmt: skip
        print(f"{n:>7}  {statement}  ->  {shown}")


def _tag(backend) -> str:
    tag = backend.name if backend.name == "lexicon" else f"{backend.name}_{backend.model}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", tag)


def _parser() -> argparse.ArgumentParser:
    from supreme_ecg.extract.backends import BACKENDS
    from supreme_ecg.llm_backends import add_backend_arguments

    p = argparse.ArgumentParser(prog="python -m supreme_ecg.extraction_quality", description=__doc__.splitlines()[0])
    p.add_argument("--ptbxl", type=Path, default=fixtures_dir() / "ptbxl", help="folder with ptbxl_database.csv")
    p.add_argument("--more", type=Path, default=fixtures_dir() / "ptbxl_reports", help="second folder (split half)")
    p.add_argument("--split", choices=SPLITS, default="all")
    p.add_argument("--backend", default="lexicon", choices=list(BACKENDS))
    p.add_argument("--out", type=Path, default=Path("results/quality"))
    p.add_argument("--cache", type=Path, default=None, help="answer cache (default $SUPREME_LLM_CACHE, else cache/llm/answers.sqlite)")
    p.add_argument("--direct", action="store_true", help="call the backend on split statements, not via the stage")
    p.add_argument("--uncertain", choices=["positive", "negative"], default="positive")
    p.add_argument("--min-likelihood", type=float, default=0.0, help="SCP codes below this likelihood are not gold")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="audit nearest-neighbour cosine threshold")
    p.add_argument("--worst", type=int, default=10, help="weakest codes to print")
    p.add_argument("--mimic-statements", type=Path, default=None, help="print entities of these MIMIC statements")
    p.add_argument("--top", type=int, default=50)
    add_backend_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from supreme_ecg.extract.backends import make_backend
    from supreme_ecg.llm_backends import backend_options
    from supreme_ecg.llm_cache import CACHE_ENV

    parser = _parser()
    args = parser.parse_args(argv)
    if args.mimic_statements is not None:
        print_mimic(args.mimic_statements, args.top)
        return 0
    if not (args.ptbxl / "ptbxl_database.csv").exists():
        parser.error(f"no ptbxl_database.csv in {args.ptbxl}")
    db = load_split(args.ptbxl, args.split, args.more)
    backend = make_backend(args.backend, **backend_options(args, args.backend))
    cache = args.cache or Path(os.environ.get(CACHE_ENV) or "cache/llm/answers.sqlite")
    t0 = time.perf_counter()
    if args.direct:
        entities = direct_entities(db, backend)
    else:
        with tempfile.TemporaryDirectory(prefix="extraction_quality_") as work:
            entities = stage_entities(db, backend, cache, work)
    table, langs, mapper = evaluate(db, entities, args.ptbxl / "scp_statements.csv", threshold=args.threshold,
                                    uncertain=args.uncertain, min_likelihood=args.min_likelihood)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    tag = _tag(backend) + ("" if args.split == "all" else f"_{args.split}")
    table.to_csv(args.out / f"quality_{tag}.csv", index=False, float_format="%.4f")
    table.to_parquet(args.out / f"quality_{tag}.parquet", index=False)
    langs.to_csv(args.out / f"quality_{tag}_languages.csv", index=False, float_format="%.4f")
    mapper.table(sorted(entities.name.unique())).to_csv(args.out / f"code_map_{tag}.csv", index=False, float_format="%.4f")
    micro, macro = (table[table.code == k].iloc[0] for k in ("micro", "macro"))
    scored = table[~table.code.isin(["micro", "macro"]) & (table.support > 0)]
    summary = {
        "backend": backend.name, "model": backend.model, "prompt_version": backend.prompt_version,
        "split": args.split, "uncertain": args.uncertain, "min_likelihood": args.min_likelihood,
        "threshold": args.threshold, "n_reports": len(db), "n_codes_scored": int(len(scored)),
        "micro_precision": float(micro.precision), "micro_recall": float(micro.recall), "micro_f1": float(micro.f1),
        "macro_f1": float(macro.f1), "languages": langs.to_dict(orient="records"),
        "seconds": round(time.perf_counter() - t0, 2),
    }  # fmt: skip
    (args.out / f"quality_{tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    worst = scored[scored.support >= 3].sort_values(["f1", "support"], ascending=[True, False]).head(args.worst)
    print(worst[["code", "support", "tp", "fp", "fn", "precision", "recall", "f1"]]
          .to_string(index=False, float_format=lambda v: f"{v:.2f}"))  # fmt: skip
    print(langs.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(json.dumps({k: v for k, v in summary.items() if k != "languages"}))
    print(f"micro_f1={summary['micro_f1']:.4f} macro_f1={summary['macro_f1']:.4f} n_reports={summary['n_reports']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
