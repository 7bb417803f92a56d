"""The labelled records of the shards: the join with the labels, the split, batch iterators.

Small corpora (``max_in_memory_records``) are read once into one array. Larger ones stream: each
epoch is planned in the training process as a list of *windows* (whole row groups, about
``shuffle_buffer`` records and at most :data:`WINDOW_BYTES`), a pure function of (seed, epoch,
rank, world_size). A torch ``DataLoader`` (map-style dataset indexed by window plans, so its order is
the plan's whatever the number of workers) reads each window's row groups in a worker, views the
fixed-size binary column with ``np.frombuffer`` and scatters the rows into the window's shuffled
order; the training process only slices batches off the windows. Memory in flight is bounded by
``(loader_workers × 2 + 2)`` windows, independent of the number of records. Read in process
(``loader_workers=0``), a window is filled into a buffer of a small pool (:data:`POOL_WINDOWS`),
reused once no tensor of its previous window is alive: a freshly allocated 128 MiB window costs a
page fault per 4 KiB on first touch, which is most of the CPU of the data path.
"""

from __future__ import annotations

import weakref

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from supreme_ecg.preprocess import read_signals, shard_preprocess_settings, signal_dtype_of
from supreme_ecg.pretrain.config import SPLIT_COLUMN, PretrainConfig
from supreme_ecg.pretrain.shards import _row_group_ids, hash_fraction, n_samples_of, read_row_group

#: Upper bound on the signal bytes (float32) of one streamed window.
WINDOW_BYTES = 128 << 20
#: Default budget (float32 bytes per rank) of the validation cache; records beyond it are re-read.
VAL_CACHE_BYTES = 2 << 30
#: Window buffers an in-process reader keeps for reuse (the current window, the previous one that
#: batches or a carried tail may still view, and one spare).
POOL_WINDOWS = 3


class _WindowReader(Dataset):
    """Reads one window plan ``(parts, n, label_rows)`` → ``(x float32 (n, 12, L), y int8 (n, K))``.

    ``parts`` are ``(path index, row group, rows or None for all, output positions)``.

    In process, windows are filled into pooled buffers: each window's tensor is made with
    ``torch.from_numpy`` of a fresh view of its buffer, so the view lives exactly as long as any
    tensor sharing that storage (batches, slices, ``numpy()`` of them); a buffer is reused only
    once the weak reference to its last view is dead. In a worker every window is a new
    shared-memory tensor (the training process owns it once sent).
    """

    def __init__(self, paths, n_samples: int, matrix: np.ndarray, capacity: int = 0):
        """Remember the shards; files are opened (memory-mapped) lazily in each process.

        ``capacity``: records a pooled buffer is made for (the largest window expected), so that
        windows of every size fit the same buffers.
        """
        self.paths, self.n_samples, self.matrix, self._files = list(paths), n_samples, matrix, {}
        self._pool: list = []  # [buffer (capacity, 12, L) float32, weakref to the view in use or None]
        self._largest = int(capacity)

    def __getstate__(self):
        """Open files and pooled buffers stay behind when pickled to a worker."""
        return {**self.__dict__, "_files": {}, "_pool": [], "_largest": 0}

    def _pooled(self, n: int) -> torch.Tensor:
        """An (n, 12, L) float32 tensor over a pooled buffer that nothing else views any more.

        The smallest free buffer that fits is reused; otherwise a new one (of the capacity or the
        largest window seen, so that later windows fit) replaces a free one that is too small, else the
        oldest busy one (which stays with whoever holds it), keeping at most :data:`POOL_WINDOWS`.
        The first call also makes (and touches) a spare: a window is filled while the previous one
        is still viewed (by the last batches and the carried tail), so a stream needs two.
        """
        self._largest = max(self._largest, n)
        free = [e for e in self._pool if e[1] is None or e[1]() is None]
        fits = [e for e in free if len(e[0]) >= n]
        if fits:
            entry = min(fits, key=lambda e: len(e[0]))
        else:
            if len(self._pool) >= POOL_WINDOWS:
                self._pool.remove(free[0] if free else self._pool[0])
            entry = [self._buffer(), None]
            self._pool.append(entry)
            if len(self._pool) == 1:
                spare = self._buffer()
                spare.fill(0)  # its pages now, not in the middle of the stream
                self._pool.append([spare, None])
        view = entry[0][:n]
        entry[1] = weakref.ref(view)
        return torch.from_numpy(view)  # the tensor's storage keeps ``view`` alive

    def _buffer(self) -> np.ndarray:
        """A new (capacity, 12, L) float32 buffer.

        Made by torch's allocator, not numpy's: numpy asks for transparent huge pages on large
        arrays, whose first touch can stall in the kernel's compaction far longer than 4 KiB faults.
        """
        return torch.empty((self._largest, 12, self.n_samples), dtype=torch.float32).numpy()

    def _view(self, path_idx: int, rg: int) -> np.ndarray:
        """One row group's signals as a (rows, 12 * L) view of the Arrow buffer (stored dtype)."""
        if path_idx not in self._files:
            # one column read whole, single-threaded and without pre-buffering (both measured slower)
            pf = pq.ParquetFile(self.paths[path_idx], memory_map=True, pre_buffer=False)
            self._files[path_idx] = (pf, signal_dtype_of(pf.schema_arrow.field("signal")))
        pf, dtype = self._files[path_idx]
        width = 12 * self.n_samples
        chunks = pf.read_row_group(rg, columns=["signal"], use_threads=False).column(0).chunks
        views = [np.frombuffer(c.buffers()[1], dtype, count=len(c) * width, offset=c.offset * width * dtype.itemsize)
                 .reshape(len(c), width) for c in chunks if len(c)]
        return views[0] if len(views) == 1 else np.concatenate(views) if views else np.zeros((0, width), dtype)

    def __len__(self) -> int:
        """Unused (the sampler yields plans)."""
        return 0

    def __getitem__(self, plan):
        """Assemble one window: every part's rows scattered to their shuffled positions."""
        parts, n, label_rows = plan
        if get_worker_info() is not None:
            x = torch.empty((n, 12, self.n_samples), dtype=torch.float32)
            x.share_memory_()  # filled in place, handed to the training process without a copy
        else:
            x = self._pooled(n)
        out = x.numpy().reshape(n, -1)
        for path_idx, rg, rows, pos in parts:
            view = self._view(path_idx, rg)
            if rows is None:
                out[pos] = view
            else:  # row by row: no gathered temporary (a second copy into fresh pages)
                for p, r in zip(pos.tolist(), rows.tolist()):
                    out[p] = view[r]
        return x, torch.from_numpy(self.matrix[label_rows])


