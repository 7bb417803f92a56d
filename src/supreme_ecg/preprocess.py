"""The preprocess stage: canonical 12 leads, repaired, resampled, fixed length, normalised, sharded.

Per record (:func:`preprocess_record`): reorder by lead name → repair NaN/inf runs → resample to
``cfg.fs`` → fix length to ``cfg.n_samples`` → reject flat leads → normalise. Per shard
(:func:`preprocess_shard`): stream a manifest Parquet, write accepted records (fixed-size list
``signal`` column, row-major 12 × n) and rejected ones (with a reason code) to two Parquet files.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.signal import resample_poly

from supreme_ecg import formats
from supreme_ecg.config_schema import schema_defaults
from supreme_ecg.leads import CANONICAL_LEADS, MissingLeadsError, reorder_by_name

#: the config schema's ``preprocess`` defaults: PreprocessConfig's and the signal codec
_DEFAULTS = schema_defaults("preprocess")
REQUIRED_MANIFEST_COLUMNS = ("record_id", "dataset", "source_path")
#: Signal bytes per Parquet row group (34 records of 12 x 5000 float32). Small enough that a row
#: group's buffers stay in the last-level cache while the writer copies them into pages and the
#: kernel into the file: with 60 MB row groups the copies ran from memory and writing took about
#: three times as long (``benchmarks/preprocess_throughput.py``). Row groups are also the unit
#: that pre-training and evaluation read.
ROW_GROUP_BYTES = 8 << 20


def default_row_group_size(n_samples: int) -> int:
    """Records per row group so that its signals take about :data:`ROW_GROUP_BYTES`."""
    return max(1, ROW_GROUP_BYTES // (12 * int(n_samples) * 4))


class RecordRejected(Exception):
    """A record the preprocess stage drops: ``.reason`` is a short code, ``.detail`` free text."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- signal ops


