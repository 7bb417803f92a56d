"""Linear probes: a frozen ECG encoder's features, a linear head per task and share of the training labels.

The field reports, beside zero-shot AUC, the AUC of a linear head trained on the frozen encoder's
features with 1 %, 10 % and 100 % of a task's training labels. Here:

* **features** (:func:`extract_features`) — the pooled encoder output of every record of a task (all
  splits), for the pre-trained encoder and its random-init baseline, computed once and stored as Parquet;
* **subset** (:func:`draw_fraction`) — the share of the *train* split, drawn class-stratified with a fixed
  seed (rarest class first, each class keeps its share of positives and at least one), so the 1 % probe of
  a 23-class task is not a draw without positives of half its classes;
* **probe** (:func:`train_probe`) — logistic regression heads (one linear layer, BCE with unknown labels
  masked), Adam, early stopping on the task's **validation** split (macro AUC; the state of the best
  validation epoch is kept). The test split is scored once, at the end: it never selects anything;
* **figures** — per-class and macro test AUC with bootstrap intervals (:mod:`supreme_ecg.bootstrap`); with
  several seeds the AUCs of the seed-averaged figure, and the spread of the per-seed macro AUCs.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from supreme_ecg.bootstrap import (
    LEVEL,
    N_RESAMPLES,
    SEED,
    average_over_tasks,
    bootstrap_aucs,
    column_aucs,
    samples_table,
    write_bootstrap_samples,
)
from supreme_ecg.config_schema import schema_defaults
from supreme_ecg.settings import usable_threads

log = logging.getLogger("supreme_ecg")

#: the encoders every evaluation table reports: the pre-trained one and its random-init baseline
ENCODERS = ("pretrained", "random_init")
FEATURE_COLUMNS = ["record_id", "split", "encoder", "features"]
PER_CLASS_COLUMNS = ["task", "percent", "encoder", "class", "description", "n_pos", "n_neg", "n_train_pos",
                     "auc", "ci_low", "ci_high", "auc_seed_sd"]
SUMMARY_COLUMNS = ["task", "fraction", "n_classes", "macro_auc", "ci_low", "ci_high",
                   "random_init_macro_auc", "random_init_ci_low", "random_init_ci_high",
                   "n_classes_evaluated", "macro_auc_seed_sd", "random_init_macro_auc_seed_sd", "n_seeds",
                   "n_train_used", "n_train", "n_val", "n_test", "n_resamples", "n_redraws", "status"]


#: the config schema's ``linear_probe`` defaults: ProbeConfig's and the seeds (one source for Python and Snakemake)
_DEFAULTS = schema_defaults("linear_probe")


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of the probe head; defaults: the config schema's ``linear_probe`` (MERL's probe: Adam 1e-3,
    weight decay 1e-4)."""

    lr: float = _DEFAULTS["lr"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    max_epochs: int = _DEFAULTS["max_epochs"]
    patience: int = _DEFAULTS["patience"]
    batch_size: int = _DEFAULTS["batch_size"]


# --------------------------------------------------------------------------- features


def _features_schema(dim: int) -> pa.Schema:
    return pa.schema([("record_id", pa.string()), ("split", pa.string()), ("encoder", pa.string()),
                      ("features", pa.list_(pa.float32(), dim))])


def extract_features(checkpoints: dict, shard_paths, task_labels_path, out_path, batch_size: int = 64,
                     device: str = "auto", threads: int | None = None) -> dict:
    """Pooled encoder features of every labelled record of a task, per encoder → Parquet (streamed).

    ``checkpoints``: encoder name → checkpoint path (e.g. ``{"pretrained": ..., "random_init": ...}``).
    Rows: record_id, split, encoder, features (fixed-size list of float32). Records of the label table
    without a preprocessed signal (rejected in preprocessing) are counted, not invented.
    """
    from supreme_ecg.model import load_checkpoint, model_from_checkpoint
    from supreme_ecg.pretrain import resolve_device
    from supreme_ecg.pretrain.shards import iter_wanted_signals

    if threads:
        torch.set_num_threads(usable_threads(threads))
    dev = resolve_device(device)
    encoders = {name: model_from_checkpoint(load_checkpoint(path)).ecg_encoder.to(dev).eval()
                for name, path in checkpoints.items()}
    labels = pd.read_parquet(task_labels_path, columns=["record_id", "split"]).drop_duplicates("record_id")
    split_of = dict(zip(labels["record_id"].astype(str), labels["split"].astype(str)))
    n_found, writer, dims = 0, None, {}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    try:
        for wanted, signals in iter_wanted_signals(shard_paths, split_of):
            n_found += len(wanted)
            for name, encoder in encoders.items():
                pooled = []
                with torch.inference_mode():
                    for i in range(0, len(wanted), batch_size):
                        x = torch.from_numpy(np.ascontiguousarray(signals[i:i + batch_size])).to(dev)
                        pooled.append(encoder(x)[1].float().cpu().numpy())
                feats = np.concatenate(pooled).astype(np.float32)
                dims.setdefault(name, feats.shape[1])
                if writer is None:
                    writer = pq.ParquetWriter(tmp, _features_schema(feats.shape[1]))
                flat = pa.array(feats.ravel(), pa.float32())
                writer.write_table(pa.table({
                    "record_id": wanted, "split": [split_of[r] for r in wanted], "encoder": [name] * len(wanted),
                    "features": pa.FixedSizeListArray.from_arrays(flat, feats.shape[1])}, schema=writer.schema))
        if writer is None:
            writer = pq.ParquetWriter(tmp, _features_schema(1))
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(out_path)
    return {"n_labelled": len(split_of), "n_with_signal": n_found, "n_without_signal": len(split_of) - n_found,
            "encoders": list(encoders), "dims": dims}


def read_features(path, encoder: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(record ids, splits, features (N, D) float32) of one encoder from a features Parquet."""
    table = pq.read_table(path, filters=[("encoder", "==", encoder)])
    ids = [str(r) for r in table.column("record_id").to_pylist()]
    splits = np.array([str(s) for s in table.column("split").to_pylist()])
    column = table.column("features").combine_chunks()
    dim = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return ids, splits, values.reshape(len(ids), dim) if len(ids) else np.zeros((0, dim), np.float32)


# --------------------------------------------------------------------------- subsets and probes


def draw_fraction(truth: np.ndarray, percent: float, seed: int) -> np.ndarray:
    """Row indices of a class-stratified ``percent`` % of the training records (sorted).

    Rarest class first, each class gets ``round(share × its positives)`` positives and at least one
    (records already drawn count); the rest of the ``round(share × N)`` records are drawn at random.
    At 100 % every row. So a small share can hold somewhat more records than ``share × N``.
    """
    n = truth.shape[0]
    if percent >= 100:
        return np.arange(n)
    share = percent / 100
    rng = np.random.default_rng(seed)
    chosen = np.zeros(n, bool)
    positives = truth > 0
    counts = positives.sum(axis=0)
    for c in np.argsort(counts, kind="stable"):
        if counts[c] == 0:
            continue
        want = max(1, round(share * counts[c]))
        missing = want - int((chosen & positives[:, c]).sum())
        pool = np.flatnonzero(positives[:, c] & ~chosen)
        if missing > 0 and len(pool):
            chosen[rng.choice(pool, size=min(missing, len(pool)), replace=False)] = True
    rest = np.flatnonzero(~chosen)
    extra = max(0, max(1, round(share * n)) - int(chosen.sum()))
    if extra and len(rest):
        chosen[rng.choice(rest, size=min(extra, len(rest)), replace=False)] = True
    return np.flatnonzero(chosen)


def train_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                cfg: ProbeConfig = ProbeConfig(), seed: int = 0):
    """Train a linear head (features standardised on the training subset) with early stopping on the
    validation macro AUC (validation loss where no class has both classes in val).

    Returns ``(predict, info)``: ``predict(x) → probabilities (N, C)`` with the best validation epoch's
    weights; info: best_epoch, epochs_run, best_val_macro_auc, val_metric.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0) + 1e-6
    xt = torch.from_numpy(((x_train - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y_train.astype(np.float32))
    xv = torch.from_numpy(((x_val - mean) / std).astype(np.float32))
    head = torch.nn.Linear(xt.shape[1], yt.shape[1])
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_auc = not np.isnan(column_aucs(y_val, np.zeros(y_val.shape))).all()
    best, best_state, best_epoch, stale, epoch = -math.inf, None, 0, 0, 0
    for epoch in range(1, cfg.max_epochs + 1):
        head.train()
        order = torch.from_numpy(rng.permutation(len(xt)))
        for start in range(0, len(xt), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            y = yt[idx]
            mask = (y >= 0).float()
            loss = (F.binary_cross_entropy_with_logits(head(xt[idx]), y.clamp_min(0), reduction="none") * mask
                    ).sum() / mask.sum().clamp_min(1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            logits = head(xv)
        if use_auc:
            metric = float(np.nanmean(column_aucs(y_val, logits.numpy())))
        else:
            yv = torch.from_numpy(y_val.astype(np.float32))
            mask = (yv >= 0).float()
            metric = -float((F.binary_cross_entropy_with_logits(logits, yv.clamp_min(0), reduction="none") * mask
                             ).sum() / mask.sum().clamp_min(1.0))
        if metric > best + 1e-6:
            best, best_epoch, stale = metric, epoch, 0
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(head(torch.from_numpy(((x - mean) / std).astype(np.float32)))).numpy()

    return predict, {"best_epoch": best_epoch, "epochs_run": epoch, "best_val_metric": float(best),
                     "val_metric": "macro_auc" if use_auc else "neg_bce"}


def _split_arrays(features_path, encoder: str, labels: pd.DataFrame, class_names: list[str]):
    """Per split: (features, truth) of the records with features, in label-table order."""
    ids, _, feats = read_features(features_path, encoder)
    row_of = {r: i for i, r in enumerate(ids)}
    labels = labels[labels["record_id"].isin(row_of)]
    out = {}
    for split in ("train", "val", "test"):
        part = labels[labels["split"] == split]
        rows = [row_of[r] for r in part["record_id"]]
        truth = part[class_names].fillna(-1).to_numpy(np.int64) if len(part) else np.zeros((0, len(class_names)),
                                                                                             np.int64)
        out[split] = (feats[rows], truth)
    return out


def run_linear_probe(task: str, features_path, task_labels_path, percent: float, out_dir,
                     seeds=tuple(_DEFAULTS["seeds"]), cfg: ProbeConfig = ProbeConfig(),
                     n_resamples: int = N_RESAMPLES, bootstrap_seed: int = SEED, level: float = LEVEL,
                     encoders=ENCODERS) -> dict:
    """Probe one task with ``percent`` % of its training labels → ``per_class.parquet``, ``probe.json``.

    Below 100 % the subset and the head are drawn once per seed (the subset differs per seed); at 100 %
    only the first seed is used. A task without train, val or test records (e.g. split policy
    ``all_test``) writes its classes with NaN AUCs and the reason in ``probe.json`` — nothing is skipped
    silently.
    """
    from supreme_ecg.datasets import task_classes

    torch.set_num_threads(1)  # a linear head on a few thousand rows: threads cost more than they give
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = task_classes(task, task_labels_path)
    names = [c.name for c in classes]
    labels = pd.read_parquet(task_labels_path).drop_duplicates("record_id")
    labels["record_id"] = labels["record_id"].astype(str)
    seeds = list(seeds)[:1] if percent >= 100 else list(seeds)
    rows, samples, report = [], [], {"task": task, "percent": percent, "seeds": seeds, "probe": asdict(cfg),
                        "n_resamples": n_resamples, "bootstrap_seed": bootstrap_seed, "level": level, "encoders": {}}
    for encoder in encoders:
        data = _split_arrays(features_path, encoder, labels, names)
        sizes = {s: len(data[s][0]) for s in data}
        missing = [s for s, n in sizes.items() if n == 0]
        info = {"n_train": sizes["train"], "n_val": sizes["val"], "n_test": sizes["test"]}
        x_test, y_test = data["test"]
        if missing:
            info["status"] = f"no {'/'.join(missing)} records: not probed (split policy all_test?)"
            result, seed_sd, n_train_pos = None, np.full(len(names), np.nan), np.zeros(len(names), int)
        else:
            x_train, y_train = data["train"]
            probs, macros, runs, used = [], [], [], []
            n_train_pos = np.zeros(len(names), int)
            for seed in seeds:
                subset = draw_fraction(y_train, percent, seed)
                predict, run = train_probe(x_train[subset], y_train[subset], *data["val"], cfg=cfg, seed=seed)
                prob = predict(x_test)
                probs.append(prob)
                macros.append(float(np.nanmean(column_aucs(y_test, prob))))
                used.append(len(subset))
                n_train_pos = np.maximum(n_train_pos, (y_train[subset] > 0).sum(axis=0))
                runs.append({"seed": seed, "n_train_used": len(subset), **run})
            result = bootstrap_aucs(y_test, probs, n_resamples=n_resamples, seed=bootstrap_seed, level=level)
            samples.append(samples_table(result, encoder=encoder))
            per_seed = np.array([column_aucs(y_test, p) for p in probs])
            seed_sd = per_seed.std(axis=0, ddof=1) if len(probs) > 1 else np.full(len(names), np.nan)
            info.update(status="ok", runs=runs, n_train_used=int(np.mean(used)), seed_macro_aucs=macros,
                        macro_auc=result.macro["all"][0], ci_low=result.macro["all"][1],
                        ci_high=result.macro["all"][2], n_redraws=result.n_redraws,
                        macro_auc_seed_sd=float(np.std(macros, ddof=1)) if len(macros) > 1 else float("nan"),
                        interval_note=result.note)
        for c, cls in enumerate(classes):
            known = y_test[:, c] >= 0
            rows.append({"task": task, "percent": float(percent), "encoder": encoder, "class": cls.name,
                         "description": cls.description, "n_pos": int((y_test[known, c] > 0).sum()),
                         "n_neg": int((y_test[known, c] == 0).sum()), "n_train_pos": int(n_train_pos[c]),
                         "auc": float(result.auc[c]) if result else float("nan"),
                         "ci_low": float(result.ci_low[c]) if result else float("nan"),
                         "ci_high": float(result.ci_high[c]) if result else float("nan"),
                         "auc_seed_sd": float(seed_sd[c])})
        report["encoders"][encoder] = info
        log.info("%s %s%% %s: %s", task, percent, encoder,
                 {k: v for k, v in info.items() if k not in ("runs", "seed_macro_aucs")})
    per_class = pd.DataFrame(rows, columns=PER_CLASS_COLUMNS)
    per_class.to_parquet(out_dir / "per_class.parquet", index=False)
    write_bootstrap_samples(samples, out_dir / "bootstrap.parquet")
    (out_dir / "probe.json").write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    return report


def summarise_probes(probe_dirs, out_csv) -> pd.DataFrame:
    """``summary.csv``: one row per task × fraction, the pre-trained encoder's macro AUC with its interval
    and the random-init baseline's beside it (from each probe's ``probe.json``)."""
    rows, samples = [], {}
    for folder in probe_dirs:
        report = json.loads((Path(folder) / "probe.json").read_text(encoding="utf-8"))
        samples.setdefault(float(report["percent"]), []).append(pd.read_parquet(Path(folder) / "bootstrap.parquet"))
        per_class = pd.read_parquet(Path(folder) / "per_class.parquet")
        mine = per_class[per_class["encoder"] == "pretrained"]
        info = report["encoders"].get("pretrained", {})
        base = report["encoders"].get("random_init", {})
        rows.append({
            "task": report["task"], "fraction": float(report["percent"]) / 100, "n_classes": int(len(mine)),
            "macro_auc": info.get("macro_auc", float("nan")), "ci_low": info.get("ci_low", float("nan")),
            "ci_high": info.get("ci_high", float("nan")),
            "random_init_macro_auc": base.get("macro_auc", float("nan")),
            "random_init_ci_low": base.get("ci_low", float("nan")),
            "random_init_ci_high": base.get("ci_high", float("nan")),
            "n_classes_evaluated": int(mine["auc"].notna().sum()),
            "macro_auc_seed_sd": info.get("macro_auc_seed_sd", float("nan")),
            "random_init_macro_auc_seed_sd": base.get("macro_auc_seed_sd", float("nan")),
            "n_seeds": len(report["seeds"]), "n_train_used": info.get("n_train_used", 0),
            "n_train": info.get("n_train", 0), "n_val": info.get("n_val", 0), "n_test": info.get("n_test", 0),
            "n_resamples": report["n_resamples"], "n_redraws": info.get("n_redraws", 0),
            "status": info.get("status", "missing"),
        })
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    for percent, tables in sorted(samples.items()):
        part = table[table["fraction"] == percent / 100]
        average = {"task": "average", "fraction": percent / 100, "n_classes": int(part["n_classes"].sum()),
                   "n_classes_evaluated": int(part["n_classes_evaluated"].sum()), "n_seeds": int(part["n_seeds"].max()),
                   "n_resamples": int(part["n_resamples"].max()), "n_redraws": int(part["n_redraws"].sum()),
                   "status": "mean over tasks; interval from the tasks' resamples averaged"}
        for prefix, encoder in (("", "pretrained"), ("random_init_", "random_init")):
            values = part[f"{prefix}macro_auc"].dropna()
            average[f"{prefix}macro_auc"] = float(values.mean()) if len(values) else float("nan")
            average[f"{prefix}ci_low"], average[f"{prefix}ci_high"] = average_over_tasks(tables, encoder, "all")
        rows.append(average)
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    order = {t: i for i, t in enumerate(dict.fromkeys(table["task"]))}
    table = table.sort_values(["fraction", "task"], key=lambda c: c.map(order) if c.name == "task" else c,
                              kind="stable")
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False)
    return table
