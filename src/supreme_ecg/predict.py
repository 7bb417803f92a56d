"""The predict command: score ECG files against free-text condition descriptions with a checkpoint.

Any record :func:`supreme_ecg.formats.read_record` reads (``.hea``, ``.mat``, ``.dat``, ``.h5`` or an
extension-less record path) is preprocessed exactly as the checkpoint's training shards were (the
``preprocess`` settings stored in the checkpoint) and scored against each query text by the
pre-trained fusion head: score = sigmoid of the model's logit. Records that cannot be read or that
preprocessing rejects keep their rows, with score NaN and the reason.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from supreme_ecg import catalogue

if TYPE_CHECKING:  # torch, pandas and the model load on use: cli.py builds this parser for every command
    import pandas as pd

    from supreme_ecg.preprocess import PreprocessConfig

log = logging.getLogger("supreme_ecg")

#: Columns of the predictions table (``class`` follows ``record`` when the queries are task classes).
PREDICTION_COLUMNS = ["record", "query", "score", "status", "reason", "detail"]
OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet"}


def checkpoint_preprocess(checkpoint: dict) -> PreprocessConfig:
    """The preprocessing the checkpoint's training shards were written with; ValueError when unknown."""
    from supreme_ecg.preprocess import PreprocessConfig

    if "preprocess" not in checkpoint:
        raise ValueError("the checkpoint has no 'preprocess' settings: it was written by an older version of "
                         "supreme_ecg; rerun pretrain to record how its training signals were preprocessed")
    if not checkpoint["preprocess"]:
        raise ValueError("the checkpoint's 'preprocess' settings are empty: its training shards did not record "
                         "their preprocessing (shards not written by preprocess_shard); rerun preprocess and pretrain")
    cfg = PreprocessConfig(**checkpoint["preprocess"])
    if checkpoint.get("n_samples") and int(checkpoint["n_samples"]) != cfg.n_samples:
        raise ValueError(f"checkpoint n_samples {checkpoint['n_samples']} != preprocess n_samples {cfg.n_samples}")
    return cfg


def prepare_record(path, cfg: PreprocessConfig) -> tuple[np.ndarray | None, str, str | None, str | None]:
    """(float32 (12, n_samples) signal or None, status, reason, detail) of one record file."""
    from supreme_ecg import formats
    from supreme_ecg.preprocess import RecordRejected, preprocess_record, read_source

    try:
        record = read_source(path)
    except formats.RecordReadError as exc:
        return None, "unreadable", exc.reason, exc.detail
    try:
        signal, _ = preprocess_record(record, cfg)
    except RecordRejected as exc:
        return None, "rejected", exc.reason, exc.detail
    return signal, "ok", None, None


def task_queries(task: str) -> list[tuple[str, str]]:
    """(class name, description) of each class of a benchmark task, in the task's order."""
    if task not in catalogue.task_names():
        raise ValueError(f"unknown task {task!r}; choose from {catalogue.task_names()}")
    return [(c.name, c.description) for c in catalogue.task_classes(task)]


