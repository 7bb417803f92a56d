"""The pretrain stage: supervised multimodal pre-training on extracted labels, as text queries.

Signals (preprocessed Parquet shards) are joined to ``labels.parquet`` (one column per ``label`` of
``label_vocabulary.parquet``) by ``record_id``; each label's ``name`` and its ``members`` (the surface
forms the reports used for it) are embedded once by the frozen text encoder and used as queries of
:class:`~supreme_ecg.model.QueryFusionHead`. Multi-label BCE (label value < 0 = unknown, masked in the
loss and the metrics), AdamW, per-step cosine LR with linear warm-up, deterministic on CPU for a given
seed, resumable.

Outputs in ``out_dir``: ``checkpoint.pt`` (last epoch), ``metrics.parquet``, ``training_curve.png``;
while running, ``checkpoint.in_progress.pt`` (atomically replaced after every epoch).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from supreme_ecg.preprocess import read_signals, signal_n_samples
from supreme_ecg.settings import usable_threads
from supreme_ecg.model import (
    MINILM_NAME, TextEncoder, build_model, default_model_config, load_checkpoint, save_checkpoint,
)

CHECKPOINT = "checkpoint.pt"
IN_PROGRESS = "checkpoint.in_progress.pt"
METRICS_COLUMNS = ["epoch", "train_loss", "val_loss", "val_macro_auc", "lr", "seconds"]
#: shard column naming each record's pre-training split (train / val / "" = not for pre-training)
SPLIT_COLUMN = "pretrain_split"
# settings that may change between a run and its resumption (everything else must match)
RUNTIME_FIELDS = ("epochs", "device", "threads", "resume")


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of the pretrain stage."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    pos_weight: bool = False
    pos_weight_max: float = 50.0
    val_fraction: float = 0.1
    group_column: str = "record_id"
    seed: int = 42
    width: int = 96
    n_heads: int = 4
    dropout: float = 0.1
    downsample: int = 1
    text_encoder: str = MINILM_NAME
    text_pooling: str | None = None
    device: str = "auto"
    threads: int = 2
    resume: bool = True
    query_members: bool = True
    min_member_chars: int = 4
    max_query_members: int = 16
    max_in_memory_records: int = 50_000
    shuffle_buffer: int = 2048

    @classmethod
    def from_mapping(cls, values: dict) -> "PretrainConfig":
        """Build from a config mapping; unknown keys raise ``ValueError``."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown pretrain settings {sorted(unknown)}")
        return cls(**values)

    def resume_key(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        return {k: v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}


# --------------------------------------------------------------------------- shard reading


def iter_row_groups(paths, columns):
    """Yield ``(path, row_group, RecordBatch)`` for every row group of every shard, in order."""
    for path in paths:
        for rg in _row_group_ids(path):
            yield path, rg, read_row_group(path, rg, columns)


def _row_group_ids(path) -> range:
    """Row-group indices of one Parquet file."""
    return range(pq.ParquetFile(path).num_row_groups)


def read_row_group(path, rg: int, columns):
    """One row group as a single RecordBatch, streamed with ``iter_batches``."""
    pf = pq.ParquetFile(path)
    size = max(pf.metadata.row_group(rg).num_rows, 1)
    batches = list(pf.iter_batches(batch_size=size, row_groups=[rg], columns=list(columns)))
    if len(batches) == 1:
        return batches[0]
    return pf.read_row_group(rg, columns=list(columns)).combine_chunks()  # empty or split: rare


def n_samples_of(path) -> int:
    """Samples per lead of a shard, from its ``signal`` type."""
    return signal_n_samples(pq.ParquetFile(path).schema_arrow.field("signal").type)


def hash_fraction(key: str) -> float:
    """Stable uniform number in [0, 1) from a key (SHA-256, independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(str(key).encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelTable:
    """The training labels: ids (``label`` slugs), names and member surface forms, in vocabulary order,
    and the int8 (n, K) matrix (1 present, 0 absent, -1 unknown) with its record_id → row index."""

    index: dict
    matrix: np.ndarray
    ids: list[str]
    names: list[str]
    members: list[list[str]]


def _member_forms(value) -> list[str]:
    """Surface forms of one ``members`` cell (list of {surface_form, n_records}), most frequent first."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    forms = [m["surface_form"] if isinstance(m, dict) else m for m in value]
    return [str(f) for f in forms if f is not None and str(f).strip()]


def read_label_vocabulary(vocabulary_path) -> tuple[list[str], list[str], list[list[str]]]:
    """(label ids, names, member surface forms) of ``label_vocabulary.parquet`` in ``label_index`` order."""
    vocab = pd.read_parquet(vocabulary_path)
    if "label_index" in vocab.columns:
        vocab = vocab.sort_values("label_index")
    missing = {"label", "name"} - set(vocab.columns)
    if missing:
        raise ValueError(f"label vocabulary {vocabulary_path} lacks columns {sorted(missing)}")
    cells = vocab["members"] if "members" in vocab.columns else [None] * len(vocab)
    members = [_member_forms(m) for m in cells]
    return [str(c) for c in vocab["label"]], [str(n) for n in vocab["name"]], members


def read_label_table(labels_path, vocabulary_path) -> LabelTable:
    """Labels of ``labels.parquet`` for the vocabulary's ``label`` columns (missing values → -1)."""
    ids, names, members = read_label_vocabulary(vocabulary_path)
    labels = pd.read_parquet(labels_path)
    missing = [c for c in ids if c not in labels.columns]
    if missing:
        raise ValueError(f"labels {labels_path} lack vocabulary labels {missing[:10]}")
    if labels["record_id"].duplicated().any():
        raise ValueError(f"labels {labels_path} repeat record ids")
    index = {str(r): i for i, r in enumerate(labels["record_id"])}
    matrix = labels[ids].to_numpy(dtype=np.float64, na_value=-1).reshape(len(labels), len(ids))
    return LabelTable(index, matrix.astype(np.int8), ids, names, members)


# --------------------------------------------------------------------------- data


class _Data:
    """Labelled records of the shards: the join, the split, and batch iterators (memory or stream)."""

    def __init__(self, shard_paths, label_index: dict, label_matrix: np.ndarray, cfg: PretrainConfig):
        """Scan record ids of every row group, join to the labels and assign the split."""
        self.paths, self.cfg, self.matrix = [str(p) for p in shard_paths], cfg, label_matrix
        self.units, seen, self.n_records, self.n_unlabeled, self.n_duplicates = [], set(), 0, 0, 0
        self.n_not_pretraining = 0
        self.n_samples = self._check_lengths()
        for path in self.paths:
            names = pq.read_schema(path).names
            cols = ["record_id"] + [c for c in (cfg.group_column, SPLIT_COLUMN) if c in names and c != "record_id"]
            for rg in _row_group_ids(path):
                self._scan(path, rg, read_row_group(path, rg, cols), label_index, seen)
        self.n_labels_without_signal = len(set(label_index) - seen)
        # the corpus's own validation rows (e.g. PTB-XL fold 9) when it names any, else a hash split by group
        self.explicit_val = any(u["split_val"].any() for u in self.units)
        for u in self.units:
            u["val"] = u["split_val"] if self.explicit_val else u["hash_val"]
        val = np.concatenate([u["val"] for u in self.units]) if self.units else np.zeros(0, bool)
        self.n_val, self.n_train = int(val.sum()), int((~val).sum())
        self.in_memory = self.n_train + self.n_val <= cfg.max_in_memory_records
        if self.in_memory and self.units:
            self._load_all()

    def _check_lengths(self) -> int:
        """The common ``n_samples`` of all shards."""
        sizes = {n_samples_of(p) for p in self.paths}
        if len(sizes) > 1:
            raise ValueError(f"shards have different signal lengths {sorted(sizes)}")
        return sizes.pop() if sizes else 0

    def _scan(self, path, rg, batch, label_index, seen) -> None:
        """Record which rows of one row group are labelled (first occurrence), and their split."""
        ids = [str(r) for r in batch.column("record_id").to_pylist()]
        groups = batch.column(self.cfg.group_column).to_pylist() if self.cfg.group_column in batch.schema.names else ids
        splits = batch.column(SPLIT_COLUMN).to_pylist() if SPLIT_COLUMN in batch.schema.names else [None] * len(ids)
        rows, label_rows, hash_val, split_val = [], [], [], []
        for i, (rid, group, split) in enumerate(zip(ids, groups, splits)):
            self.n_records += 1
            if split == "":  # in the corpus's manifest but not for pre-training (e.g. PTB-XL fold 10)
                self.n_not_pretraining += 1
            elif rid in seen:
                self.n_duplicates += 1
            elif rid not in label_index:
                self.n_unlabeled += 1
            else:
                seen.add(rid)
                rows.append(i)
                label_rows.append(label_index[rid])
                hash_val.append(hash_fraction(str(group)) < self.cfg.val_fraction)
                split_val.append(split == "val")
        if rows:
            self.units.append({"path": path, "rg": rg, "rows": np.asarray(rows), "labels": np.asarray(label_rows),
                               "hash_val": np.asarray(hash_val, bool), "split_val": np.asarray(split_val, bool)})

    def _load_all(self) -> None:
        """Read every kept signal into one preallocated (n, 12, L) float32 array."""
        n = self.n_train + self.n_val
        self.x = np.empty((n, 12, self.n_samples), np.float32)
        start = 0
        for u in self.units:
            signals = read_signals(read_row_group(u["path"], u["rg"], ["signal"]))
            self.x[start:start + len(u["rows"])] = signals[u["rows"]]
            start += len(u["rows"])
        self.y = self.matrix[np.concatenate([u["labels"] for u in self.units])]
        val = np.concatenate([u["val"] for u in self.units])
        self.train_idx, self.val_idx = np.flatnonzero(~val), np.flatnonzero(val)

    def train_labels(self) -> np.ndarray:
        """int8 labels of the training records (for pos_weight)."""
        parts = [self.matrix[u["labels"][~u["val"]]] for u in self.units]
        return np.concatenate(parts) if parts else np.zeros((0, self.matrix.shape[1]), np.int8)

    def train_batches(self, epoch: int):
        """Shuffled (x, y) training batches; the order depends only on (seed, epoch)."""
        rng = np.random.default_rng([self.cfg.seed, epoch])
        if self.in_memory:
            order = self.train_idx[rng.permutation(len(self.train_idx))]
            for i in range(0, len(order), self.cfg.batch_size):
                idx = np.sort(order[i:i + self.cfg.batch_size])
                yield self.x[idx], self.y[idx]
            return
        yield from self._stream(rng, train=True)

    def val_batches(self):
        """(x, y) validation batches in file order."""
        if self.in_memory:
            for i in range(0, len(self.val_idx), self.cfg.batch_size):
                idx = self.val_idx[i:i + self.cfg.batch_size]
                yield self.x[idx], self.y[idx]
            return
        yield from self._stream(None, train=False)

    def _stream(self, rng, train: bool):
        """Batches read row group by row group through a bounded shuffle buffer (none for val)."""
        order = rng.permutation(len(self.units)) if rng is not None else range(len(self.units))
        units = [self.units[i] for i in order]
        limit = max(self.cfg.shuffle_buffer, self.cfg.batch_size) if rng is not None else self.cfg.batch_size
        xs, ys, held = [], [], 0
        for u in units:
            keep = ~u["val"] if train else u["val"]
            if not keep.any():
                continue
            signals = read_signals(read_row_group(u["path"], u["rg"], ["signal"]))
            xs.append(signals[u["rows"][keep]])
            ys.append(self.matrix[u["labels"][keep]])
            held += int(keep.sum())
            if held >= limit:
                xs, ys, held = yield from self._drain(xs, ys, rng, final=False)
        if held:
            yield from self._drain(xs, ys, rng, final=True)

    def _drain(self, xs, ys, rng, final: bool):
        """Emit full batches from the buffer (shuffled); keep the remainder unless ``final``."""
        x, y = np.concatenate(xs), np.concatenate(ys)
        if rng is not None:
            perm = rng.permutation(len(x))
            x, y = x[perm], y[perm]
        bs = self.cfg.batch_size
        stop = len(x) if final else len(x) // bs * bs
        for i in range(0, stop, bs):
            yield x[i:i + bs], y[i:i + bs]
        rest = len(x) - stop
        return ([x[stop:]], [y[stop:]], rest) if rest else ([], [], 0)


# --------------------------------------------------------------------------- training pieces


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


def label_phrasings(names: list[str], members: list[list[str]], cfg: PretrainConfig) -> list[list[str]]:
    """Each label's query texts: its name, then (``query_members``) up to ``max_query_members`` of its
    member surface forms (most frequent first, at least ``min_member_chars`` long, the name excluded)."""
    phrasings = []
    for name, forms in zip(names, members):
        texts, seen = [name], {name.strip().lower()}
        if cfg.query_members:
            for form in forms:
                key = form.strip().lower()
                if len(texts) - 1 >= cfg.max_query_members:
                    break
                if len(key) >= cfg.min_member_chars and key not in seen:
                    texts.append(form)
                    seen.add(key)
        phrasings.append(texts)
    return phrasings


class QueryBank:
    """Text embeddings of every label's phrasings, encoded once; one phrasing per label per step.

    A label's phrasings are its name and the member surface forms that standardisation merged into it
    (``label_vocabulary.parquet``: they come from the reports, not from any curated list). Training on
    all of them teaches the head the region of text space around each label, so zero-shot class
    descriptions that word a finding differently still land on it. With ``query_members`` off, or for
    a label without other members, it always returns the name.
    """

    def __init__(self, text, names: list[str], members: list[list[str]], cfg: PretrainConfig, device):
        phrasings = label_phrasings(names, members, cfg)
        self.phrasings = phrasings
        flat = [t for texts in phrasings for t in texts]
        self.embeddings = text.encode(flat).to(device)  # once per run, never per step
        self.first = torch.tensor(np.cumsum([0] + [len(t) for t in phrasings[:-1]]), device=device)
        self.count = torch.tensor([len(t) for t in phrasings], device=device)
        self.canonical = self.embeddings[self.first]

    def sample(self) -> torch.Tensor:
        """One random phrasing per label (torch's global RNG, seeded per epoch)."""
        pick = (torch.rand(len(self.count), device=self.count.device) * self.count).long()
        return self.embeddings[self.first + pick]


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


# --------------------------------------------------------------------------- outputs


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


# --------------------------------------------------------------------------- the stage


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
