"""Training and validation: device, precision, DDP, gradient accumulation, schedule, loss, metrics, progress.

One optimizer step takes ``grad_accum_steps`` micro-batches of ``batch_size // (world · accum)`` records
on every rank, so that a step always covers the global ``batch_size``. The loss of a step is the masked
BCE summed over the step's known label entries of all ranks, divided by their global count: the
gradient is that of one big batch whatever the number of processes and micro-steps (BatchNorm aside:
it is synchronised across ranks, but sees micro-batches under accumulation).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from supreme_ecg.pretrain.config import PretrainConfig

log = logging.getLogger("supreme_ecg.pretrain")


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` → cuda when available, else cpu; with ``local_rank`` (torchrun) a bare ``cuda`` is that GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and local_rank is not None:
        device = torch.device("cuda", local_rank)
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (None = fp32): ``auto`` is bf16 on a CUDA device with bf16, fp16 on older GPUs, fp32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def micro_batch(cfg: PretrainConfig, world: int) -> int:
    """Per-rank micro-batch: ``batch_size // (world · grad_accum_steps)`` (at least 1)."""
    return max(cfg.batch_size // (world * cfg.grad_accum_steps), 1)


@dataclass
class Dist:
    """This process's place under torchrun (RANK, WORLD_SIZE, LOCAL_RANK); one process without it."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started: bool = False

    @classmethod
    def from_env(cls) -> Dist:
        """Read torchrun's environment."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def on(self) -> bool:
        """Whether more than one process trains."""
        return self.world > 1

    def start(self, device: torch.device) -> None:
        """Join the process group: nccl on CUDA, gloo on the CPU."""
        if self.on and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.started = True

    def close(self) -> None:
        """Leave the process group (if this object joined it)."""
        if self.started and dist.is_initialized():
            dist.destroy_process_group()
        self.started = False

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (in place)."""
        if self.on:
            dist.all_reduce(tensor)
        return tensor

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere)."""
        if not self.on:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj) -> list:
        """Every rank's ``obj`` on every rank."""
        if not self.on:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        """All-reduce a copy."""
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        """All-reduce the incoming gradient."""
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _GlooSyncBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d with training statistics over all ranks' batches (torch's SyncBatchNorm is GPU-only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Batch statistics from summed (Σx, Σx², n) of all ranks; gradients flow through the reduction."""
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        c, dims = x.shape[1], [0] + list(range(2, x.dim()))
        n = torch.full((1,), float(x.numel() // c), dtype=x.dtype)
        stats = _AllReduceSum.apply(torch.cat([x.sum(dims), (x * x).sum(dims), n]))
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * total / (total - 1).clamp_min(1), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm over the global batch under DDP: torch's SyncBatchNorm on GPUs, a gloo version on the CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.BatchNorm1d:
            module.__class__ = _GlooSyncBatchNorm  # same parameters and buffers: state_dict unchanged
    return model


def lr_at(step: int, total_steps: int, cfg: PretrainConfig) -> float:
    """Linear warm-up then cosine decay from ``cfg.lr`` to ``cfg.lr * cfg.min_lr_ratio``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(total_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def masked_bce_sum(logits: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE summed over label entries ≥ 0 (negative label values are unknown and masked)."""
    mask = (y >= 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, y.clamp_min(0).to(logits.dtype), reduction="none",
                                              pos_weight=pos_weight)
    return (loss * mask).sum()


def masked_bce(logits: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE over label entries ≥ 0 (negative label values are unknown and masked)."""
    return masked_bce_sum(logits, y, pos_weight) / (y >= 0).sum().to(logits.dtype).clamp_min(1.0)


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


def _tensor(a) -> torch.Tensor:
    """A batch part as a tensor (the data path yields tensors or numpy arrays)."""
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))


def _duration(seconds: float) -> str:
    """h:mm:ss."""
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _gpu_memory(device: torch.device) -> str:
    """Peak allocated / reserved GPU memory (empty on the CPU)."""
    if device.type != "cuda":
        return ""
    gib = 2 ** 30
    return (f" gpu_mem={torch.cuda.max_memory_allocated(device) / gib:.1f}/"
            f"{torch.cuda.memory_reserved(device) / gib:.1f}GiB")


