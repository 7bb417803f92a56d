"""Checkpoints, resumption and the metrics table and plot of a run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from supreme_ecg.model import load_checkpoint
from supreme_ecg.pretrain.config import CHECKPOINT, IN_PROGRESS, METRICS_COLUMNS, PretrainConfig
from supreme_ecg.pretrain.data import _Data
from supreme_ecg.pretrain.labels import LabelTable, QueryBank


def write_metrics(history: list[dict], path) -> None:
    """``metrics.parquet`` (one row per epoch), written atomically."""
    table = pa.table({
        "epoch": pa.array([int(r["epoch"]) for r in history], pa.int32()),
        **{c: pa.array([float(r[c]) for r in history], pa.float64()) for c in METRICS_COLUMNS[1:]},
    })
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def plot_curve(history: list[dict], path) -> None:
    """``training_curve.png``: train/val loss and validation macro AUC per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame(history, columns=METRICS_COLUMNS)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(df["epoch"], df["train_loss"], "o-", label="train")
    ax1.plot(df["epoch"], df["val_loss"], "s-", label="validation")
    ax1.set(xlabel="epoch", ylabel="BCE loss", title="Loss")
    ax1.legend()
    ax2.plot(df["epoch"], df["val_macro_auc"], "o-", color="C2")
    ax2.set(xlabel="epoch", ylabel="macro AUC", title="Validation macro AUC")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _compatible(ckpt: dict, cfg: PretrainConfig, table: LabelTable, data: _Data) -> bool:
    """Whether a checkpoint was made with the same settings, labels (ids, names, members) and data split."""
    return (ckpt.get("resume_key") == cfg.resume_key() and list(ckpt.get("label_names", [])) == table.names
            and list(ckpt.get("label_ids", [])) == table.ids
            and [list(m) for m in ckpt.get("label_members", [])] == table.members
            and (ckpt.get("n_train"), ckpt.get("n_val")) == (data.n_train, data.n_val))


def _find_resume(out_dir: Path, cfg: PretrainConfig, table: LabelTable, data: _Data):
    """(checkpoint, path, note): the compatible checkpoint (in-progress or final) with the most epochs."""
    best, best_path, note = None, None, "no checkpoint"
    for path in (out_dir / IN_PROGRESS, out_dir / CHECKPOINT):
        if not path.exists():
            continue
        ckpt = load_checkpoint(path)
        if not _compatible(ckpt, cfg, table, data):
            note = f"{path.name} has other settings, labels or data: starting afresh"
            continue
        if best is None or ckpt["epoch"] > best["epoch"]:
            best, best_path, note = ckpt, path, f"resumed from {path.name} at epoch {ckpt['epoch']}"
    return best, best_path, note


def _checkpoint(model, opt, epoch, history, table: LabelTable, queries: QueryBank, text, cfg, data) -> dict:
    """The checkpoint dict (tensors, dicts, lists, str, int, float only; loads with ``weights_only=True``).

    ``label_ids``/``label_names``/``label_members`` are the training vocabulary (the zero-shot stage
    measures seen/unseen against them); ``label_queries`` the phrasings each label was trained on.
    """
    return {
        "model_state": model.state_dict(), "config": model.config, "label_names": list(table.names),
        "label_ids": list(table.ids), "label_members": [list(m) for m in table.members],
        "label_queries": [list(p) for p in queries.phrasings],
        "label_embeddings": queries.canonical.detach().cpu(), "epoch": int(epoch),
        "optimizer_state": opt.state_dict(), "text_encoder": text.name, "text_pooling": text.pooling,
        "history": [dict(r) for r in history], "resume_key": cfg.resume_key(),
        "n_train": data.n_train, "n_val": data.n_val, "n_samples": data.n_samples,
    }