def resample(signal: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling along the last axis (ratio limited to denominators ≤ 1000)."""
    if fs_in == fs_out:
        return signal
    ratio = (Fraction(fs_out) / Fraction(fs_in)).limit_denominator(1000)
    out = resample_poly(signal, ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(signal.dtype if np.issubdtype(signal.dtype, np.floating) else np.float32, copy=False)


def _crop_or_pad(signal: np.ndarray, n: int) -> np.ndarray:
    """Keep the first ``n`` samples; zero-pad at the end."""
    out = signal[..., :n]
    pad = n - out.shape[-1]
    return np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, pad)]) if pad > 0 else out


def _center(signal: np.ndarray, n: int) -> np.ndarray:
    """Centre crop, or symmetric zero padding (the extra sample goes to the end)."""
    excess = signal.shape[-1] - n
    if excess >= 0:
        return signal[..., excess // 2 : excess // 2 + n]
    before = -excess // 2
    return np.pad(signal, [(0, 0)] * (signal.ndim - 1) + [(before, -excess - before)])


LENGTH_POLICIES = {"crop_or_pad": _crop_or_pad, "center": _center}


def fix_length(signal: np.ndarray, n: int, policy: str = "crop_or_pad") -> np.ndarray:
    """Crop or pad the last axis to ``n`` samples with a policy of :data:`LENGTH_POLICIES`."""
    if policy not in LENGTH_POLICIES:
        raise ValueError(f"unknown length policy {policy!r}; choose from {sorted(LENGTH_POLICIES)}")
    return LENGTH_POLICIES[policy](signal, n)


def repair_nonfinite(signal: np.ndarray, max_fraction: float) -> tuple[np.ndarray, int]:
    """Linearly interpolate NaN/inf runs per lead (edges take the nearest finite value)."""
    bad = ~np.isfinite(signal)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return signal, 0
    share = bad.mean(axis=-1)
    if (share == 1).any():
        raise RecordRejected("all_nonfinite_lead", f"leads {np.flatnonzero(share == 1).tolist()} have no finite sample")
    if (share > max_fraction).any():
        lead = int(share.argmax())
        raise RecordRejected("nonfinite_fraction", f"lead {lead}: {share[lead]:.3f} > {max_fraction}")
    out = signal.copy()
    positions = np.arange(signal.shape[-1])
    for lead in np.flatnonzero(share):
        mask = bad[lead]
        out[lead, mask] = np.interp(positions[mask], positions[~mask], signal[lead, ~mask])
    return out, n_bad


def check_flat(signal: np.ndarray, threshold_mv: float, lead_names=CANONICAL_LEADS, ptp=None) -> None:
    """Raise ``RecordRejected("flat_lead")`` when a lead's peak-to-peak is below ``threshold_mv``.

    ``ptp`` may pass the per-lead peak-to-peak already computed (``max - min`` along the last axis).
    """
    ptp = np.ptp(signal, axis=-1) if ptp is None else ptp
    flat = np.flatnonzero(ptp < threshold_mv)
    if flat.size:
        names = [lead_names[i] for i in flat]
        raise RecordRejected("flat_lead", f"peak-to-peak < {threshold_mv} mV in {names}")


def _minmax_global(signal: np.ndarray, lo: float | None = None, hi: float | None = None,
                   out: np.ndarray | None = None) -> np.ndarray:
    """One min–max over the whole array to [0, 1] (MERL).

    ``lo``/``hi`` may pass the array's min and max; ``out`` (same shape and dtype) receives the result.
    """
    lo = float(signal.min()) if lo is None else lo
    hi = float(signal.max()) if hi is None else hi
    if not hi > lo:
        if out is None:
            return np.zeros_like(signal)
        out[...] = 0
        return out
    out = np.subtract(signal, lo, out=out)  # the arithmetic of (signal - lo) / (hi - lo), one buffer
    return np.divide(out, hi - lo, out=out)


def _zscore_lead(signal: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per lead (constant leads become 0)."""
    std = signal.std(axis=-1, keepdims=True)
    return (signal - signal.mean(axis=-1, keepdims=True)) / np.where(std > 0, std, 1.0)


NORMALISATIONS = {"minmax_global": _minmax_global, "zscore_lead": _zscore_lead, "none": lambda s: s}


def normalise(signal: np.ndarray, method: str = "minmax_global") -> np.ndarray:
    """Normalise with a method of :data:`NORMALISATIONS`."""
    if method not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {method!r}; choose from {sorted(NORMALISATIONS)}")
    return NORMALISATIONS[method](signal).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- one record


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of the preprocess stage; defaults: the config schema's ``preprocess`` (but the flat-lead
    threshold, which is no config setting)."""

    fs: float = _DEFAULTS["fs"]
    n_samples: int = _DEFAULTS["n_samples"]
    length_policy: str = _DEFAULTS["length_policy"]
    max_nonfinite_fraction: float = _DEFAULTS["max_nonfinite_fraction"]
    normalisation: str = _DEFAULTS["normalisation"]
    flat_threshold_mv: float = 1e-6
    signal_dtype: str = _DEFAULTS["signal_dtype"]

    def __post_init__(self):
        """Fail fast on unknown policy/method names and storage dtypes."""
        storage_dtype(self.signal_dtype)
        fix_length(np.zeros((1, 1)), 1, self.length_policy)
        normalise(np.zeros((1, 1), np.float32), self.normalisation)

    @classmethod
    def from_mapping(cls, values: dict, ignore: tuple[str, ...] = ("shards",)) -> PreprocessConfig:
        """Build from the config's ``preprocess`` mapping; unknown keys (except ``ignore``) raise."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known - set(ignore)
        if unknown:
            raise ValueError(f"unknown preprocess settings {sorted(unknown)}")
        return cls(**{k: v for k, v in values.items() if k in known})


