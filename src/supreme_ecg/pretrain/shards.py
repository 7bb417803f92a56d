"""Reading preprocessed shards row group by row group."""

from __future__ import annotations

import hashlib

import pyarrow.parquet as pq

from supreme_ecg.preprocess import signal_dtype_of, signal_n_samples


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
    field = pq.ParquetFile(path).schema_arrow.field("signal")
    return signal_n_samples(field.type, signal_dtype_of(field))


def hash_fraction(key: str) -> float:
    """Stable uniform number in [0, 1) from a key (SHA-256, independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(str(key).encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def iter_wanted_signals(paths, wanted):
    """Yield ``(record ids, signals (n, 12, L) float32)`` per row group for the records of ``wanted``
    found in the shards, each at its first occurrence; only row groups holding one are decoded."""
    from supreme_ecg.preprocess import read_signals

    wanted, done = set(wanted), set()
    for path, rg, batch in iter_row_groups(paths, ["record_id"]):
        rows, found = [], []
        for i, record_id in enumerate(str(r) for r in batch.column("record_id").to_pylist()):
            if record_id in wanted and record_id not in done:
                done.add(record_id)
                rows.append(i)
                found.append(record_id)
        if rows:
            yield found, read_signals(read_row_group(path, rg, ["signal"]))[rows]
