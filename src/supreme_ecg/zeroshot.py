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

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from sklearn.metrics import roc_auc_score

from supreme_ecg.bootstrap import (
    LEVEL,
    N_RESAMPLES,
    SEED,
    average_over_tasks,
    bootstrap_aucs,
    samples_table,
    write_bootstrap_samples,
)
from supreme_ecg.config_schema import schema_defaults
from supreme_ecg.datasets import task_classes
from supreme_ecg.extract.standardise import (
    DEFAULT_MERGE_THRESHOLD,
    cosine_matrix,
    is_seen,
    normalise_surface,
    order_key,
)
from supreme_ecg.model import TextEncoder, load_checkpoint, model_from_checkpoint
from supreme_ecg.pretrain import read_label_vocabulary, resolve_device
from supreme_ecg.pretrain.shards import iter_wanted_signals
from supreme_ecg.settings import usable_threads

log = logging.getLogger("supreme_ecg")

#: the config schema's ``zeroshot`` defaults: the splits scored, the seen threshold (null: derived)
_DEFAULTS = schema_defaults("zeroshot")
SUMMARY_COLUMNS = ["task", "n_classes", "n_classes_evaluated", "macro_auc", "ci_low", "ci_high",
                   "macro_auc_seen", "seen_ci_low", "seen_ci_high", "macro_auc_unseen", "unseen_ci_low",
                   "unseen_ci_high", "random_init_macro_auc", "random_init_ci_low", "random_init_ci_high",
                   "n_seen", "n_unseen", "n_seen_evaluated", "n_unseen_evaluated", "n_test_records", "n_redraws",
                   "splits", "interval_note"]
#: seen = the description would have been standardised into a training label (see measure_seen);
#: unseen = it would not (no training label's name or member form is close enough, or only conflicting ones)
CLASS_KINDS = ("seen", "unseen")
PER_CLASS_SCHEMA = pa.schema([
    ("task", pa.string()), ("class", pa.string()), ("description", pa.string()), ("encoder", pa.string()),
    ("n_pos", pa.int64()), ("n_neg", pa.int64()), ("auc", pa.float64()), ("ci_low", pa.float64()),
    ("ci_high", pa.float64()), ("nearest_label", pa.string()),
    ("nearest_label_name", pa.string()), ("nearest_form", pa.string()), ("nearest_label_similarity", pa.float64()),
    ("seen", pa.bool_()), ("class_kind", pa.string()), ("seen_threshold", pa.float64()),
])


def _text_encoder(checkpoint: dict, text_encoder) -> TextEncoder:
    """The checkpoint's text encoder, or the one given (a name or a ready encoder)."""
    if text_encoder is None or text_encoder == checkpoint["text_encoder"]:
        return TextEncoder(checkpoint["text_encoder"], checkpoint.get("text_pooling"))
    return TextEncoder(text_encoder) if isinstance(text_encoder, str) else text_encoder


def encode_queries(checkpoint: dict, texts: list[str], text_encoder=None) -> tuple[TextEncoder, torch.Tensor]:
    """(text encoder, query embeddings (N, D)) for a checkpoint: its own encoder unless one is given;
    an encoder whose width differs from the one the checkpoint was trained with is refused."""
    text = _text_encoder(checkpoint, text_encoder)
    query = text.encode(list(texts))
    text_dim = checkpoint["config"]["head"]["text_dim"]
    if query.shape[1] != text_dim:
        raise ValueError(f"text encoder {text.name} gives {query.shape[1]}-d embeddings; the checkpoint "
                         f"was trained with {text_dim}-d")
    return text, query


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