def preprocess_record(record: formats.Record, cfg: PreprocessConfig, out: np.ndarray | None = None
                      ) -> tuple[np.ndarray, dict]:
    """Record → (float32 (12, cfg.n_samples), info); raises :class:`RecordRejected`.

    ``out``, a C-contiguous float32 ``(12, cfg.n_samples)`` array, receives the signal and is
    returned (the shard writer passes a row of its row-group buffer); by default a new array.
    """
    try:
        signal, sources, derived = reorder_by_name(record.signal, record.lead_names)
    except MissingLeadsError as exc:
        raise RecordRejected("missing_leads", str(exc)) from exc
    signal = signal.astype(np.float32, copy=False)
    # Per-lead min and max (one pass each) serve the finiteness test (NaN propagates through
    # min/max, inf shows up in them), the flat-lead check and min–max normalisation.
    lows = highs = None
    if signal.size:
        lows, highs = signal.min(axis=-1), signal.max(axis=-1)
    if lows is not None and np.isfinite(lows).all() and np.isfinite(highs).all():
        n_repaired = 0
    else:
        signal, n_repaired = repair_nonfinite(signal, cfg.max_nonfinite_fraction)
        lows = None
    unchanged = record.fs == cfg.fs and signal.shape[-1] == cfg.n_samples  # resample and fix_length keep values
    signal = fix_length(resample(signal, record.fs, cfg.fs), cfg.n_samples, cfg.length_policy)
    if lows is None or not unchanged:
        lows, highs = signal.min(axis=-1), signal.max(axis=-1)
    check_flat(signal, cfg.flat_threshold_mv, ptp=highs - lows)
    info = {
        "original_fs": float(record.fs),
        "original_n_samples": int(record.signal.shape[-1]),
        "lead_sources": list(sources),
        "derived_leads": list(derived),
        "n_nonfinite_repaired": n_repaired,
    }
    if cfg.normalisation == "minmax_global" and signal.dtype == np.float32:
        return _minmax_global(signal, float(lows.min()), float(highs.max()), out=out), info
    result = np.ascontiguousarray(normalise(signal, cfg.normalisation), dtype=np.float32)
    if out is None:
        return result, info
    out[...] = result
    return out, info


# --------------------------------------------------------------------------- shards


