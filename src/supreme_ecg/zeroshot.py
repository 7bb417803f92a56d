"""The zero-shot stage: score downstream ECGs against text descriptions of classes never trained on.

Each class description (``catalogue.task_classes(task)[i].description``) is embedded by the
checkpoint's text encoder and used as a query of the pre-trained fusion head — the same forward
pass as pre-training. Metric: per-class ROC AUC (NaN without positives or negatives), macro AUC
over the classes with a defined AUC, split into classes seen / unseen in pre-training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from supreme_ecg import catalogue
from supreme_ecg.settings import usable_threads
from supreme_ecg.model import TextEncoder, load_checkpoint, model_from_checkpoint
from supreme_ecg.preprocess import read_signals
from supreme_ecg.pretrain import iter_row_groups, read_row_group, resolve_device

SUMMARY_COLUMNS = ["task", "n_classes", "n_classes_evaluated", "macro_auc", "macro_auc_seen",
                   "macro_auc_unseen", "macro_auc_composite", "n_seen", "n_unseen", "n_composite"]
#: seen = the class's own concept was a pre-training label; unseen = it was not (unseen by name);
#: composite = a grouping class (e.g. a PTB-XL superclass) whose name was never a label itself
CLASS_KINDS = ("seen", "unseen", "composite")
PER_CLASS_SCHEMA = pa.schema([
    ("task", pa.string()), ("class", pa.string()), ("description", pa.string()), ("n_pos", pa.int64()),
    ("n_neg", pa.int64()), ("auc", pa.float64()), ("seen_in_pretraining", pa.bool_()),
    ("class_kind", pa.string()), ("concepts", pa.list_(pa.string())), ("members", pa.list_(pa.string())),
])


def _text_encoder(checkpoint: dict, text_encoder) -> TextEncoder:
    """The checkpoint's text encoder, or the one given (a name or a ready encoder)."""
    if text_encoder is None or text_encoder == checkpoint["text_encoder"]:
        return TextEncoder(checkpoint["text_encoder"], checkpoint.get("text_pooling"))
    return TextEncoder(text_encoder) if isinstance(text_encoder, str) else text_encoder


def pretraining_concepts(vocabulary_path, checkpoint: dict) -> set[str]:
    """Concept ids of the pre-training vocabulary (the checkpoint's labels when no path is given)."""
    if vocabulary_path is None:
        return {str(c) for c in checkpoint["label_concepts"]}
    return {str(c) for c in pd.read_parquet(vocabulary_path, columns=["concept_id"])["concept_id"]}


def _read_task_labels(path, classes, splits) -> pd.DataFrame:
    """Task labels of the chosen splits, checked for one column per class."""
    labels = pd.read_parquet(path)
    missing = [c.name for c in classes if c.name not in labels.columns]
    if missing:
        raise ValueError(f"{path} lacks class columns {missing}")
    if splits is not None:
        labels = labels[labels["split"].isin(list(splits))]
    labels = labels.drop_duplicates("record_id").reset_index(drop=True)
    labels["record_id"] = labels["record_id"].astype(str)
    return labels


def score_records(model, query: torch.Tensor, shard_paths, record_ids, batch_size: int = 64,
                  device="cpu") -> dict[str, np.ndarray]:
    """record_id → sigmoid scores (N,) for the wanted records found in the shards (first occurrence)."""
    wanted, scores = set(record_ids), {}
    model.eval()
    for path, rg, batch in iter_row_groups(shard_paths, ["record_id"]):
        ids = [str(r) for r in batch.column("record_id").to_pylist()]
        rows = [i for i, r in enumerate(ids) if r in wanted and r not in scores]
        if not rows:
            continue
        signals = read_signals(read_row_group(path, rg, ["signal"]))[rows]
        with torch.inference_mode():
            for i in range(0, len(rows), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(signals[i:i + batch_size])).to(device)
                prob = torch.sigmoid(model(x, query).float()).cpu().numpy()
                for j, p in zip(rows[i:i + batch_size], prob):
                    scores[ids[j]] = p
    return scores