class Trainer:
    """The model on its device (compiled, DDP-wrapped as configured), its optimizer and the data."""

    def __init__(self, model, opt, data, queries, cfg: PretrainConfig, device, ctx: Dist, pos_weight):
        """Precision, grad scaler, compile and DDP from ``cfg`` and the process group."""
        self.raw, self.opt, self.data, self.queries, self.cfg = model, opt, data, queries, cfg
        self.device, self.ctx, self.pos_weight = device, ctx, pos_weight
        self.amp = resolve_precision(cfg.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.micro = micro_batch(cfg, ctx.world)
        net = model
        if ctx.on:
            net = sync_batchnorm(net, device)
        if cfg.compile:
            net = torch.compile(net)
        if ctx.on:
            net = nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
        self.net = net
        self.gen = torch.Generator()  # query phrasings: the same draw on every rank, for any number of ranks
        self.counts = queries.count.cpu()
        if hasattr(data, "train_steps"):  # micro-batches per rank, as the data path counts them
            self.steps_per_epoch = math.ceil(data.train_steps(self.micro) / cfg.grad_accum_steps)
        else:
            self.steps_per_epoch = math.ceil(data.n_train / (self.micro * ctx.world * cfg.grad_accum_steps))
        self._skip = "skip" in inspect.signature(data.train_batches).parameters

    def autocast(self):
        """Autocast context of the configured precision (a no-op for fp32)."""
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _queries(self) -> torch.Tensor:
        """One phrasing per label for this step."""
        pick = (torch.rand(len(self.counts), generator=self.gen) * self.counts).long().to(self.device)
        return self.queries.embeddings[self.queries.first + pick]

    def _seed(self, epoch: int) -> None:
        """Per-epoch RNG: dropout per rank, query phrasings shared."""
        torch.manual_seed(self.cfg.seed * 1_000 + epoch + 7_919 * self.ctx.rank)
        self.gen.manual_seed(self.cfg.seed * 1_000 + epoch)

    def rng_state(self) -> dict:
        """This rank's RNG states (torch CPU, CUDA, the query generator)."""
        state = {"cpu": torch.get_rng_state(), "gen": self.gen.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict) -> None:
        """Restore :meth:`rng_state`."""
        torch.set_rng_state(state["cpu"])
        self.gen.set_state(state["gen"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def _batches(self, epoch: int, skip: int):
        """This rank's micro-batches of the epoch from micro-batch ``skip`` on."""
        if self._skip:
            return iter(self.data.train_batches(epoch, self.micro, skip=skip))
        it = iter(self.data.train_batches(epoch, self.micro))
        for _ in islice(it, skip):  # consume: the order is a pure function of (seed, epoch)
            pass
        return it

    def train_epoch(self, epoch: int, step: int, total: int, position: dict | None = None, save=None, on_step=None):
        """One epoch, from its start or a saved ``position`` → (mean step loss, last lr, global step).

        ``save(position)`` is called (on every rank) every ``checkpoint_every_steps`` steps with the exact
        position (steps done, all ranks' RNG states, the loss so far); ``on_step(step)`` after each step.
        """
        cfg, accum, ctx = self.cfg, self.cfg.grad_accum_steps, self.ctx
        self.raw.train()
        self._seed(epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        done, lr = 0, cfg.lr
        if position is not None:
            done = int(position["done"])
            self.set_rng_state(position["rng"][ctx.rank])
            if ctx.rank == 0:
                loss_sum += float(position["loss_sum"])
        batches = self._batches(epoch, done * accum)
        meter = _Meter("train", epoch, cfg, self.steps_per_epoch, done, self.micro * ctx.world, self.device)
        while True:
            t_wait = time.perf_counter()
            chunk = list(islice(batches, accum))
            meter.wait += time.perf_counter() - t_wait
            if not chunk:
                break
            lr = lr_at(step, total, cfg)
            for group in self.opt.param_groups:
                group["lr"] = lr
            step_loss = self._step(chunk)
            loss_sum += step_loss
            meter.window += step_loss
            step, done = step + 1, done + 1
            meter.records += sum(len(x) for x, _ in chunk) * ctx.world
            if done % cfg.log_every_steps == 0:
                meter.report(done, ctx, lr)
            if save is not None and cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 \
                    and done < self.steps_per_epoch:
                total_loss = ctx.sum(loss_sum.clone())
                save({"epoch": epoch, "done": done, "step": step, "world": ctx.world, "accum": accum,
                      "rng": ctx.all_gather(self.rng_state()), "loss_sum": float(total_loss)})
            if on_step is not None:
                on_step(step)
        if done != meter.last_done:
            meter.report(done, ctx, lr)
        ctx.sum(loss_sum)
        return (float(loss_sum) / done if done else float("nan")), lr, step

    def _step(self, chunk) -> torch.Tensor:
        """One optimizer step over this rank's micro-batches → this rank's share of the step's mean loss."""
        dev, ctx = self.device, self.ctx
        query = self._queries()
        xs = [_tensor(x).to(dev, non_blocking=True) for x, _ in chunk]
        ys = [_tensor(y).to(dev, non_blocking=True).float() for _, y in chunk]
        count = ctx.sum(sum((y >= 0).sum() for y in ys).float()).clamp_min(1.0)  # known entries, all ranks
        scale = ctx.world / count  # DDP averages the ranks' gradients
        share = torch.zeros((), dtype=torch.float64, device=dev)
        for i, (x, y) in enumerate(zip(xs, ys)):
            last = i == len(xs) - 1
            with self.net.no_sync() if ctx.on and not last else nullcontext():
                with self.autocast():
                    logits = self.net(x, query)
                total = masked_bce_sum(logits.float(), y, self.pos_weight)
                self.scaler.scale(total * scale).backward()
            share += (total.detach() / count).double()
        if self.cfg.max_grad_norm:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.raw.parameters(), self.cfg.max_grad_norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        return share

    def evaluate(self, query: torch.Tensor, epoch: int) -> tuple[float, float]:
        """(validation loss, macro AUC) over all ranks' validation records (NaN on ranks > 0 or without any)."""
        cfg, ctx = self.cfg, self.ctx
        self.raw.eval()
        n_batches = math.ceil(self.data.n_val / (self.micro * ctx.world)) if self.data.n_val else 0
        meter = _Meter("val", epoch, cfg, n_batches, 0, self.micro * ctx.world, self.device)
        ys, logits, done = [], [], 0
        with torch.inference_mode(), self.autocast():
            batches = iter(self.data.val_batches(self.micro))
            while True:
                t_wait = time.perf_counter()
                batch = next(batches, None)
                meter.wait += time.perf_counter() - t_wait
                if batch is None:
                    break
                x, y = _tensor(batch[0]), _tensor(batch[1])
                logits.append(self.raw(x.to(self.device, non_blocking=True), query).float().cpu())
                ys.append(y.to(torch.int8))
                done += 1
                meter.records += len(x) * ctx.world
                if done % cfg.log_every_steps == 0:
                    meter.report(done, None, None)
        mine = (torch.cat(logits) if logits else None, torch.cat(ys) if ys else None)
        parts = [p for p in ctx.gather(mine) or [] if p[0] is not None]
        if done:
            meter.report(done, None, None, final=True)
        if ctx.rank != 0 or not parts:
            return float("nan"), float("nan")
        logit, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        weight = None if self.pos_weight is None else self.pos_weight.cpu()
        loss = float(masked_bce(logit, y.float(), weight))
        return loss, macro_auc(y.numpy(), torch.sigmoid(logit).numpy())[0]


class _Meter:
    """Progress lines of one pass: step/total, loss, lr, records/s, data-wait share, GPU memory, ETA."""

    def __init__(self, what: str, epoch: int, cfg: PretrainConfig, total: int, done: int, per_step: int, device):
        """Start the clocks."""
        self.what, self.epoch, self.cfg, self.total, self.device = what, epoch, cfg, total, device
        self.start_done, self.per_step = done, per_step
        self.t0 = self.t_last = time.perf_counter()
        self.wait = self.wait_last = 0.0
        self.records = self.records_last = 0
        self.last_done = done
        self.window = torch.zeros((), dtype=torch.float64, device=device)

    def report(self, done: int, ctx: Dist | None, lr: float | None, final: bool = False) -> None:
        """Log one line (rank 0); the training loss is the mean step loss since the last line, all ranks."""
        loss, since = "", self.last_done
        self.last_done = done  # on every rank: the epoch-end line is collective too
        if ctx is not None:
            window = float(ctx.sum(self.window.clone())) / max(done - since, 1)
            self.window.zero_()
            loss = f" loss={window:.4f} lr={lr:.3g}"
        if os.environ.get("RANK", "0") != "0":
            return
        now = time.perf_counter()
        span = max(now - self.t_last, 1e-9)
        rate = (self.records - self.records_last) / span
        wait = (self.wait - self.wait_last) / span
        per = (now - self.t0) / max(done - self.start_done, 1)
        eta = per * max(self.total - done, 0)
        run_eta = ""
        if self.what == "train":
            run_eta = f" eta_run={_duration(eta + per * self.total * max(self.cfg.epochs - self.epoch - 1, 0))}"
        label = "done" if final else f"{done}/{self.total}"
        log.info("%s epoch %d/%d step %s%s records/s=%.0f data_wait=%.0f%%%s eta_epoch=%s%s", self.what,
                 self.epoch + 1, self.cfg.epochs, label, loss, rate, 100 * min(wait, 1.0), _gpu_memory(self.device),
                 _duration(eta), run_eta)
        self.t_last, self.wait_last, self.records_last = now, self.wait, self.records