def score_records(models: dict, query: torch.Tensor, shard_paths, record_ids, batch_size: int = 64,
                  device="cpu") -> dict[str, dict[str, np.ndarray]]:
    """Per model name: record_id → sigmoid scores (N,) for the wanted records found in the shards (first
    occurrence). One pass over the shards serves every model."""
    scores = {name: {} for name in models}
    for model in models.values():
        model.eval()
    for ids, signals in iter_wanted_signals(shard_paths, record_ids):
        with torch.inference_mode():
            for i in range(0, len(ids), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(signals[i:i + batch_size])).to(device)
                for name, model in models.items():
                    prob = torch.sigmoid(model(x, query).float()).cpu().numpy()
                    scores[name].update(zip(ids[i:i + batch_size], prob))
    return scores


def class_auc(truth: np.ndarray, score: np.ndarray) -> tuple[int, int, float]:
    """(n_pos, n_neg, AUC) over known entries (label ≥ 0); AUC NaN without both classes."""
    known = truth >= 0
    y, s = truth[known] > 0, score[known]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return n_pos, n_neg, (float(roc_auc_score(y, s)) if n_pos and n_neg else float("nan"))


def task_summary(per_class: pd.DataFrame, task: str | None = None, evaluation: dict | None = None) -> dict:
    """One summary row (``SUMMARY_COLUMNS``) from a per-class table (its ``pretrained`` rows, and the
    ``random_init`` baseline's macro AUC beside them) and the task's ``evaluation.json`` (intervals)."""
    mine = per_class[per_class["encoder"] == "pretrained"] if "encoder" in per_class else per_class
    base = per_class[per_class["encoder"] == "random_init"] if "encoder" in per_class else per_class.iloc[:0]
    auc, kind = mine["auc"].astype(float), mine["class_kind"]

    def mean(values: pd.Series) -> float:
        values = values.dropna()
        return float(values.mean()) if len(values) else float("nan")

    evaluation = evaluation or {}
    intervals = evaluation.get("macro", {})

    def ci(encoder: str, group: str) -> tuple[float, float]:
        low, high = intervals.get(encoder, {}).get(group, [float("nan")] * 3)[1:]
        return float(low), float(high)

    row = {
        "task": task or str(per_class["task"].iloc[0]), "n_classes": int(len(mine)),
        "n_classes_evaluated": int(auc.notna().sum()), "macro_auc": mean(auc),
    }
    row["ci_low"], row["ci_high"] = ci("pretrained", "all")
    for k in CLASS_KINDS:
        row[f"macro_auc_{k}"] = mean(auc[kind == k])
        row[f"{k}_ci_low"], row[f"{k}_ci_high"] = ci("pretrained", k)
    row["random_init_macro_auc"] = mean(base["auc"].astype(float)) if len(base) else float("nan")
    row["random_init_ci_low"], row["random_init_ci_high"] = ci("random_init", "all")
    row.update({f"n_{k}": int((kind == k).sum()) for k in CLASS_KINDS})
    row.update({f"n_{k}_evaluated": int((auc.notna() & (kind == k)).sum()) for k in CLASS_KINDS})
    row["n_test_records"] = int(evaluation.get("n_records", 0))
    row["n_redraws"] = int(evaluation.get("n_redraws", {}).get("pretrained", 0))
    row["splits"] = "+".join(evaluation.get("splits") or ["all"])
    row["interval_note"] = evaluation.get("interval_notes", {}).get("pretrained", "")
    return row


