"""The zero-shot stage: score downstream ECGs against text descriptions of classes, seen or not.

Each class description (a benchmark task's, or a user task's stored with its label table) is embedded
by the checkpoint's text encoder and used as a query of the pre-trained fusion head — the same
forward pass as pre-training. Metric: per-class ROC AUC (NaN without positives or negatives), macro AUC
over the classes with a defined AUC, overall and split into classes seen / unseen in pre-training.

Seen or unseen is *measured*, never declared: a class is seen when its description would have been
standardised into one of the checkpoint's training labels (:func:`measure_seen`); the nearest label,
its similarity and the form it matched are written beside the AUC as the evidence.
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
from supreme_ecg.extract.standardise import (
    DEFAULT_MERGE_THRESHOLD, cosine_matrix, is_seen, normalise_surface, order_key,
)
from supreme_ecg.settings import usable_threads
from supreme_ecg.model import TextEncoder, load_checkpoint, model_from_checkpoint
from supreme_ecg.preprocess import read_signals
from supreme_ecg.pretrain import iter_row_groups, read_label_vocabulary, read_row_group, resolve_device

SUMMARY_COLUMNS = ["task", "n_classes", "n_classes_evaluated", "macro_auc", "macro_auc_seen",
                   "macro_auc_unseen", "n_seen", "n_unseen", "n_seen_evaluated", "n_unseen_evaluated"]
#: seen = the description would have been standardised into a training label (see measure_seen);
#: unseen = it would not (no training label's name or member form is close enough, or only conflicting ones)
CLASS_KINDS = ("seen", "unseen")
PER_CLASS_SCHEMA = pa.schema([
    ("task", pa.string()), ("class", pa.string()), ("description", pa.string()), ("n_pos", pa.int64()),
    ("n_neg", pa.int64()), ("auc", pa.float64()), ("nearest_label", pa.string()),
    ("nearest_label_name", pa.string()), ("nearest_form", pa.string()), ("nearest_label_similarity", pa.float64()),
    ("seen", pa.bool_()), ("class_kind", pa.string()), ("seen_threshold", pa.float64()),
])


def _text_encoder(checkpoint: dict, text_encoder) -> TextEncoder:
    """The checkpoint's text encoder, or the one given (a name or a ready encoder)."""
    if text_encoder is None or text_encoder == checkpoint["text_encoder"]:
        return TextEncoder(checkpoint["text_encoder"], checkpoint.get("text_pooling"))
    return TextEncoder(text_encoder) if isinstance(text_encoder, str) else text_encoder


def training_vocabulary(checkpoint: dict, vocabulary_path=None) -> tuple[list[str], list[str], list[list[str]]]:
    """(label ids, names, member surface forms) the checkpoint was trained on.

    They come from the checkpoint (``label_ids``, ``label_names``, ``label_members``); a
    ``label_vocabulary.parquet`` is optional: it fills what an older checkpoint lacks, and must
    list the same labels.
    """
    names = [str(n) for n in checkpoint["label_names"]]
    ids = [str(i) for i in checkpoint["label_ids"]] if "label_ids" in checkpoint else None
    members = [[str(f) for f in m] for m in checkpoint["label_members"]] if "label_members" in checkpoint else None
    if vocabulary_path is not None:
        v_ids, v_names, v_members = read_label_vocabulary(vocabulary_path)
        if (ids is not None and v_ids != ids) or (ids is None and v_names != names):
            raise ValueError(f"{vocabulary_path} lists other labels than the checkpoint was trained on")
        ids = v_ids if ids is None else ids
        members = v_members if members is None else members
    return ids or list(names), names, members if members is not None else [[] for _ in names]