def shard_of(record_id: str, n_shards: int) -> int:
    """Stable shard index of a record id (SHA-256, independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256(str(record_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_shards


ADDED_FIELDS = [
    ("fs", pa.float32()),
    ("n_samples", pa.int32()),
    ("original_fs", pa.float32()),
    ("original_n_samples", pa.int32()),
    ("lead_sources", pa.list_(pa.string())),
    ("derived_leads", pa.list_(pa.string())),
    ("n_nonfinite_repaired", pa.int32()),
]
REJECTS_SCHEMA = pa.schema([(name, pa.string()) for name in ("record_id", "dataset", "source_path", "reason", "detail")])


#: Byte order and type of the stored samples (little-endian float32 on every platform).
SIGNAL_DTYPE = np.dtype("<f4")
#: ``preprocess.signal_dtype`` → stored dtype; float16 halves the disk and the bytes read, at a
#: quantisation error below the records' own ADC resolution (README, Benchmarks).
STORAGE_DTYPES = {"float32": SIGNAL_DTYPE, "float16": np.dtype("<f2")}


def storage_dtype(name) -> np.dtype:
    """The stored dtype of a ``signal_dtype`` name (float32 or float16)."""
    if str(name) not in STORAGE_DTYPES:
        raise ValueError(f"unknown signal_dtype {name!r}; choose from {sorted(STORAGE_DTYPES)}")
    return STORAGE_DTYPES[str(name)]


def signal_dtype_of(field: pa.Field) -> np.dtype:
    """The stored dtype of a ``signal`` field, from its metadata (float32 when none is given)."""
    meta = field.metadata or {}
    return np.dtype(meta[b"supreme_ecg.dtype"].decode()) if b"supreme_ecg.dtype" in meta else SIGNAL_DTYPE


def signal_type(n_samples: int, dtype=SIGNAL_DTYPE) -> pa.DataType:
    """Arrow type of the ``signal`` column: one fixed-size binary value per record holding the
    ``(12, n_samples)`` little-endian float32 (or float16, ``dtype``) array in C order (lead-major).

    A single value per record, rather than a list of 60,000 floats, writes about twice as fast and
    reads about eighteen times faster (0.21 vs 0.41 and 0.056 vs 1.0 ms per record, pyarrow 26):
    Parquet keeps no per-sample repetition/definition levels.
    """
    return pa.binary(12 * int(n_samples) * np.dtype(dtype).itemsize)


def signal_field(n_samples: int, dtype=SIGNAL_DTYPE) -> pa.Field:
    """The ``signal`` field, its layout spelled out in the field metadata for other readers."""
    return pa.field("signal", signal_type(n_samples, dtype), nullable=False, metadata={
        "supreme_ecg.dtype": np.dtype(dtype).str, "supreme_ecg.shape": f"12,{int(n_samples)}",
        "supreme_ecg.order": "C (lead-major)", "supreme_ecg.leads": ",".join(CANONICAL_LEADS),
    })


def signal_array(signals: np.ndarray, dtype=SIGNAL_DTYPE) -> pa.FixedSizeBinaryArray:
    """``(n, 12, n_samples)`` signals as a ``signal`` column (zero-copy for C-contiguous ``dtype``)."""
    dtype = np.dtype(dtype)
    signals = np.ascontiguousarray(signals, dtype=dtype)
    if signals.ndim != 3 or signals.shape[1] != 12:
        raise ValueError(f"signals must be (n, 12, n_samples), got {signals.shape}")
    return pa.FixedSizeBinaryArray.from_buffers(
        signal_type(signals.shape[2], dtype), len(signals), [None, pa.py_buffer(signals)])


def signal_n_samples(signal_type_: pa.DataType, dtype=SIGNAL_DTYPE) -> int:
    """Samples per lead of a ``signal`` column type stored as ``dtype`` (see :func:`signal_type`)."""
    size = np.dtype(dtype).itemsize
    if not pa.types.is_fixed_size_binary(signal_type_) or signal_type_.byte_width % (12 * size):
        raise TypeError(
            f"signal column is {signal_type_}, expected fixed_size_binary of 12 x n_samples {np.dtype(dtype).name}; "
            "shards written by an older version must be rewritten (snakemake -R preprocess_shard)")
    return signal_type_.byte_width // (12 * size)


def output_schema(manifest_schema: pa.Schema, cfg: PreprocessConfig) -> pa.Schema:
    """Pass-through manifest columns + added columns + ``signal`` (lead order in metadata)."""
    added = [pa.field(n, t) for n, t in ADDED_FIELDS]
    added.append(signal_field(cfg.n_samples, storage_dtype(cfg.signal_dtype)))
    taken = {f.name for f in added}
    passed = [f for f in manifest_schema if f.name not in taken]
    meta = {"supreme_ecg.leads": ",".join(CANONICAL_LEADS), "supreme_ecg.preprocess": repr(asdict(cfg))}
    return pa.schema(passed + added, metadata=meta)


def shard_preprocess_settings(path) -> dict:
    """The :class:`PreprocessConfig` fields a shard was written with (its Parquet metadata; {} if absent)."""
    import ast

    raw = (pq.read_schema(path).metadata or {}).get(b"supreme_ecg.preprocess")
    return dict(ast.literal_eval(raw.decode())) if raw is not None else {}


def _resolve(source_path: str, root) -> Path:
    """``root / source_path`` (an absolute source_path ignores root)."""
    return Path(root) / source_path if root is not None else Path(source_path)


def read_source(path) -> formats.Record:
    """:func:`formats.read_record`, with any failure to read a file raised as ``RecordReadError`` (a
    damaged file of any kind is reported with its reason, never a crash)."""
    try:
        return formats.read_record(path)
    except formats.RecordReadError:
        raise
    except Exception as exc:
        raise formats.RecordReadError("read_error", f"{type(exc).__name__}: {exc}") from exc


def _process_row(row: dict, cfg: PreprocessConfig, root, out: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Read and preprocess one manifest row (into ``out``); every failure becomes :class:`RecordRejected`."""
    try:
        record = read_source(_resolve(row["source_path"], root))
    except formats.RecordReadError as exc:
        raise RecordRejected(exc.reason, exc.detail) from exc
    return preprocess_record(record, cfg, out)


#: Parquet codec of the ``signal`` column. Min–max-normalised float32 samples shrink only to
#: about 60 % with snappy, which costs about as much CPU as everything else per record (and again
#: on every read in pre-training), so the signal is stored uncompressed, without dictionary or
#: statistics; the other columns keep pyarrow's defaults (snappy, dictionary, statistics).
#: The config schema's ``preprocess.signal_compression`` (none).
SIGNAL_COMPRESSION = _DEFAULTS["signal_compression"]


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """Parquet leaf column paths of ``schema`` (``lead_sources.list.element`` for a list column),
    which is how ParquetWriter's per-column options name nested columns."""
    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    parquet_schema = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    return [parquet_schema.column(i).path for i in range(len(parquet_schema))]