def evaluate_task(task, checkpoint_path, shard_paths, task_labels_path, vocabulary_path, out_dir,
                  splits=tuple(_DEFAULTS["splits"]), text_encoder=None, batch_size: int = 64, device: str = "auto",
                  threads: int | None = None, seen_threshold: float | None = _DEFAULTS["seen_threshold"],
                  baseline_checkpoint_path=None, n_resamples: int = N_RESAMPLES, bootstrap_seed: int = SEED,
                  level: float = LEVEL) -> dict:
    """Zero-shot evaluation of one task → ``per_class.parquet``, ``scores.parquet``, ``bootstrap.parquet``,
    ``evaluation.json`` and ``auc_bars.png`` in ``out_dir``.

    The checkpoint is the ``pretrained`` encoder; ``baseline_checkpoint_path`` (optional) the
    ``random_init`` baseline, scored with the same queries, records and code. ``splits=None`` takes every
    split (the default, the config schema's ``zeroshot.splits``, is the test split only); ``text_encoder``
    (a name or an encoder) overrides the checkpoint's; ``vocabulary_path`` (optional) is checked against the checkpoint's labels;
    ``seen_threshold`` (default ``standardise.DEFAULT_MERGE_THRESHOLD``) is the cosine from which a class
    description counts as the same finding as a training label (see :func:`measure_seen`). Per-class and
    macro AUCs (all, seen, unseen) get bootstrap percentile intervals over the scored records.
    """
    threshold = DEFAULT_MERGE_THRESHOLD if seen_threshold is None else float(seen_threshold)
    if threads:
        torch.set_num_threads(usable_threads(threads))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = task_classes(task, task_labels_path)
    names = [c.name for c in classes]
    dev = resolve_device(device)
    checkpoint = load_checkpoint(checkpoint_path)
    text, query = encode_queries(checkpoint, [c.description for c in classes], text_encoder)
    query = query.to(dev)
    labels = _read_task_labels(task_labels_path, classes, splits)
    models = {"pretrained": model_from_checkpoint(checkpoint).to(dev)}
    if baseline_checkpoint_path is not None:
        models["random_init"] = model_from_checkpoint(load_checkpoint(baseline_checkpoint_path)).to(dev)
    found = score_records(models, query, shard_paths, labels["record_id"], batch_size, dev)
    n_missing = int((~labels["record_id"].isin(found["pretrained"])).sum())
    labels = labels[labels["record_id"].isin(found["pretrained"])].reset_index(drop=True)
    truth = labels[names].fillna(-1).to_numpy(np.int64)
    ids, label_names, members = training_vocabulary(checkpoint, vocabulary_path)
    nearest = measure_seen([c.description for c in classes], ids, label_names, members, text, threshold)
    seen = np.array([near["seen"] for near in nearest], bool)
    groups = {"all": np.ones(len(classes), bool), "seen": seen, "unseen": ~seen}
    rows, score_frames, samples = [], [], []
    evaluation = {"task": task, "splits": None if splits is None else list(splits), "n_records": int(len(labels)),
                  "n_missing_signal": n_missing, "text_encoder": text.name,
                  "checkpoint_epoch": int(checkpoint["epoch"]), "seen_threshold": threshold,
                  "n_training_labels": len(ids), "n_resamples": n_resamples, "bootstrap_seed": bootstrap_seed,
                  "level": level, "macro": {}, "n_redraws": {}, "interval_notes": {}}
    for name in models:
        matrix = (np.stack([found[name][r] for r in labels["record_id"]]) if len(labels)
                  else np.zeros((0, len(classes))))
        frame = pd.DataFrame(matrix.astype(np.float32), columns=names)
        frame.insert(0, "encoder", name)
        frame.insert(0, "split", labels["split"].astype(str).to_numpy())
        frame.insert(0, "record_id", labels["record_id"].to_numpy())
        score_frames.append(frame)
        result = bootstrap_aucs(truth, matrix, groups, n_resamples=n_resamples, seed=bootstrap_seed, level=level)
        samples.append(samples_table(result, encoder=name))
        evaluation["macro"][name] = {g: list(v) for g, v in result.macro.items()}
        evaluation["n_redraws"][name] = result.n_redraws
        if result.note:
            evaluation["interval_notes"][name] = result.note
            log.warning("%s %s: %s", task, name, result.note)
        for k, (c, near) in enumerate(zip(classes, nearest)):
            known = truth[:, k] >= 0
            rows.append({"task": task, "class": c.name, "description": c.description, "encoder": name,
                         "n_pos": int((truth[known, k] > 0).sum()), "n_neg": int((truth[known, k] == 0).sum()),
                         "auc": float(result.auc[k]), "ci_low": float(result.ci_low[k]),
                         "ci_high": float(result.ci_high[k]), **near,
                         "class_kind": "seen" if near["seen"] else "unseen", "seen_threshold": threshold})
    per_class = pd.DataFrame(rows, columns=PER_CLASS_SCHEMA.names)
    pq.write_table(pa.Table.from_pandas(per_class, schema=PER_CLASS_SCHEMA, preserve_index=False),
                   out_dir / "per_class.parquet")
    pd.concat(score_frames, ignore_index=True).to_parquet(out_dir / "scores.parquet", index=False)
    write_bootstrap_samples(samples, out_dir / "bootstrap.parquet")
    (out_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n", encoding="utf-8")
    from supreme_ecg.plots import plot_class_aucs

    split_text = "+".join(splits) if splits else "all"
    plot_class_aucs(per_class, out_dir / "auc_bars.png",
                    title=f"{task}: zero-shot AUC per class ({split_text} records: {len(labels)})")
    return {**task_summary(per_class, task, evaluation), **{k: evaluation[k] for k in (
        "n_missing_signal", "text_encoder", "checkpoint_epoch", "seen_threshold", "n_training_labels")}}


def _format(value, percent: bool = False) -> str:
    """Markdown cell: percentages with two decimals, '–' for NaN."""
    if isinstance(value, float) and np.isnan(value):
        return "–"
    return f"{100 * value:.2f}" if percent else str(value)


def format_auc_ci(auc: float, low: float, high: float) -> str:
    """``77.20 [74.10, 80.05]`` (percent); '–' for a NaN AUC, no bracket for a NaN interval."""
    if auc is None or np.isnan(auc):
        return "–"
    if low is None or np.isnan(low):
        return f"{100 * auc:.2f}"
    return f"{100 * auc:.2f} [{100 * low:.2f}, {100 * high:.2f}]"


def splits_title(splits: set[str]) -> str:
    """What a table scored: 'test split', or a POOLED warning naming the splits."""
    if splits == {"test"}:
        return "test split"
    return f"POOLED splits ({', '.join(sorted(splits))}) — not a test-only figure"


#: (summary.md column, AUC column, interval columns)
_MD_AUCS = [("macro AUC", "macro_auc", "ci_low", "ci_high"),
            ("seen", "macro_auc_seen", "seen_ci_low", "seen_ci_high"),
            ("unseen", "macro_auc_unseen", "unseen_ci_low", "unseen_ci_high"),
            ("random-init encoder", "random_init_macro_auc", "random_init_ci_low", "random_init_ci_high")]


def write_summary_md(summary: pd.DataFrame, path, per_class: list[pd.DataFrame] = ()) -> None:
    """``summary.md``: the summary table (AUC in % with 95 % intervals), what seen/unseen means, and per
    task each class with its positives, AUC, kind and the nearest training label (the evidence)."""
    thresholds = sorted({float(x) for frame in per_class if "seen_threshold" in frame
                         for x in frame["seen_threshold"].dropna()})
    threshold = ", ".join(f"{x:.2f}" for x in thresholds) or "the configured threshold"
    splits = {s for value in summary["splits"] for s in str(value).split("+")}
    lines = [
        f"# Zero-shot results ({splits_title(splits)})", "",
        "Macro ROC AUC (%) with its bootstrap 95 % percentile interval over the scored records, over the "
        "classes with a defined AUC (positives and negatives present), over all classes and split into "
        "*seen* and *unseen*; beside it the same architecture with random weights, scored by the same code "
        "(what pre-training added). Seen/unseen is measured, not declared: a class is *seen* when its "
        "description would have been standardised into one of the checkpoint's training labels — its "
        "normalised text equals the label's name or one of its member surface forms (the phrasings the "
        "reports used), or their cosine similarity under the checkpoint's text encoder is "
        f"≥ {threshold} without a modifier conflict (left/right, complete/incomplete, …); otherwise "
        "*unseen*. The `average` row is the mean over tasks (tasks with NaN left out); its interval "
        "averages the tasks' resamples (each task's records resampled on their own). `redraws` counts "
        "resamples drawn again because a class lacked a positive or a negative.", "",
        "| task | classes (evaluated) | seen / unseen | test records | "
        + " | ".join(c[0] for c in _MD_AUCS) + " | redraws |",
        "|---|---|---|---|" + "---|" * len(_MD_AUCS) + "---|",
    ]
    notes = [f"- {row['task']}: {row['interval_note']}" for row in summary.to_dict("records")
             if isinstance(row.get("interval_note"), str) and row["interval_note"]]
    for row in summary.to_dict("records"):
        cells = [row["task"], f"{row['n_classes']} ({row['n_classes_evaluated']})",
                 f"{row['n_seen']} / {row['n_unseen']}", row["n_test_records"]]
        cells += [format_auc_ci(row[a], row[lo], row[hi]) for _, a, lo, hi in _MD_AUCS]
        lines.append("| " + " | ".join(str(c) for c in cells + [row["n_redraws"]]) + " |")
    if notes:
        lines += ["", "Tasks without intervals:", *notes]
    for frame in per_class:
        frame = frame[frame["encoder"] == "pretrained"] if "encoder" in frame else frame
        if not len(frame):
            continue
        lines += ["", f"## {frame['task'].iloc[0]}", "",
                  "| class | description | n_pos | AUC (%) [95 % CI] | kind | nearest label | matched form | "
                  "similarity |", "|---|---|---|---|---|---|---|---|"]
        for row in frame.to_dict("records"):
            sim = row.get("nearest_label_similarity", float("nan"))
            cells = [row["class"], row.get("description", ""), row.get("n_pos", ""),
                     format_auc_ci(float(row["auc"]), row.get("ci_low", np.nan), row.get("ci_high", np.nan)),
                     row["class_kind"], row.get("nearest_label_name") or "–", row.get("nearest_form") or "–",
                     "–" if sim is None or np.isnan(sim) else f"{sim:.3f}"]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def summarise(per_class_paths, out_csv) -> pd.DataFrame:
    """``summary.csv`` (+ ``summary.md`` beside it): one row per task and a final ``average`` row.

    Each per-class table's folder also holds the task's ``evaluation.json`` and ``bootstrap.parquet``.
    """
    frames, samples, rows = [], [], []
    for path in per_class_paths:
        folder = Path(path).parent
        frame = pd.read_parquet(path)
        evaluation = json.loads((folder / "evaluation.json").read_text(encoding="utf-8"))
        frames.append(frame)
        samples.append(pd.read_parquet(folder / "bootstrap.parquet"))
        rows.append(task_summary(frame, evaluation=evaluation))
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    average = {"task": "average", "splits": "+".join(sorted({s for v in table["splits"] for s in v.split("+")}))}
    level = LEVEL
    for col in SUMMARY_COLUMNS[1:]:
        if col in ("splits", "interval_note"):
            continue
        if "auc" in col:
            values = table[col].dropna()
            average[col] = float(values.mean()) if len(values) else float("nan")
        elif not col.endswith(("ci_low", "ci_high")):
            average[col] = int(table[col].sum())
    for _, auc_col, low, high in _MD_AUCS:
        encoder = "random_init" if auc_col.startswith("random_init") else "pretrained"
        group = auc_col.removeprefix("macro_auc_") if auc_col.startswith("macro_auc_") else "all"
        average[low], average[high] = average_over_tasks(samples, encoder, group, level)
    table = pd.concat([table, pd.DataFrame([average], columns=SUMMARY_COLUMNS)], ignore_index=True)
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False)
    write_summary_md(table, out_csv.with_suffix(".md"), frames)
    return table
