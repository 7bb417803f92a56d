"""The pretrain stage: supervised multimodal pre-training on extracted labels, as text queries.

Signals (preprocessed Parquet shards) are joined to ``labels.parquet`` (one column per ``label`` of
``label_vocabulary.parquet``) by ``record_id``; each label's ``name`` and its ``members`` (the surface
forms the reports used for it) are embedded once by the frozen text encoder and used as queries of
:class:`~supreme_ecg.model.QueryFusionHead`. Multi-label BCE (label value < 0 = unknown, masked in the
loss and the metrics), AdamW, per-step cosine LR with linear warm-up, deterministic on CPU for a given
seed, resumable.

Modules: ``config`` (settings), ``shards`` (row-group reading), ``labels`` (label table, queries),
``data`` (the join, the split, batches), ``loop`` (one epoch, one validation pass), ``outputs``
(checkpoints, resumption, metrics); this module runs the stage.

Outputs in ``out_dir``: ``checkpoint.pt`` (last epoch), ``metrics.parquet``, ``training_curve.png``;
while running, ``checkpoint.in_progress.pt`` (atomically replaced after every epoch). Resume state in
``state_dir`` (see ``outputs``) survives the deletion of ``out_dir``. Under ``torchrun`` (RANK,
WORLD_SIZE, LOCAL_RANK in the environment) every process trains its share of each global batch with
DDP (nccl on GPUs, gloo on the CPU) and rank 0 writes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from supreme_ecg.model import TextEncoder, build_model, default_model_config, save_checkpoint
from supreme_ecg.pretrain.config import (
    CHECKPOINT,
    IN_PROGRESS,
    METRICS_COLUMNS,
    RUNTIME_FIELDS,
    SPLIT_COLUMN,
    PretrainConfig,
)
from supreme_ecg.pretrain.data import _Data
from supreme_ecg.pretrain.labels import (
    LabelTable,
    QueryBank,
    label_phrasings,
    read_label_table,
    read_label_vocabulary,
)
from supreme_ecg.pretrain.loop import (
    Dist,
    Trainer,
    compute_pos_weight,
    lr_at,
    macro_auc,
    masked_bce,
    resolve_device,
    resolve_precision,
)
from supreme_ecg.pretrain.outputs import (
    _checkpoint,
    _find_resume,
    plot_curve,
    save_state,
    state_folder,
    write_metrics,
)
from supreme_ecg.pretrain.shards import hash_fraction, iter_row_groups, n_samples_of, read_row_group
from supreme_ecg.settings import usable_threads

__all__ = [  # the stage, and what the zero-shot stage, the CLI and the tests use of its modules
    "CHECKPOINT", "IN_PROGRESS", "METRICS_COLUMNS", "RUNTIME_FIELDS", "SPLIT_COLUMN", "LabelTable", "PretrainConfig",
    "QueryBank", "compute_pos_weight", "hash_fraction", "iter_row_groups", "label_phrasings", "lr_at",
    "macro_auc", "masked_bce", "n_samples_of", "pretrain", "read_label_table", "read_label_vocabulary",
    "read_row_group", "resolve_device", "resolve_precision",
]
log = logging.getLogger("supreme_ecg.pretrain")


def pretrain(shard_paths, labels_path, vocabulary_path, out_dir, cfg: PretrainConfig | None = None,
             text_encoder: TextEncoder | None = None, on_epoch_end=None, on_step=None) -> dict:
    """Pre-train and write ``checkpoint.pt``, ``metrics.parquet``, ``training_curve.png``; return a summary.

    ``text_encoder`` overrides the one named by ``cfg`` (anything with ``name``, ``pooling`` and
    ``encode``); ``on_epoch_end(row)`` is called after each epoch's checkpoint is saved, ``on_step(step)``
    after each optimizer step. Under torchrun every rank calls this; rank 0 writes.
    """
    cfg = cfg or PretrainConfig()
    ctx = Dist.from_env()
    device = resolve_device(cfg.device, ctx.local_rank if ctx.on else None)
    ctx.start(device)
    try:
        return _run(shard_paths, labels_path, vocabulary_path, Path(out_dir), cfg, text_encoder, on_epoch_end,
                    on_step, ctx, device)
    finally:
        ctx.close()


def _model(cfg: PretrainConfig, text_dim: int):
    """The model the settings name (``encoder`` when the settings have one)."""
    extra = {"encoder": cfg.encoder} if getattr(cfg, "encoder", None) else {}
    return build_model(default_model_config(text_dim=text_dim, width=cfg.width, downsample=cfg.downsample,
                                            n_heads=cfg.n_heads, dropout=cfg.dropout, **extra))


def _run(shard_paths, labels_path, vocabulary_path, out_dir: Path, cfg: PretrainConfig, text_encoder, on_epoch_end,
         on_step, ctx: Dist, device) -> dict:
    """The stage on this rank."""
    writer = ctx.rank == 0
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(usable_threads(cfg.threads) // ctx.world, 1))
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    table = read_label_table(labels_path, vocabulary_path)
    data = _Data(shard_paths, table.index, table.matrix, cfg, rank=ctx.rank, world_size=ctx.world)
    if data.n_train == 0:
        raise ValueError("no labelled training records: check that shard and label record ids match")
    text = text_encoder or TextEncoder(cfg.text_encoder, cfg.text_pooling)
    queries = QueryBank(text, table.names, table.members, cfg, device)
    query = queries.canonical
    model = _model(cfg, query.shape[1]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pos_weight = compute_pos_weight(data.train_labels(), cfg.pos_weight_max).to(device) if cfg.pos_weight else None
    state = state_folder(cfg, table, shard_paths, out_dir)
    trainer = Trainer(model, opt, data, queries, cfg, device, ctx, pos_weight)
    history, start, position, note = [], 0, None, "resume disabled"
    if cfg.resume:
        ckpt, _, note = _find_resume(out_dir, cfg, table, data, state, ctx.world)
        if ckpt is not None:
            model.load_state_dict(ckpt["model_state"])
            opt.load_state_dict(ckpt["optimizer_state"])
            if "scaler_state" in ckpt and trainer.scaler.is_enabled():
                trainer.scaler.load_state_dict(ckpt["scaler_state"])
            history, start, position = [dict(r) for r in ckpt["history"]], int(ckpt["epoch"]), ckpt.get("position")
    steps = trainer.steps_per_epoch
    total, step = steps * cfg.epochs, steps * start + (int(position["done"]) if position else 0)
    if writer:
        log.info("pretrain: %d train / %d val records, %d labels, %d process(es) x micro-batch %d x %d accum = "
                 "global batch %d, %d steps/epoch, device %s, precision %s; %s; state %s", data.n_train, data.n_val,
                 len(table.ids), ctx.world, trainer.micro, cfg.grad_accum_steps,
                 trainer.micro * ctx.world * cfg.grad_accum_steps, steps, device, trainer.amp or "fp32", note, state)

    def snapshot(epoch, at=None, hist=None):
        """The checkpoint dict at a whole epoch or (``at``) a mid-epoch position."""
        return _checkpoint(model, opt, epoch, history if hist is None else hist, table, queries, text, cfg, data,
                           trainer.scaler, at)

    def save_step(at: dict) -> None:
        if writer:
            save_state(state, snapshot(at["epoch"], {**at, "seconds": time.perf_counter() - t_epoch + elapsed}),
                       mid_epoch=True)

    for epoch in range(start, cfg.epochs):
        t_epoch, elapsed = time.perf_counter(), float(position.get("seconds", 0.0)) if position else 0.0
        train_loss, lr, step = trainer.train_epoch(epoch, step, total, position, save_step, on_step)
        position = None
        val_loss, val_auc = trainer.evaluate(query, epoch)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_macro_auc": val_auc,
               "lr": lr, "seconds": time.perf_counter() - t_epoch + elapsed}
        history.append(row)
        if writer:
            snap = snapshot(epoch + 1)
            save_state(state, snap, mid_epoch=False)
            save_checkpoint(out_dir / IN_PROGRESS, snap)
            write_metrics(history, out_dir / "metrics.parquet")
            log.info("epoch %d/%d: train_loss=%.4f val_loss=%.4f val_macro_auc=%.4f lr=%.3g %.1f s", epoch + 1,
                     cfg.epochs, train_loss, val_loss, val_auc, lr, row["seconds"])
        if on_epoch_end is not None:
            on_epoch_end(row)
    final_epoch = max(start, cfg.epochs)
    if writer:
        final = snapshot(final_epoch)
        save_checkpoint(out_dir / CHECKPOINT, final)
        (out_dir / IN_PROGRESS).unlink(missing_ok=True)
        write_metrics(history, out_dir / "metrics.parquet")
        plot_curve(history, out_dir / "training_curve.png")
    return {
        "n_shard_records": data.n_records, "n_unlabeled_skipped": data.n_unlabeled,
        "n_not_pretraining": data.n_not_pretraining, "validation": "corpus split" if data.explicit_val else "hash",
        "n_duplicates_skipped": data.n_duplicates, "n_labels_without_signal": data.n_labels_without_signal,
        "n_train": data.n_train, "n_val": data.n_val, "n_labels": len(table.ids), "n_samples": data.n_samples,
        "data_mode": "memory" if data.in_memory else "stream", "device": str(device), "start_epoch": start,
        "epochs": final_epoch, "resume": note, "final": history[-1] if history else None,
        "checkpoint": str(out_dir / CHECKPOINT), "seconds": time.perf_counter() - t0, "rank": ctx.rank,
        "world_size": ctx.world, "precision": str(trainer.amp or "fp32"), "state": str(state),
        "micro_batch": trainer.micro,
    }