def _writer_options(schema: pa.Schema, signal_compression: str) -> dict:
    """ParquetWriter keywords: the signal column plain and ``signal_compression``, others the defaults."""
    leaves = _leaf_paths(schema)
    signal = [path for path in leaves if path.split(".")[0] == "signal"]
    others = [path for path in leaves if path not in signal]
    return {
        "compression": {**dict.fromkeys(others, "snappy"), **dict.fromkeys(signal, signal_compression)},
        "use_dictionary": others,
        "write_statistics": others,
    }


class _ShardWriter:
    """Buffers accepted rows and writes row groups of ``row_group_size`` records.

    Signals go straight into one ``(row_group_size, 12 * n_samples)`` ``<f4`` buffer (grown on
    demand up to that size, then reused for every row group); the pass-through manifest columns
    are taken from each manifest batch with one ``take`` per batch and row group.
    """

    def __init__(self, path: Path, schema: pa.Schema, cfg: PreprocessConfig, row_group_size: int,
                 signal_compression: str = SIGNAL_COMPRESSION):
        """Open a ParquetWriter at ``path``."""
        self.schema, self.cfg, self.size = schema, cfg, max(int(row_group_size), 1)
        self.writer = pq.ParquetWriter(path, schema, **_writer_options(schema, signal_compression))
        self.width = 12 * cfg.n_samples
        self.buffer = np.empty((min(self.size, 16), self.width), SIGNAL_DTYPE)
        self.n = 0
        self.pending: list[tuple[pa.RecordBatch, list[int]]] = []  # (manifest batch, row indices)
        self.infos: list[dict] = []

    def slot(self) -> np.ndarray:
        """The ``(12, n_samples)`` buffer row the next accepted record goes to (fill it, then :meth:`add`)."""
        if self.n == len(self.buffer):  # grow (doubling, at most to the row-group size)
            grown = np.empty((min(2 * len(self.buffer), self.size), self.width), SIGNAL_DTYPE)
            grown[: self.n] = self.buffer[: self.n]
            self.buffer = grown
        return self.buffer[self.n].reshape(12, self.cfg.n_samples)

    def add(self, batch: pa.RecordBatch, index: int, signal: np.ndarray, info: dict) -> None:
        """Buffer one accepted record: row ``index`` of the (pass-through columns of a) manifest batch.

        ``signal`` is copied into the buffer unless it already is :meth:`slot`.
        """
        row = self.slot().reshape(-1)
        if signal.__array_interface__["data"][0] != row.ctypes.data:
            row[...] = signal.reshape(-1)
        if self.pending and self.pending[-1][0] is batch:
            self.pending[-1][1].append(index)
        else:
            self.pending.append((batch, [index]))
        self.infos.append(info)
        self.n += 1
        if self.n >= self.size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records as one row group."""
        if not self.n:
            return
        n = self.n
        taken = [batch.take(pa.array(indices, pa.int64())) for batch, indices in self.pending]
        passed = pa.Table.from_batches(taken).combine_chunks()
        columns = {name: passed.column(name) for name in passed.column_names}
        columns["fs"] = pa.array(np.full(n, self.cfg.fs, np.float32))
        columns["n_samples"] = pa.array(np.full(n, self.cfg.n_samples, np.int32))
        for name, typ in ADDED_FIELDS[2:]:
            columns[name] = pa.array([info[name] for info in self.infos], typ)
        # a zero-copy view of the buffer for float32; one conversion per row group for float16
        columns["signal"] = signal_array(self.buffer[:n].reshape(n, 12, -1), storage_dtype(self.cfg.signal_dtype))
        self.writer.write_table(pa.table([columns[f.name] for f in self.schema], schema=self.schema))
        self.n, self.pending, self.infos = 0, [], []

    def close(self) -> None:
        """Flush and close."""
        self.flush()
        self.writer.close()


def _reject_row(row: dict, exc: RecordRejected) -> dict:
    """One row of the rejects file."""
    return {
        "record_id": str(row["record_id"]), "dataset": str(row["dataset"]),
        "source_path": str(row["source_path"]), "reason": exc.reason, "detail": exc.detail[:500],
    }


def _shard_batches(manifest: pq.ParquetFile, shard: int, n_shards: int, batch_size: int):
    """Yield (batch, indices of this shard's rows) streamed from the manifest."""
    for batch in manifest.iter_batches(batch_size=batch_size):
        ids = batch.column("record_id").to_pylist()
        yield batch, [i for i, rid in enumerate(ids) if shard_of(str(rid), n_shards) == shard]


def preprocess_shard(
    manifest_path, shard: int, n_shards: int, cfg: PreprocessConfig, out_path, rejects_path,
    root=None, row_group_size: int | None = None, signal_compression: str = SIGNAL_COMPRESSION,
) -> dict:
    """Preprocess one shard of a manifest into ``out_path`` and ``rejects_path`` (both always written).

    ``row_group_size`` defaults to :func:`default_row_group_size`; ``signal_compression`` is the
    Parquet codec of the ``signal`` column (see :data:`SIGNAL_COMPRESSION`).
    """
    row_group_size = row_group_size or default_row_group_size(cfg.n_samples)
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} outside 0..{n_shards - 1}")
    manifest = pq.ParquetFile(manifest_path)
    missing = set(REQUIRED_MANIFEST_COLUMNS) - set(manifest.schema_arrow.names)
    if missing:
        raise ValueError(f"manifest {manifest_path} lacks columns {sorted(missing)}")
    out_path, rejects_path = Path(out_path), Path(rejects_path)
    for path in (out_path, rejects_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    schema = output_schema(manifest.schema_arrow, cfg)
    tmp_out, tmp_rej = out_path.with_name(out_path.name + ".tmp"), rejects_path.with_name(rejects_path.name + ".tmp")
    writer = _ShardWriter(tmp_out, schema, cfg, row_group_size, signal_compression)
    rejects, reasons, n_in, n_ok = [], Counter(), 0, 0
    try:
        for batch, indices in _shard_batches(manifest, shard, n_shards, max(row_group_size, 1024)):
            passed = batch.select([f.name for f in schema if f.name in batch.schema.names])
            required = {k: batch.column(k).to_pylist() for k in REQUIRED_MANIFEST_COLUMNS}
            for i in indices:
                n_in += 1
                row = {k: values[i] for k, values in required.items()}
                try:
                    signal, info = _process_row(row, cfg, root, out=writer.slot())
                except RecordRejected as exc:
                    rejects.append(_reject_row(row, exc))
                    reasons[exc.reason] += 1
                    continue
                writer.add(passed, i, signal, info)
                n_ok += 1
    except BaseException:
        writer.close()
        tmp_out.unlink(missing_ok=True)
        raise
    writer.close()
    pq.write_table(pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA), tmp_rej)
    os.replace(tmp_out, out_path)
    os.replace(tmp_rej, rejects_path)
    return {"shard": shard, "n_shards": n_shards, "n_input": n_in, "n_written": n_ok,
            "n_rejected": len(rejects), "reasons": dict(reasons)}


