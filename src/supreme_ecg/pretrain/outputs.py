"""Checkpoints, resumption and the metrics table and plot of a run.

Resume state lives in ``state_dir/<key>/`` (default ``cache/pretrain``, outside the declared outputs, so
that Snakemake deleting ``results/pretrain`` before a rerun keeps it): ``epoch.pt`` after every whole
epoch, ``step.pt`` every ``checkpoint_every_steps`` steps with the exact position inside an epoch. The
key hashes what a resumed run must share with the run it continues: the settings outside
``RUNTIME_FIELDS``, the labels (ids, names, members), the shards (name, bytes, rows) and the output folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from supreme_ecg.model import load_checkpoint, save_checkpoint
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


EPOCH_STATE, STEP_STATE = "epoch.pt", "step.pt"


def shard_manifest(paths) -> list:
    """(file name, bytes, rows) of every shard: cheap, and changes when a shard is rewritten differently."""
    return [[Path(p).name, Path(p).stat().st_size, pq.ParquetFile(p).metadata.num_rows] for p in paths]


def state_folder(cfg: PretrainConfig, table: LabelTable, shard_paths, out_dir) -> Path:
    """``state_dir/<16 hex digits>``: the hash of the resume key, the labels, the shards and the output folder."""
    key = {"settings": cfg.resume_key(), "label_ids": list(table.ids), "label_names": list(table.names),
           "label_members": [list(m) for m in table.members], "shards": shard_manifest(shard_paths),
           "out_dir": str(Path(out_dir).resolve())}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cfg.state_dir) / digest


def _progress(ckpt: dict) -> tuple[int, int]:
    """(whole epochs, steps into the next) of a checkpoint."""
    position = ckpt.get("position")
    return int(ckpt["epoch"]), int(position["done"]) if position else 0


def _find_resume(out_dir: Path, cfg: PretrainConfig, table: LabelTable, data: _Data, state: Path | None = None,
                 world: int = 1):
    """(checkpoint, path, note): the compatible state (mid-epoch, epoch, in-progress or final) furthest on.

    A mid-epoch position made with another number of processes or ``grad_accum_steps`` is not used (the
    batches would differ): the run continues from the last whole epoch. A state past ``cfg.epochs``
    (the epochs were lowered) is not used either: the run starts afresh rather than return a model
    trained longer than asked.
    """
    best, best_path, note = None, None, "no checkpoint"
    places = ([state / STEP_STATE, state / EPOCH_STATE] if state is not None else []) + [
        out_dir / IN_PROGRESS, out_dir / CHECKPOINT]
    for path in places:
        if not path.exists():
            continue
        ckpt = load_checkpoint(path)
        if not _compatible(ckpt, cfg, table, data):
            note = f"{path.name} has other settings, labels or data: starting afresh"
            continue
        if _progress(ckpt) > (int(cfg.epochs), 0):
            note = f"{path.name} is at epoch {ckpt['epoch']}, past pretrain.epochs={cfg.epochs}: starting afresh"
            continue
        position = ckpt.get("position")
        if position and (position["world"], position["accum"]) != (world, cfg.grad_accum_steps):
            note = f"{path.name}: mid-epoch position of another gpus/grad_accum_steps, not used"
            continue
        if best is None or _progress(ckpt) > _progress(best):
            epoch, done = _progress(ckpt)
            where = f"epoch {epoch}" + (f" + {done} steps" if done else "")
            best, best_path, note = ckpt, path, f"resumed from {path} at {where}"
    return best, best_path, note


def save_state(folder: Path, state: dict, mid_epoch: bool) -> None:
    """Write ``step.pt`` (mid-epoch) or ``epoch.pt`` (then the older ``step.pt`` is dropped), atomically."""
    save_checkpoint(folder / (STEP_STATE if mid_epoch else EPOCH_STATE), state)
    if not mid_epoch:
        (folder / STEP_STATE).unlink(missing_ok=True)


@functools.cache
def _code_version() -> dict | None:
    """Git commit and dirty flag of the code this process runs (None outside a checkout); read once."""
    from supreme_ecg.provenance import project_version
    from supreme_ecg.settings import REPO_ROOT

    git = project_version(REPO_ROOT)["git"]
    return {"commit": git["commit"], "dirty": git["dirty"]} if git else None


def trained_on(model) -> dict:
    """Where the model trains: host name, device, GPU model (None on the CPU), number of processes, and
    the code (git commit and dirty flag) that trained it."""
    device = next(model.parameters()).device
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if distributed else 1
    return {"hostname": socket.gethostname(), "device": str(device), "processes": int(world),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "code": _code_version()}


def _checkpoint(model, opt, epoch, history, table: LabelTable, queries: QueryBank, text, cfg, data,
                scaler=None, position: dict | None = None) -> dict:
    """The checkpoint dict (tensors, dicts, lists, str, int, float only; loads with ``weights_only=True``).

    ``label_ids``/``label_names``/``label_members`` are the training vocabulary (the zero-shot stage
    measures seen/unseen against them); ``label_queries`` the phrasings each label was trained on;
    ``trained_on`` where this checkpoint was written (:func:`trained_on`, read by ``provenance.json``).
    """
    return {
        "model_state": model.state_dict(), "config": model.config, "label_names": list(table.names),
        "label_ids": list(table.ids), "label_members": [list(m) for m in table.members],
        "label_queries": [list(p) for p in queries.phrasings],
        "label_embeddings": queries.canonical.detach().cpu(), "epoch": int(epoch),
        "optimizer_state": opt.state_dict(), "text_encoder": text.name, "text_pooling": text.pooling,
        "history": [dict(r) for r in history], "resume_key": cfg.resume_key(),
        "n_train": data.n_train, "n_val": data.n_val, "n_samples": data.n_samples,
        "preprocess": dict(data.preprocess), "trained_on": trained_on(model),
        **({"scaler_state": scaler.state_dict()} if scaler is not None and scaler.is_enabled() else {}),
        **({"position": position} if position is not None else {}),
    }