def class_auc(truth: np.ndarray, score: np.ndarray) -> tuple[int, int, float]:
    """(n_pos, n_neg, AUC) over known entries (label ≥ 0); AUC NaN without both classes."""
    known = truth >= 0
    y, s = truth[known] > 0, score[known]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return n_pos, n_neg, (float(roc_auc_score(y, s)) if n_pos and n_neg else float("nan"))


def task_summary(per_class: pd.DataFrame, task: str | None = None) -> dict:
    """One summary row (``SUMMARY_COLUMNS``) from a per-class table."""
    auc, kind = per_class["auc"].astype(float), per_class["class_kind"]

    def mean(values: pd.Series) -> float:
        values = values.dropna()
        return float(values.mean()) if len(values) else float("nan")

    row = {
        "task": task or str(per_class["task"].iloc[0]), "n_classes": int(len(per_class)),
        "n_classes_evaluated": int(auc.notna().sum()), "macro_auc": mean(auc),
    }
    row.update({f"macro_auc_{k}": mean(auc[kind == k]) for k in CLASS_KINDS})
    row.update({f"n_{k}": int((kind == k).sum()) for k in CLASS_KINDS})
    return row


def class_kind(benchmark_class: catalogue.BenchmarkClass, pretraining_ids: set[str]) -> str:
    """seen / unseen / composite (see :data:`CLASS_KINDS`)."""
    if any(k in pretraining_ids for k in benchmark_class.concepts):
        return "seen"
    return "composite" if benchmark_class.members else "unseen"