def read_signals(table_or_path) -> np.ndarray:
    """The ``signal`` column (of a table or a shard file) as float32 ``(n, 12, n_samples)``.

    Each chunk's value buffer is viewed, not parsed, and copied once into the result (float16
    shards, see ``signal_dtype``, are widened to float32 in that copy).
    """
    if isinstance(table_or_path, (str, os.PathLike)):
        table_or_path = pq.read_table(table_or_path, columns=["signal"])
    dtype = signal_dtype_of(table_or_path.schema.field("signal"))
    column = table_or_path.column("signal")
    n_samples = signal_n_samples(column.type, dtype)
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = np.empty((len(column), 12, n_samples), np.float32)
    width, at = 12 * n_samples, 0
    for chunk in chunks:
        if chunk.null_count:
            raise ValueError(f"signal column has {chunk.null_count} null values")
        if len(chunk):
            values = np.frombuffer(chunk.buffers()[1], dtype, count=len(chunk) * width,
                                   offset=chunk.offset * width * dtype.itemsize)
            out[at : at + len(chunk)] = values.reshape(len(chunk), 12, n_samples)
        at += len(chunk)
    return out


def summarise_dataset(manifest_path, shard_paths, rejects_paths, out_csv, rejects_out) -> pd.DataFrame:
    """Account for every manifest record (written or rejected) and write the dataset summary.

    Writes ``rejects_out`` (all shards' rejects) and ``out_csv`` with one row per outcome
    (``written`` and one ``rejected:<reason>`` row per reason). Raises if a record is missing or
    counted twice, so nothing is dropped silently.
    """
    manifest_ids = pq.read_table(manifest_path, columns=["record_id"]).column("record_id").to_pylist()
    written = [pq.read_table(p, columns=["record_id"]).column("record_id") for p in shard_paths]
    rejects = pa.concat_tables([pq.read_table(p) for p in rejects_paths]) if rejects_paths else (
        REJECTS_SCHEMA.empty_table())
    ids = [rid for col in written for rid in col.to_pylist()] + rejects.column("record_id").to_pylist()
    if sorted(map(str, ids)) != sorted(map(str, manifest_ids)):
        missing = set(map(str, manifest_ids)) - set(map(str, ids))
        raise RuntimeError(
            f"{len(ids)} records accounted for, manifest has {len(manifest_ids)}; "
            f"missing e.g. {sorted(missing)[:5]}")
    pq.write_table(rejects, rejects_out)
    rows = [{"outcome": "written", "n_records": len(ids) - rejects.num_rows}]
    reasons = Counter(rejects.column("reason").to_pylist())
    rows += [{"outcome": f"rejected:{reason}", "n_records": n} for reason, n in sorted(reasons.items())]
    summary = pd.DataFrame(rows)
    summary["share"] = summary["n_records"] / max(len(manifest_ids), 1)
    summary.to_csv(out_csv, index=False)
    return summary