class _PlanSampler(Sampler):
    """Yields the window plans set for the next pass."""

    def __init__(self):
        """No plans until :meth:`set`."""
        self.plans: list = []

    def set(self, plans) -> None:
        """The window plans of the next pass."""
        self.plans = list(plans)

    def __iter__(self):
        """The plans in order."""
        return iter(self.plans)

    def __len__(self) -> int:
        """Number of plans."""
        return len(self.plans)


class _Data:
    """Labelled records of the shards: the join, the split, and batch iterators (memory or stream)."""

    def __init__(self, shard_paths, label_index: dict, label_matrix: np.ndarray, cfg: PretrainConfig,
                 rank: int = 0, world_size: int = 1, val_cache_bytes: int = VAL_CACHE_BYTES, pin_memory=None):
        """Scan record ids of every row group, join to the labels and assign the split."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.paths, self.cfg, self.matrix = [str(p) for p in shard_paths], cfg, label_matrix
        self.rank, self.world_size, self.val_cache_bytes = int(rank), int(world_size), int(val_cache_bytes)
        self.pin_memory = (torch.cuda.is_available() and not str(cfg.device).startswith("cpu")
                           if pin_memory is None else bool(pin_memory))
        self.units, seen, self.n_records, self.n_unlabeled, self.n_duplicates = [], set(), 0, 0, 0
        self.n_not_pretraining = 0
        self.n_samples = self._check_lengths()
        self.preprocess = self._check_preprocess()
        for k, path in enumerate(self.paths):
            names = pq.read_schema(path).names
            cols = ["record_id"] + [c for c in (cfg.group_column, SPLIT_COLUMN) if c in names and c != "record_id"]
            for rg in _row_group_ids(path):
                self._scan(path, rg, read_row_group(path, rg, cols), label_index, seen, k)
        self.n_labels_without_signal = len(set(label_index) - seen)
        # the corpus's own validation rows (e.g. PTB-XL fold 9) when it names any, else a hash split by group
        self.explicit_val = any(u["split_val"].any() for u in self.units)
        for u in self.units:
            u["val"] = u["split_val"] if self.explicit_val else u["hash_val"]
        val = np.concatenate([u["val"] for u in self.units]) if self.units else np.zeros(0, bool)
        self.n_val, self.n_train = int(val.sum()), int((~val).sum())
        self.in_memory = self.n_train + self.n_val <= cfg.max_in_memory_records
        self._loader = self._val_cache = self._reader = None
        if self.in_memory and self.units:
            self._load_all()

    def _check_lengths(self) -> int:
        """The common ``n_samples`` of all shards."""
        sizes = {n_samples_of(p) for p in self.paths}
        if len(sizes) > 1:
            raise ValueError(f"shards have different signal lengths {sorted(sizes)}")
        return sizes.pop() if sizes else 0

    def _check_preprocess(self) -> dict:
        """The preprocessing settings all shards were written with (stored in the checkpoint; empty when
        a shard does not record them, e.g. one written by hand — ``predict`` then refuses the checkpoint)."""
        settings = [shard_preprocess_settings(p) for p in self.paths]
        if any(s != settings[0] for s in settings[1:]):
            raise ValueError("shards were preprocessed with different settings; rerun preprocess_shard")
        return settings[0] if settings else {}

    def _scan(self, path, rg, batch, label_index, seen, path_idx: int) -> None:
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
            self.units.append({"path": path, "path_idx": path_idx, "rg": rg, "n_rows": len(ids),
                               "rows": np.asarray(rows), "labels": np.asarray(label_rows),
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

    # ------------------------------------------------------------------ shares and batches

    def n_train_rank(self) -> int:
        """Training records each rank yields per epoch (``n_train // world_size``; the rest is dropped)."""
        return self.n_train // self.world_size

    def train_steps(self, batch_size: int | None = None) -> int:
        """Batches :meth:`train_batches` yields on every rank per epoch."""
        return -(-self.n_train_rank() // (batch_size or self.cfg.batch_size))

    def _val_bounds(self) -> tuple[int, int]:
        """This rank's contiguous share [start, stop) of the validation records (file order)."""
        return self.n_val * self.rank // self.world_size, self.n_val * (self.rank + 1) // self.world_size

    def train_batches(self, epoch: int, batch_size: int | None = None):
        """This rank's shuffled ``(x, y)`` training batches of one epoch.

        The order is a pure function of (seed, epoch, rank, world_size): one permutation per epoch
        (``n_train % world_size`` records dropped), shared by the ranks so that they read disjoint
        records and yield the same number of batches of the same sizes. In memory the ranks take
        every ``world_size``-th record, so that step k of N ranks trains on exactly the records of
        step k of one process with the same global batch; streaming they take contiguous shares
        (whole row groups), which keeps reads sequential.
        """
        bs = batch_size or self.cfg.batch_size
        rng = np.random.default_rng([self.cfg.seed, epoch])
        n_per = self.n_train_rank()
        if self.in_memory:
            order = self.train_idx[rng.permutation(len(self.train_idx))][:n_per * self.world_size][self.rank::self.world_size]
            for i in range(0, len(order), bs):
                yield self._take(np.sort(order[i:i + bs]))
            return
        yield from self._slice(self._windows(self._train_sequence(rng, n_per), rng), bs)

    def val_batches(self, batch_size: int | None = None):
        """This rank's validation batches in file order (ranks' shares differ by at most one record).

        Streaming, the first pass fills a cache of up to ``val_cache_bytes``; later passes re-read
        only the records beyond it.
        """
        bs = batch_size or self.cfg.batch_size
        start, stop = self._val_bounds()
        if self.in_memory:
            idx = self.val_idx[start:stop]
            for i in range(0, len(idx), bs):
                yield self._take(idx[i:i + bs])
            return
        yield from self._slice(self._val_chunks(start, stop), bs)

    def _take(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """In-memory batch ``idx`` gathered straight into (pinned when CUDA is used) tensors."""
        x = torch.empty((len(idx), 12, self.n_samples), dtype=torch.float32, pin_memory=self.pin_memory)
        np.take(self.x, idx, axis=0, out=x.numpy())
        return x, torch.from_numpy(self.y[idx])

    def _slice(self, chunks, bs: int):
        """Cut a stream of ``(x, y)`` chunks into batches of ``bs`` (views; a batch across chunks is joined)."""
        carry: list = []
        held = 0
        for x, y in chunks:
            at = 0
            if carry:
                take = min(bs - held, len(x))
                carry.append((x[:take], y[:take]))
                held, at = held + take, take
                if held < bs:
                    continue
                yield self._join(carry)
                carry, held = [], 0
            stop = at + (len(x) - at) // bs * bs
            for i in range(at, stop, bs):
                yield x[i:i + bs], y[i:i + bs]
            if stop < len(x):
                carry, held = [(x[stop:], y[stop:])], len(x) - stop
        if carry:
            yield self._join(carry)

    def _join(self, pieces):
        """One batch from chunk pieces."""
        if len(pieces) == 1:
            return pieces[0]
        xs, ys = zip(*pieces)
        x = torch.empty((sum(len(p) for p in xs), 12, self.n_samples), pin_memory=self.pin_memory)
        np.concatenate([p.numpy() for p in xs], out=x.numpy())  # one thread, as the rest of the path
        return x, torch.cat(ys)

    # ------------------------------------------------------------------ streaming plans

    def _train_sequence(self, rng, n_per: int):
        """This rank's share as ``(unit index, rows of the unit)`` runs, units in permuted order."""
        lo, hi, at, runs = self.rank * n_per, (self.rank + 1) * n_per, 0, []
        for k in rng.permutation(len(self.units)):
            rows = np.flatnonzero(~self.units[k]["val"])
            if at + len(rows) > lo and at < hi:
                runs.append((k, rows[max(lo - at, 0):hi - at]))
            at += len(rows)
            if at >= hi:
                break
        return runs

    def _val_sequence(self, start: int, stop: int):
        """Validation records [start, stop) (file order) as ``(unit index, rows)`` runs."""
        at, runs = 0, []
        for k, u in enumerate(self.units):
            rows = np.flatnonzero(u["val"])
            if at + len(rows) > start and at < stop:
                runs.append((k, rows[max(start - at, 0):stop - at]))
            at += len(rows)
        return runs

    def _window_records(self) -> int:
        """Records per window: ``shuffle_buffer``, capped by :data:`WINDOW_BYTES`."""
        return max(1, min(self.cfg.shuffle_buffer, WINDOW_BYTES // max(12 * self.n_samples * 4, 1)))

    def _max_window(self) -> int:
        """Most records a window plan can hold (it closes once it reaches :meth:`_window_records`)."""
        most_per_unit = max((len(u["rows"]) for u in self.units), default=0)
        return min(self._window_records() - 1 + most_per_unit, self.n_train + self.n_val)

    def _windows(self, runs, rng):
        """Group runs into window plans of about :meth:`_window_records` records (shuffled when ``rng``)."""
        size, plans, group, held = self._window_records(), [], [], 0
        for i, run in enumerate(runs):
            group.append(run)
            held += len(run[1])
            if held >= size or i == len(runs) - 1:
                plans.append(self._plan(group, rng))
                group, held = [], 0
        return self._load(plans)

    def _plan(self, group, rng):
        """One window plan: each unit's rows in the row group and their positions in the window."""
        n = sum(len(rows) for _, rows in group)
        positions = rng.permutation(n) if rng is not None else np.arange(n)
        parts, labels, at = [], np.empty(n, np.int64), 0
        for k, rows in group:
            u, pos = self.units[k], positions[at:at + len(rows)]
            stored = u["rows"][rows]
            whole = len(stored) == u["n_rows"]  # then stored == arange: the view needs no gather
            parts.append((u["path_idx"], u["rg"], None if whole else stored, pos))
            labels[pos] = u["labels"][rows]
            at += len(rows)
        return parts, n, labels

    def _load(self, plans):
        """The windows of ``plans`` read by the loader's workers (or in process), in plan order."""
        if self.cfg.loader_workers <= 0:
            if self._reader is None:  # kept: its buffer pool and open files serve every pass
                self._reader = _WindowReader(self.paths, self.n_samples, self.matrix, self._max_window())
            reader = self._reader
            for plan in plans:
                x, y = reader[plan]
                yield (x.pin_memory() if self.pin_memory else x), y
            return
        if self._loader is None:
            self._sampler = _PlanSampler()
            self._loader = DataLoader(_WindowReader(self.paths, self.n_samples, self.matrix), batch_size=None,
                                      sampler=self._sampler, num_workers=self.cfg.loader_workers,
                                      pin_memory=self.pin_memory, persistent_workers=True, prefetch_factor=2)
        self._sampler.set(plans)
        yield from self._loader

    def _val_chunks(self, start: int, stop: int):
        """Validation chunks: the cached head, then the rest read from the shards (filling the cache once)."""
        keep = min(stop - start, self.val_cache_bytes // max(12 * self.n_samples * 4, 1))
        if self._val_cache is not None:
            yield from self._val_cache
            if keep < stop - start:
                yield from self._windows(self._val_sequence(start + keep, stop), None)
            return
        cache, held = [], 0
        for x, y in self._windows(self._val_sequence(start, stop), None):
            if held < keep:
                take = min(keep - held, len(x))
                # a window viewing part of a larger pooled buffer is copied, so the cache holds no more
                head = x if take == len(x) and x.untyped_storage().nbytes() == x.nbytes else x[:take].clone()
                cache.append((head.pin_memory() if self.pin_memory and not head.is_pinned() else head, y[:take]))
                held += take
            yield x, y
        self._val_cache = cache  # only once the pass is complete