def read_queries_file(path) -> list[str]:
    """One query per line; blank lines and lines starting with ``#`` are ignored."""
    lines = (line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _query_texts(queries) -> tuple[list[str], list[str] | None]:
    """(query texts, class names or None): queries are all texts or all (class name, text) pairs."""
    queries = list(queries)
    if not queries:
        raise ValueError("no queries given")
    if all(isinstance(q, str) for q in queries):
        return queries, None
    if all(not isinstance(q, str) and len(q) == 2 for q in queries):
        return [str(text) for _, text in queries], [str(name) for name, _ in queries]
    raise ValueError("queries must be all texts or all (class name, description) pairs")


def _output_format(path) -> str:
    """``csv`` or ``parquet`` by the extension of ``path``; ValueError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"output {path} must end in {' or '.join(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[suffix]


def write_predictions(frame: pd.DataFrame, path) -> None:
    """Write the table as CSV or Parquet (by extension), atomically."""
    path, kind = Path(path), _output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if kind == "csv":
        frame.to_csv(tmp, index=False)
    else:
        frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def predict(checkpoint_path, record_paths, queries, out_path=None, batch_size: int = 64, device: str = "auto",
            *, text_encoder=None) -> pd.DataFrame:
    """Score every record against every query; one row per record × query, records in the given order.

    ``queries``: texts, or (class name, description) pairs (e.g. :func:`task_queries`), which add a
    ``class`` column. Columns: ``record`` (the path as given), [``class``], ``query``, ``score``
    (sigmoid of the logit), ``status`` (``ok``, ``unreadable``, ``rejected``), ``reason`` and
    ``detail`` (why; missing for ``ok``). Records that cannot be read or are rejected by preprocessing
    are not dropped: their rows have score NaN, status and reason. Signals are preprocessed with the
    checkpoint's ``preprocess`` settings, as in training (a checkpoint without them is refused).
    ``out_path`` (``.csv`` or ``.parquet``) also writes the table; ``device="auto"`` takes a GPU when
    there is one; ``text_encoder`` (a name or a ready encoder) overrides the checkpoint's.
    """
    import pandas as pd
    import torch

    from supreme_ecg.model import load_checkpoint, model_from_checkpoint
    from supreme_ecg.pretrain import resolve_device
    from supreme_ecg.zeroshot import encode_queries

    if out_path is not None:
        _output_format(out_path)  # fail before any work
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be ≥ 1, not {batch_size}")
    texts, classes = _query_texts(queries)
    paths = [str(p) for p in record_paths]
    checkpoint = load_checkpoint(checkpoint_path)
    cfg = checkpoint_preprocess(checkpoint)
    dev = resolve_device(device)
    model = model_from_checkpoint(checkpoint).to(dev)
    _, query = encode_queries(checkpoint, texts, text_encoder)
    query = query.to(dev)

    scores = np.full((len(paths), len(texts)), np.nan, np.float32)
    outcomes, batch, rows = [], [], []

    def score_batch() -> None:
        x = torch.from_numpy(np.stack(batch)).to(dev)
        with torch.inference_mode():
            scores[rows] = torch.sigmoid(model(x, query).float()).cpu().numpy()
        batch.clear()
        rows.clear()

    for i, path in enumerate(paths):
        signal, *outcome = prepare_record(path, cfg)
        outcomes.append(outcome)
        if signal is None:
            log.warning("predict: %s not scored (%s: %s)", path, outcome[1], outcome[2])
            continue
        batch.append(signal)
        rows.append(i)
        if len(batch) == batch_size:
            score_batch()
    if batch:
        score_batch()

    n_q = len(texts)
    status, reason, detail = (list(column) for column in zip(*outcomes)) if outcomes else ([], [], [])
    frame = pd.DataFrame({
        "record": np.repeat(np.array(paths, dtype=object), n_q),
        "query": np.tile(np.array(texts, dtype=object), len(paths)),
        "score": scores.reshape(-1).astype(np.float64),
        "status": np.repeat(np.array(status, dtype=object), n_q),
        "reason": np.repeat(np.array(reason, dtype=object), n_q),
        "detail": np.repeat(np.array(detail, dtype=object), n_q),
    }, columns=PREDICTION_COLUMNS)
    if classes is not None:
        frame.insert(1, "class", np.tile(np.array(classes, dtype=object), len(paths)))
    if out_path is not None:
        write_predictions(frame, out_path)
    return frame


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``predict`` sub-command's arguments."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt written by pretrain")
    parser.add_argument("--records", nargs="+", required=True, metavar="FILE",
                        help="record files: .hea, .mat, .dat, .h5 or an extension-less WFDB record path")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--queries", nargs="+", metavar="TEXT", help="free-text condition descriptions")
    source.add_argument("--queries-file", metavar="FILE",
                        help="one query per line (blank lines and lines starting with # ignored)")
    source.add_argument("--classes", metavar="TASK",
                        help=f"the class descriptions of a benchmark task ({', '.join(catalogue.task_names())})")
    parser.add_argument("--out", required=True, help="predictions table: .csv or .parquet")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=64)


def run(args: argparse.Namespace) -> dict:
    """Run ``predict`` from parsed arguments; a summary of what was scored."""
    if args.classes:
        queries = task_queries(args.classes)
    elif args.queries_file:
        queries = read_queries_file(args.queries_file)
        if not queries:
            raise ValueError(f"{args.queries_file} holds no queries")
    else:
        queries = list(args.queries)
    frame = predict(args.checkpoint, args.records, queries, args.out, batch_size=args.batch_size,
                    device=args.device)
    per_record = frame.iloc[::len(queries)]
    failed = per_record[per_record["status"] != "ok"]
    return {"n_records": len(per_record), "n_ok": int(len(per_record) - len(failed)), "n_failed": int(len(failed)),
            "n_queries": len(queries), "out": str(args.out), "failed_reasons": dict(Counter(failed["reason"]))}