def plot_roc(task: str, labels: pd.DataFrame, scores: pd.DataFrame, per_class: pd.DataFrame, path) -> None:
    """``roc.png``: one ROC curve per class (seen dashed, unseen solid), AUC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 6))
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    for k, row in enumerate(per_class.to_dict("records")):
        if np.isnan(row["auc"]):
            continue
        truth = labels[row["class"]].to_numpy()
        known = truth >= 0
        fpr, tpr, _ = roc_curve(truth[known] > 0, scores[row["class"]].to_numpy()[known])
        seen = bool(row["seen_in_pretraining"])
        ax.plot(fpr, tpr, ls="--" if seen else "-", lw=1.1, color=plt.cm.tab20(k % 20),
                label=f"{row['class']} {row['auc']:.3f}{' (seen)' if seen else ''}")
    summary = task_summary(per_class, task)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title=f"{task}: zero-shot macro AUC {summary['macro_auc']:.3f} "
                 f"({summary['n_classes_evaluated']}/{summary['n_classes']} classes; dashed = seen)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 + len(per_class) // 25)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def evaluate_task(task, checkpoint_path, shard_paths, task_labels_path, vocabulary_path, out_dir,
                  splits=("test",), text_encoder=None, batch_size: int = 64, device: str = "auto",
                  threads: int | None = None) -> dict:
    """Zero-shot evaluation of one task → ``per_class.parquet``, ``scores.parquet``, ``roc.png``.

    ``splits=None`` takes every split; ``text_encoder`` (a name or an encoder) overrides the checkpoint's.
    """
    if threads:
        torch.set_num_threads(usable_threads(threads))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = catalogue.task_classes(task)
    dev = resolve_device(device)
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint).to(dev)
    text = _text_encoder(checkpoint, text_encoder)
    query = text.encode([c.description for c in classes]).to(dev)
    if query.shape[1] != checkpoint["config"]["head"]["text_dim"]:
        raise ValueError(f"text encoder {text.name} gives {query.shape[1]}-d embeddings; the checkpoint "
                         f"was trained with {checkpoint['config']['head']['text_dim']}-d")
    labels = _read_task_labels(task_labels_path, classes, splits)
    found = score_records(model, query, shard_paths, labels["record_id"], batch_size, dev)
    n_missing = int((~labels["record_id"].isin(found)).sum())
    labels = labels[labels["record_id"].isin(found)].reset_index(drop=True)
    matrix = np.stack([found[r] for r in labels["record_id"]]) if len(labels) else np.zeros((0, len(classes)))
    scores = pd.DataFrame(matrix.astype(np.float32), columns=[c.name for c in classes])
    scores.insert(0, "split", labels["split"].astype(str).to_numpy())
    scores.insert(0, "record_id", labels["record_id"].to_numpy())
    seen_ids = pretraining_concepts(vocabulary_path, checkpoint)
    rows = []
    for c in classes:
        n_pos, n_neg, auc = class_auc(labels[c.name].fillna(-1).to_numpy(np.int64), scores[c.name].to_numpy())
        kind = class_kind(c, seen_ids)
        rows.append({"task": task, "class": c.name, "description": c.description, "n_pos": n_pos, "n_neg": n_neg,
                     "auc": auc, "seen_in_pretraining": kind == "seen", "class_kind": kind,
                     "concepts": list(c.concepts), "members": list(c.members)})
    per_class = pd.DataFrame(rows, columns=PER_CLASS_SCHEMA.names)
    pq.write_table(pa.Table.from_pandas(per_class, schema=PER_CLASS_SCHEMA, preserve_index=False),
                   out_dir / "per_class.parquet")
    scores.to_parquet(out_dir / "scores.parquet", index=False)
    plot_roc(task, labels.assign(**{c.name: labels[c.name].fillna(-1) for c in classes}), scores, per_class,
             out_dir / "roc.png")
    return {**task_summary(per_class, task), "splits": None if splits is None else list(splits),
            "n_records": int(len(labels)),
            "n_missing_signal": n_missing, "text_encoder": text.name, "checkpoint_epoch": int(checkpoint["epoch"])}


def _format(value, percent: bool = False) -> str:
    """Markdown cell: percentages with two decimals, '–' for NaN."""
    if isinstance(value, float) and np.isnan(value):
        return "–"
    return f"{100 * value:.2f}" if percent else str(value)


def write_summary_md(summary: pd.DataFrame, path) -> None:
    """``summary.md``: the summary table (AUC in %) with a one-paragraph explanation."""
    auc_cols = {c for c in SUMMARY_COLUMNS if c.startswith("macro_auc")}
    lines = [
        "# Zero-shot results", "",
        "Macro ROC AUC (%) over the classes with a defined AUC (positives and negatives present); "
        "*seen* = the class's concept is a pre-training label; *unseen* = it is not (the class name "
        "never occurs in a pre-training report); *composite* = a grouping class (e.g. a PTB-XL "
        "superclass) whose own name was never a label. The `average` row is the mean over tasks "
        "of each AUC (tasks with NaN left out) and the sum of the class counts.", "",
        "| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS),
    ]
    for row in summary.to_dict("records"):
        lines.append("| " + " | ".join(_format(row[c], c in auc_cols) for c in SUMMARY_COLUMNS) + " |")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def summarise(per_class_paths, out_csv) -> pd.DataFrame:
    """``summary.csv`` (+ ``summary.md`` beside it): one row per task and a final ``average`` row."""
    rows = [task_summary(pd.read_parquet(p)) for p in per_class_paths]
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    average = {"task": "average"}
    for col in SUMMARY_COLUMNS[1:]:
        if col.startswith("macro_auc"):
            values = table[col].dropna()
            average[col] = float(values.mean()) if len(values) else float("nan")
        else:
            average[col] = int(table[col].sum())
    table = pd.concat([table, pd.DataFrame([average], columns=SUMMARY_COLUMNS)], ignore_index=True)
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False)
    write_summary_md(table, out_csv.with_suffix(".md"))
    return table
