"""The pre-training data path: order, rank shares, validation cache, workers, float16 storage."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from supreme_ecg.preprocess import read_signals, signal_array, signal_field
from supreme_ecg.pretrain.config import PretrainConfig
from supreme_ecg.pretrain.data import _Data
from supreme_ecg.pretrain.shards import n_samples_of

N, L, K = 203, 16, 3  # records (3 unlabelled), samples per lead, labels
CFG = PretrainConfig(batch_size=8, val_fraction=0.2, seed=3, max_in_memory_records=0, shuffle_buffer=20,
                     loader_workers=0, device="cpu")


def write(root, dtype="<f4", name="s"):
    """Two shards, row groups of 7; record i's signal is the constant i (its id, exact in float16)."""
    x = np.broadcast_to(np.arange(N, dtype=np.float32)[:, None, None], (N, 12, L)).copy()
    paths = []
    for s, part in enumerate(np.array_split(np.arange(N), 2)):
        table = pa.table([pa.array([f"r{i}" for i in part]), signal_array(x[part], dtype)],
                         schema=pa.schema([pa.field("record_id", pa.string()), signal_field(L, dtype)]))
        paths.append(root / f"{name}-{s}.parquet")
        pq.write_table(table, paths[-1], row_group_size=7)
    return paths


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """float32 shards, label index (all but the last 3 records) and matrix."""
    root = tmp_path_factory.mktemp("data")
    index = {f"r{i}": i for i in range(N - 3)}
    matrix = (np.arange(N)[:, None] % (np.arange(K) + 2) == 0).astype(np.int8)
    return {"paths": write(root), "f16": write(root, "<f2", "h"), "index": index, "matrix": matrix}


def data(shards, cfg=CFG, **kw):
    """A _Data over the float32 shards."""
    return _Data(shards["paths"], shards["index"], shards["matrix"], cfg, **kw)


def ids(batches):
    """Record ids of each batch (from the signal), checking labels follow their records."""
    out = []
    for x, y in batches:
        assert x.dtype.is_floating_point and tuple(x.shape[1:]) == (12, L) and str(y.dtype) == "torch.int8"
        rid = x[:, 0, 0].numpy().astype(int)
        assert (x.numpy() == rid[:, None, None]).all()
        assert (y.numpy() == (rid[:, None] % (np.arange(K) + 2) == 0)).all()
        out.append(rid.tolist())
    return out


@pytest.mark.parametrize("in_memory", [False, True])
def test_order_is_a_function_of_seed_and_epoch(shards, in_memory):
    """Same (seed, epoch): same batches; another epoch or seed: another order of the same records."""
    cfg = replace(CFG, max_in_memory_records=10_000 if in_memory else 0)
    a, b = data(shards, cfg), data(shards, cfg)
    assert a.in_memory == in_memory and (a.n_train, a.n_val, a.n_unlabeled) == (b.n_train, b.n_val, 3)
    e0 = ids(a.train_batches(0))
    assert e0 == ids(b.train_batches(0))
    assert len(e0) == a.train_steps() == -(-a.n_train // 8) and all(len(b_) == 8 for b_ in e0[:-1])
    e1, other = ids(a.train_batches(1)), ids(data(shards, replace(cfg, seed=4)).train_batches(0))
    flat = sorted(sum(e0, []))
    assert e1 != e0 and other != e0 and sorted(sum(e1, [])) == flat == sorted(sum(other, []))
    assert len(flat) == a.n_train and set(flat).isdisjoint(sum(ids(a.val_batches()), []))


@pytest.mark.parametrize("in_memory", [False, True])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_disjoint_shares_with_equal_batch_counts(shards, world_size, in_memory):
    """Ranks' training records are disjoint, as many batches of the same sizes, fewer than
    world_size records dropped; validation shares partition the validation set."""
    cfg = replace(CFG, max_in_memory_records=10_000 if in_memory else 0)
    ranks = [data(shards, cfg, rank=r, world_size=world_size) for r in range(world_size)]
    for epoch in (0, 1):
        per_rank = [ids(d.train_batches(epoch, 5)) for d in ranks]
        assert len({tuple(len(b) for b in p) for p in per_rank}) == 1  # same count and sizes
        flat = [sum(p, []) for p in per_rank]
        union = set().union(*flat)
        assert sum(map(len, flat)) == len(union) and ranks[0].n_train - len(union) < world_size
    val = [sum(ids(d.val_batches(4)), []) for d in ranks]
    assert sorted(sum(val, [])) == sorted(sum(ids(data(shards, cfg).val_batches()), []))
    assert max(map(len, val)) - min(map(len, val)) <= 1


def test_val_cache_is_bounded_and_passes_agree(shards, monkeypatch):
    """The validation cache holds at most its byte budget; later passes re-read only the rest."""
    record = 12 * L * 4
    d = data(shards, val_cache_bytes=5 * record)
    reads = []
    from supreme_ecg.pretrain import data as module
    original = module._WindowReader.__getitem__
    monkeypatch.setattr(module._WindowReader, "__getitem__", lambda self, plan: reads.append(plan[1]) or original(self, plan))
    first = ids(d.val_batches(4))
    assert sum(reads) == d.n_val and sum(len(x) for x, _ in d._val_cache) == 5
    reads.clear()
    assert ids(d.val_batches(4)) == first and sum(reads) == d.n_val - 5
    whole = data(shards, val_cache_bytes=10 ** 9)
    list(whole.val_batches())
    reads.clear()
    assert ids(whole.val_batches(4)) == first and not reads


def test_workers_give_the_same_batches(shards):
    """loader_workers 0 and 2 yield the same batches (so the same multiset of records) per epoch."""
    d0, d2 = data(shards), data(shards, replace(CFG, loader_workers=2))
    for epoch in (0, 1):
        a, b = ids(d0.train_batches(epoch)), ids(d2.train_batches(epoch))
        assert a == b and Counter(sum(a, [])) == Counter(sum(b, []))
    assert ids(d0.val_batches()) == ids(d2.val_batches())


def test_float16_storage_round_trip(shards, tmp_path):
    """float16 shards: the metadata names the dtype, n_samples is right, reads give float32 within
    half a float16 step (2**-12 on [0.5, 1]) of the float32 signal; the data path reads them too."""
    rng = np.random.default_rng(0)
    x = rng.random((9, 12, L), dtype=np.float32)
    x[:, 0, :2] = [0.0, 1.0]
    path = tmp_path / "h.parquet"
    pq.write_table(pa.table([signal_array(x, "<f2")], schema=pa.schema([signal_field(L, "<f2")])), path)
    assert n_samples_of(path) == L
    back = read_signals(path)
    assert back.dtype == np.float32 and np.abs(back - x).max() <= 2.0 ** -12
    h = _Data(shards["f16"], shards["index"], shards["matrix"], CFG)
    assert ids(h.train_batches(0)) == ids(data(shards).train_batches(0))