def measure_seen(descriptions, label_ids, label_names, label_members, encoder,
                 threshold: float = DEFAULT_MERGE_THRESHOLD) -> list[dict]:
    """Per description: its nearest training label and whether the class counts as seen.

    A label is represented by its name *and* its member surface forms (the phrasings the reports
    used for it, which pre-training also used as queries). Description and forms are compared as
    :func:`~supreme_ecg.extract.standardise.normalise_surface` forms, by the cosine of ``encoder``
    embeddings (a form with the same ``order_key`` — same words — counts as 1.0, as in
    standardisation). The class is *seen* when some form passes ``standardise.is_seen`` (same
    normalised text, or cosine ≥ ``threshold`` without a modifier conflict such as left/right or
    complete/incomplete): the description would have been standardised into that label. The nearest
    label is then the one of the most similar such form. Otherwise the class is *unseen* and the
    nearest label is the one of the most similar form overall, kept as evidence.
    Returns dicts with ``nearest_label`` (the ``label`` id), ``nearest_label_name``, ``nearest_form``,
    ``nearest_label_similarity`` and ``seen``.
    """
    queries = [normalise_surface(d) for d in descriptions]
    forms, owner = [], []
    for k, (name, members) in enumerate(zip(label_names, label_members)):
        for form in dict.fromkeys([normalise_surface(name), *(normalise_surface(m) for m in members)]):
            if form:
                forms.append(form)
                owner.append(k)
    if not forms:
        return [{"nearest_label": None, "nearest_label_name": None, "nearest_form": None,
                 "nearest_label_similarity": float("nan"), "seen": False} for _ in queries]
    sims = cosine_matrix(encoder, queries, forms).astype(np.float64) if queries else np.zeros((0, len(forms)))
    same_words = {}
    for j, form in enumerate(forms):
        same_words.setdefault(order_key(form), []).append(j)
    results = []
    for i, query in enumerate(queries):
        row = np.minimum(sims[i], 1.0)
        row[same_words.get(order_key(query), [])] = 1.0
        order = np.argsort(-row, kind="stable")
        candidates = [int(j) for j in order if row[j] >= threshold]
        chosen = next((j for j in candidates if is_seen(query, forms[j], float(row[j]), threshold)), None)
        j = int(order[0]) if chosen is None else chosen
        results.append({"nearest_label": label_ids[owner[j]], "nearest_label_name": label_names[owner[j]],
                        "nearest_form": forms[j], "nearest_label_similarity": float(row[j]),
                        "seen": chosen is not None})
    return results


def task_classes(task: str, task_labels_path) -> list[catalogue.BenchmarkClass]:
    """The task's classes: the definition stored in its label table (benchmark or user task), else the
    benchmark's (a label table written without one)."""
    from supreme_ecg.datasets import TASK_METADATA_KEY, task_classes_from_labels

    if TASK_METADATA_KEY in (pq.read_schema(task_labels_path).metadata or {}):
        return task_classes_from_labels(task_labels_path)
    return catalogue.task_classes(task)


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
    row.update({f"n_{k}_evaluated": int((auc.notna() & (kind == k)).sum()) for k in CLASS_KINDS})
    return row


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
        seen = bool(row["seen"])
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
                  threads: int | None = None, seen_threshold: float | None = None) -> dict:
    """Zero-shot evaluation of one task → ``per_class.parquet``, ``scores.parquet``, ``roc.png``.

    ``splits=None`` takes every split; ``text_encoder`` (a name or an encoder) overrides the checkpoint's;
    ``vocabulary_path`` (optional, may be None) is checked against the checkpoint's labels;
    ``seen_threshold`` (default ``standardise.DEFAULT_MERGE_THRESHOLD``) is the cosine from which a
    class description counts as the same finding as a training label (see :func:`measure_seen`).
    """
    threshold = DEFAULT_MERGE_THRESHOLD if seen_threshold is None else float(seen_threshold)
    if threads:
        torch.set_num_threads(usable_threads(threads))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = task_classes(task, task_labels_path)
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
    ids, names, members = training_vocabulary(checkpoint, vocabulary_path)
    nearest = measure_seen([c.description for c in classes], ids, names, members, text, threshold)
    rows = []
    for c, near in zip(classes, nearest):
        n_pos, n_neg, auc = class_auc(labels[c.name].fillna(-1).to_numpy(np.int64), scores[c.name].to_numpy())
        rows.append({"task": task, "class": c.name, "description": c.description, "n_pos": n_pos, "n_neg": n_neg,
                     "auc": auc, **near, "class_kind": "seen" if near["seen"] else "unseen",
                     "seen_threshold": threshold})
    per_class = pd.DataFrame(rows, columns=PER_CLASS_SCHEMA.names)
    pq.write_table(pa.Table.from_pandas(per_class, schema=PER_CLASS_SCHEMA, preserve_index=False),
                   out_dir / "per_class.parquet")
    scores.to_parquet(out_dir / "scores.parquet", index=False)
    plot_roc(task, labels.assign(**{c.name: labels[c.name].fillna(-1) for c in classes}), scores, per_class,
             out_dir / "roc.png")
    return {**task_summary(per_class, task), "splits": None if splits is None else list(splits),
            "n_records": int(len(labels)),
            "n_missing_signal": n_missing, "text_encoder": text.name, "checkpoint_epoch": int(checkpoint["epoch"]),
            "seen_threshold": threshold, "n_training_labels": len(ids)}


