"""One epoch of training and one validation pass: device, schedule, loss, metrics."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from supreme_ecg.pretrain.config import PretrainConfig
from supreme_ecg.pretrain.data import _Data
from supreme_ecg.pretrain.labels import QueryBank


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_at(step: int, total_steps: int, cfg: PretrainConfig) -> float:
    """Linear warm-up then cosine decay from ``cfg.lr`` to ``cfg.lr * cfg.min_lr_ratio``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(total_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def masked_bce(logits: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE over label entries ≥ 0 (negative label values are unknown and masked)."""
    mask = (y >= 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, y.clamp_min(0).to(logits.dtype), reduction="none",
                                              pos_weight=pos_weight)
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def macro_auc(y: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """(mean ROC AUC over labels with both classes among known entries, number of such labels)."""
    aucs = []
    for k in range(y.shape[1]):
        known = y[:, k] >= 0
        truth = y[known, k] > 0
        if 0 < truth.sum() < len(truth):
            aucs.append(roc_auc_score(truth, scores[known, k]))
    return (float(np.mean(aucs)) if aucs else float("nan")), len(aucs)


def compute_pos_weight(y: np.ndarray, cap: float) -> torch.Tensor:
    """Per-label n_neg / n_pos, clipped to [1, cap] (labels without positives get ``cap``)."""
    pos = (y > 0).sum(0).astype(np.float64)
    neg = (y == 0).sum(0).astype(np.float64)
    ratio = np.where(pos > 0, neg / np.maximum(pos, 1), cap)
    return torch.tensor(np.clip(ratio, 1.0, cap), dtype=torch.float32)


def _to_tensors(x: np.ndarray, y: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Numpy batch → tensors on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(device), torch.from_numpy(y.astype(np.float32)).to(device)



def train_epoch(model, opt, data: _Data, queries: QueryBank, epoch: int, step0: int, total: int, cfg, device,
                pos_weight):
    """One training epoch → (mean loss, last lr, steps done)."""
    torch.manual_seed(cfg.seed * 1_000 + epoch)  # dropout and phrasings: same on a resumed run
    model.train()
    losses, lr, step = [], cfg.lr, step0
    for x, y in data.train_batches(epoch):
        lr = lr_at(step, total, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        xt, yt = _to_tensors(x, y, device)
        loss = masked_bce(model(xt, queries.sample()), yt, pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
    return (float(np.mean(losses)) if losses else float("nan")), lr, step


def evaluate(model, data: _Data, query, device, pos_weight=None) -> tuple[float, float]:
    """(validation loss, validation macro AUC); NaN without validation records."""
    model.eval()
    ys, logits = [], []
    with torch.inference_mode():
        for x, y in data.val_batches():
            logits.append(model(_to_tensors(x, y, device)[0], query).float().cpu())
            ys.append(y)
    if not ys:
        return float("nan"), float("nan")
    logit, y = torch.cat(logits), np.concatenate(ys)
    weight = None if pos_weight is None else pos_weight.cpu()
    loss = float(masked_bce(logit, torch.from_numpy(y.astype(np.float32)), weight))
    return loss, macro_auc(y, torch.sigmoid(logit).numpy())[0]
