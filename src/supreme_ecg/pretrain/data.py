"""The labelled records of the shards: the join with the labels, the split, batch iterators."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from supreme_ecg.preprocess import read_signals
from supreme_ecg.pretrain.config import SPLIT_COLUMN, PretrainConfig
from supreme_ecg.pretrain.shards import _row_group_ids, hash_fraction, n_samples_of, read_row_group


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