RECORD_TABLE_COLUMNS = [
    "record_id", "dataset", "source_path", "patient_id", "split", "codes", "report", "status", "reason",
    "fs", "original_fs", "original_n_samples", "lead_sources", "derived_leads",
]


def _codes(manifest: pd.DataFrame) -> pd.Series:
    """Each record's label codes: PTB-XL SCP codes, CinC SNOMED codes, none for MIMIC (free text)."""
    from supreme_ecg.datasets import parse_scp_codes

    if "scp_codes" in manifest:
        return manifest["scp_codes"].map(lambda text: sorted(parse_scp_codes(text)))
    if "dx_codes" in manifest:
        return manifest["dx_codes"].map(lambda codes: [str(c) for c in codes] if codes is not None else [])
    return pd.Series([[] for _ in range(len(manifest))], index=manifest.index)


def record_table(manifest_paths, shard_paths, rejects_paths) -> pd.DataFrame:
    """The unified record table of all datasets (``RECORD_TABLE_COLUMNS``; signals left out).

    Record ids are unique across datasets, so written and rejected records join on them alone.
    """
    meta = ["record_id", "fs", "original_fs", "original_n_samples", "lead_sources", "derived_leads"]
    written = pd.concat([pd.read_parquet(p, columns=meta) for p in shard_paths], ignore_index=True)
    rejects = pd.concat([pd.read_parquet(p, columns=["record_id", "reason"]) for p in rejects_paths],
                        ignore_index=True)
    manifests = []
    for path in manifest_paths:
        manifest = pd.read_parquet(path)
        manifests.append(manifest.assign(codes=_codes(manifest)).reindex(
            columns=["record_id", "dataset", "source_path", "patient_id", "split", "codes", "report"],
        ).astype({"patient_id": "string"}))
    table = pd.concat(manifests, ignore_index=True)
    table = table.merge(written, on="record_id", how="left").merge(rejects, on="record_id", how="left")
    table["status"] = np.where(table["reason"].notna(), "rejected", "written")
    return table[RECORD_TABLE_COLUMNS]


@lru_cache(maxsize=16)
def _shard_digests_cached(path: str, mtime_ns: int, n_shards: int) -> tuple[str, ...]:
    manifest = pd.read_parquet(path)
    rows = pd.util.hash_pandas_object(manifest.astype(str), index=False).to_numpy()
    shards = np.fromiter((shard_of(str(r), n_shards) for r in manifest["record_id"]), dtype=np.int64,
                         count=len(manifest))
    digests = []
    for shard in range(n_shards):
        mine = np.sort(rows[shards == shard])
        digests.append(hashlib.sha256(mine.tobytes()).hexdigest()[:16])
    return tuple(digests)


def manifest_shard_digests(manifest_path, n_shards: int) -> tuple[str, ...]:
    """A content digest of each shard's manifest rows, so that only changed shards are redone.

    Records go to shards by a stable hash of their id, so adding records changes the digests of
    the shards they land in and of no other; the workflow passes the digest as a param.
    """
    path = Path(manifest_path)
    return _shard_digests_cached(str(path.resolve()), path.stat().st_mtime_ns, int(n_shards))
