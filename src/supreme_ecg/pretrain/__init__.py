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
while running, ``checkpoint.in_progress.pt`` (atomically replaced after every epoch).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from supreme_ecg.model import TextEncoder, build_model, default_model_config, save_checkpoint
from supreme_ecg.settings import usable_threads
from supreme_ecg.pretrain.config import CHECKPOINT, IN_PROGRESS, METRICS_COLUMNS, RUNTIME_FIELDS, SPLIT_COLUMN, PretrainConfig
from supreme_ecg.pretrain.data import _Data
from supreme_ecg.pretrain.labels import LabelTable, QueryBank, label_phrasings, read_label_table, read_label_vocabulary
from supreme_ecg.pretrain.loop import compute_pos_weight, evaluate, lr_at, macro_auc, masked_bce, resolve_device, train_epoch
from supreme_ecg.pretrain.outputs import _checkpoint, _find_resume, plot_curve, write_metrics
from supreme_ecg.pretrain.shards import hash_fraction, iter_row_groups, n_samples_of, read_row_group

__all__ = [  # the stage, and what the zero-shot stage, the CLI and the tests use of its modules
    "CHECKPOINT", "IN_PROGRESS", "METRICS_COLUMNS", "RUNTIME_FIELDS", "SPLIT_COLUMN", "LabelTable", "PretrainConfig",
    "QueryBank", "compute_pos_weight", "evaluate", "hash_fraction", "iter_row_groups", "label_phrasings", "lr_at",
    "macro_auc", "masked_bce", "n_samples_of", "pretrain", "read_label_table", "read_label_vocabulary",
    "read_row_group", "resolve_device", "train_epoch",
]


def pretrain(shard_paths, labels_path, vocabulary_path, out_dir, cfg: PretrainConfig = PretrainConfig(),
             text_encoder: TextEncoder | None = None, on_epoch_end=None) -> dict:
    """Pre-train and write ``checkpoint.pt``, ``metrics.parquet``, ``training_curve.png``; return a summary.

    ``text_encoder`` overrides the one named by ``cfg`` (anything with ``name``, ``pooling`` and
    ``encode``); ``on_epoch_end(row)`` is called after each epoch's checkpoint is saved.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(usable_threads(cfg.threads))
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    table = read_label_table(labels_path, vocabulary_path)
    data = _Data(shard_paths, table.index, table.matrix, cfg)
    if data.n_train == 0:
        raise ValueError("no labelled training records: check that shard and label record ids match")
    text = text_encoder or TextEncoder(cfg.text_encoder, cfg.text_pooling)
    queries = QueryBank(text, table.names, table.members, cfg, device)
    query = queries.canonical
    model = build_model(default_model_config(text_dim=query.shape[1], width=cfg.width, downsample=cfg.downsample,
                                             n_heads=cfg.n_heads, dropout=cfg.dropout)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pos_weight = compute_pos_weight(data.train_labels(), cfg.pos_weight_max).to(device) if cfg.pos_weight else None
    history, start, note = [], 0, "resume disabled"
    if cfg.resume:
        ckpt, _, note = _find_resume(out_dir, cfg, table, data)
        if ckpt is not None:
            model.load_state_dict(ckpt["model_state"])
            opt.load_state_dict(ckpt["optimizer_state"])
            history, start = [dict(r) for r in ckpt["history"]], int(ckpt["epoch"])
    steps = math.ceil(data.n_train / cfg.batch_size)
    total, step = steps * cfg.epochs, steps * start
    for epoch in range(start, cfg.epochs):
        t_epoch = time.perf_counter()
        train_loss, lr, step = train_epoch(model, opt, data, queries, epoch, step, total, cfg, device, pos_weight)
        val_loss, val_auc = evaluate(model, data, query, device, pos_weight)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_macro_auc": val_auc,
               "lr": lr, "seconds": time.perf_counter() - t_epoch}
        history.append(row)
        state = _checkpoint(model, opt, epoch + 1, history, table, queries, text, cfg, data)
        save_checkpoint(out_dir / IN_PROGRESS, state)
        write_metrics(history, out_dir / "metrics.parquet")
        if on_epoch_end is not None:
            on_epoch_end(row)
    final_epoch = max(start, cfg.epochs)
    state = _checkpoint(model, opt, final_epoch, history, table, queries, text, cfg, data)
    save_checkpoint(out_dir / CHECKPOINT, state)
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
        "checkpoint": str(out_dir / CHECKPOINT), "seconds": time.perf_counter() - t0,
    }