def _format(value, percent: bool = False) -> str:
    """Markdown cell: percentages with two decimals, '–' for NaN."""
    if isinstance(value, float) and np.isnan(value):
        return "–"
    return f"{100 * value:.2f}" if percent else str(value)


def write_summary_md(summary: pd.DataFrame, path, per_class: list[pd.DataFrame] = ()) -> None:
    """``summary.md``: the summary table (AUC in %), what seen/unseen means, and per task each class with
    its positives, AUC, kind and the nearest training label with its similarity (the evidence)."""
    auc_cols = {c for c in SUMMARY_COLUMNS if c.startswith("macro_auc")}
    thresholds = sorted({float(x) for frame in per_class if "seen_threshold" in frame
                         for x in frame["seen_threshold"].dropna()})
    threshold = ", ".join(f"{x:.2f}" for x in thresholds) or "the configured threshold"
    lines = [
        "# Zero-shot results", "",
        "Macro ROC AUC (%) over the classes with a defined AUC (positives and negatives present), over all "
        "classes and split into *seen* and *unseen*. Seen/unseen is measured, not declared: a class is "
        "*seen* when its description would have been standardised into one of the checkpoint's training "
        "labels — its normalised text equals the label's name or one of its member surface forms (the "
        "phrasings the reports used), or their cosine similarity under the checkpoint's text encoder is "
        f"≥ {threshold} without a modifier conflict (left/right, complete/incomplete, …); otherwise "
        "*unseen*. `n_seen`/`n_unseen` count classes, `n_*_evaluated` those with a defined AUC. The "
        "`average` row is the mean over tasks of each AUC (tasks with NaN left out) and the sum of the "
        "class counts.", "",
        "| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS),
    ]
    for row in summary.to_dict("records"):
        lines.append("| " + " | ".join(_format(row[c], c in auc_cols) for c in SUMMARY_COLUMNS) + " |")
    for frame in per_class:
        if not len(frame):
            continue
        lines += ["", f"## {frame['task'].iloc[0]}", "",
                  "| class | description | n_pos | AUC (%) | kind | nearest label | matched form | similarity |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in frame.to_dict("records"):
            sim = row.get("nearest_label_similarity", float("nan"))
            cells = [row["class"], row.get("description", ""), row.get("n_pos", ""), _format(float(row["auc"]), True),
                     row["class_kind"], row.get("nearest_label_name") or "–", row.get("nearest_form") or "–",
                     "–" if sim is None or np.isnan(sim) else f"{sim:.3f}"]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def summarise(per_class_paths, out_csv) -> pd.DataFrame:
    """``summary.csv`` (+ ``summary.md`` beside it): one row per task and a final ``average`` row."""
    frames = [pd.read_parquet(p) for p in per_class_paths]
    rows = [task_summary(frame) for frame in frames]
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
    write_summary_md(table, out_csv.with_suffix(".md"), frames)
    return table
