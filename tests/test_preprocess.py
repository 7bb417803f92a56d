"""Signal ops, per-record preprocessing and sharded Parquet output (real fixtures where possible)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from supreme_ecg import formats
from supreme_ecg import preprocess as pp
from supreme_ecg.leads import CANONICAL_LEADS

RAW = pp.PreprocessConfig(normalisation="none")


def _record(signal, names=CANONICAL_LEADS, fs=500):
    """A Record around a synthetic signal."""
    signal = np.asarray(signal, dtype=np.float32)
    return formats.Record("syn", signal, list(names), fs, signal.shape[1])


def _ecg_like(n=5000, fs=500, seed=0):
    """12 leads of sines with noise (mV)."""
    t = np.arange(n) / fs
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, size=(12, 1))
    return (np.sin(2 * np.pi * 1.2 * t + phases) + 0.01 * rng.normal(size=(12, n))).astype(np.float32)


def _reason(fn, *args):
    """The reason code ``fn(*args)`` rejects with."""
    with pytest.raises(pp.RecordRejected) as err:
        fn(*args)
    return err.value.reason


# --------------------------------------------------------------------------- signal ops


@pytest.mark.parametrize("fs_in", [100, 257, 500, 1000])
def test_resample_lengths_and_shape(fs_in):
    t = np.arange(2 * fs_in) / fs_in
    signal = np.vstack([np.sin(2 * np.pi * 2 * t)] * 12).astype(np.float32)
    out = pp.resample(signal, fs_in, 500)
    assert out.shape == (12, 1000) and out.dtype == np.float32
    expected = np.sin(2 * np.pi * 2 * np.arange(1000) / 500)
    assert np.abs(out[0, 100:-100] - expected[100:-100]).max() < 0.02
    assert pp.resample(signal, fs_in, fs_in) is signal


def test_fix_length_policies():
    x = np.arange(10, dtype=np.float32)[None]
    assert pp.fix_length(x, 4, "crop_or_pad").tolist() == [[0, 1, 2, 3]]
    assert pp.fix_length(x, 12, "crop_or_pad").tolist() == [list(range(10)) + [0, 0]]
    assert pp.fix_length(x, 4, "center").tolist() == [[3, 4, 5, 6]]
    assert pp.fix_length(x, 13, "center").tolist() == [[0] + list(range(10)) + [0, 0]]
    with pytest.raises(ValueError):
        pp.fix_length(x, 4, "stretch")


def test_repair_nonfinite():
    x = np.tile(np.arange(20, dtype=np.float32), (2, 1))
    x[0, 5:8] = np.nan
    x[1, 0:2] = np.inf
    x[1, 19] = np.nan
    fixed, n = pp.repair_nonfinite(x, 0.2)
    assert n == 6
    np.testing.assert_allclose(fixed[0], np.arange(20))
    assert fixed[1, :2].tolist() == [2, 2] and fixed[1, 19] == 18
    assert _reason(pp.repair_nonfinite, x, 0.1) == "nonfinite_fraction"
    x[1] = np.nan
    assert _reason(pp.repair_nonfinite, x, 0.1) == "all_nonfinite_lead"


def test_normalise_methods_and_flat():
    x = _ecg_like(n=1000)
    scaled = pp.normalise(x, "minmax_global")
    assert scaled.min() == 0 and scaled.max() == pytest.approx(1) and scaled.dtype == np.float32
    z = pp.normalise(x, "zscore_lead")
    np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=1), 1, atol=1e-4)
    assert pp.normalise(x, "none") is x
    with pytest.raises(ValueError):
        pp.normalise(x, "max")
    x[7] = 0.25
    assert _reason(pp.check_flat, x, 1e-6) == "flat_lead"
    pp.check_flat(x[:7], 1e-6)


def test_config_validation():
    with pytest.raises(ValueError):
        pp.PreprocessConfig(length_policy="stretch")
    with pytest.raises(ValueError):
        pp.PreprocessConfig.from_mapping({"fs": 500, "bogus": 1})
    assert pp.PreprocessConfig.from_mapping({"n_samples": 2500, "shards": {"mimic": 4}}).n_samples == 2500


# --------------------------------------------------------------------------- one record, defects


def test_defects_give_reasons():
    x = _ecg_like()
    long_nan = x.copy()
    long_nan[3, 100:700] = np.nan
    assert _reason(pp.preprocess_record, _record(long_nan), RAW) == "nonfinite_fraction"
    flat = x.copy()
    flat[9] = 0.0
    assert _reason(pp.preprocess_record, _record(flat), RAW) == "flat_lead"
    no_v3 = [name for name in CANONICAL_LEADS if name != "V3"]
    assert _reason(pp.preprocess_record, _record(np.delete(x, 8, axis=0), no_v3), RAW) == "missing_leads"


def test_short_nan_run_repaired_and_counted():
    x = _ecg_like()
    x[2, 1000:1010] = np.nan
    signal, info = pp.preprocess_record(_record(x), RAW)
    assert info["n_nonfinite_repaired"] == 10 and np.isfinite(signal).all()


def test_missing_limb_lead_derived():
    x = _ecg_like()
    names = [name for name in CANONICAL_LEADS if name != "aVF"]
    signal, info = pp.preprocess_record(_record(np.delete(x, 5, axis=0), names), RAW)
    assert info["derived_leads"] == ["aVF"] and info["lead_sources"][5] == "derived"
    np.testing.assert_allclose(signal[5], x[1] - x[0] / 2, atol=1e-6)


@pytest.mark.fixtures
def test_real_records_preprocess(fx):
    cfg = pp.PreprocessConfig()
    ptb, info = pp.preprocess_record(formats.read_record(fx / "cinc2020/ptb/S0001.hea"), RAW)
    assert ptb.shape == (12, 5000) and info["original_fs"] == 1000 and info["original_n_samples"] == 38400
    raw = formats.read_record(fx / "cinc2020/ptb/S0001.hea").signal
    np.testing.assert_allclose(ptb, pp.resample(raw, 1000, 500)[:, :5000], atol=1e-6)
    lr, info = pp.preprocess_record(formats.read_record(fx / "ptbxl/records100/00000/00001_lr.hea"), cfg)
    assert lr.shape == (12, 5000) and info["original_fs"] == 100 and info["lead_sources"][4] == "AVL"
    assert lr.min() == 0 and lr.max() == pytest.approx(1)
    cpsc, info = pp.preprocess_record(formats.read_record(fx / "cinc2020/cpsc2018/A0001.hea"), cfg)
    assert cpsc.shape == (12, 5000) and info["original_n_samples"] == 7500


# --------------------------------------------------------------------------- shards


def test_shard_of_is_stable_across_processes():
    ids = [f"rec{i}" for i in range(50)]
    here = [pp.shard_of(i, 7) for i in ids]
    assert set(here) <= set(range(7)) and len(set(here)) > 3
    code = "from supreme_ecg.preprocess import shard_of; print([shard_of(f'rec{i}', 7) for i in range(50)])"
    env = {"PYTHONHASHSEED": "123", "PATH": ""}
    if "PYTHONPATH" in os.environ:  # a source checkout run without installing the package
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(here)


def _manifest(fx: Path, tmp: Path) -> tuple[Path, list[str]]:
    """A small manifest of real fixtures (relative to fx) plus a truncated and a missing record."""
    rel = [
        ("ptbxl", "ptbxl/records500/00000/00001_hr.hea"), ("ptbxl", "ptbxl/records100/00000/00002_lr.hea"),
        ("ptbxl", "ptbxl/records500/00000/00003_hr"), ("cpsc2018", "cinc2020/cpsc2018/A0001.hea"),
        ("cpsc2018", "cinc2020/cpsc2018/Q0001.hea"), ("csn", "cinc2020/chapman_ningbo/JS00001.hea"),
        ("georgia", "cinc2020/georgia/E00009.hea"), ("ptb", "cinc2020/ptb/S0001.hea"),
        ("ptbxl", "cinc2020/ptbxl/HR00599.hea"), ("sph", "cinc2020/sph/SPH00001.h5"),
        ("sph", "cinc2020/sph/SPH00010.h5"), ("ptbxl", "ptbxl/records500/00000/00404_hr.hea"),
    ]
    hea = formats.write_wfdb16(tmp / "rec", "cut", _ecg_like(), list(CANONICAL_LEADS), 500)
    (tmp / "rec/cut.dat").write_bytes((tmp / "rec/cut.dat").read_bytes()[:1000])
    rel += [("mimic", str(hea)), ("mimic", "does/not/exist.hea")]
    ids = [f"id{i:03d}" for i in range(len(rel))]
    table = pa.table({
        "record_id": ids, "dataset": [d for d, _ in rel], "source_path": [p for _, p in rel],
        "patient_id": pa.array(range(len(rel)), pa.int64()), "split": ["train"] * len(rel),
        "report": [f"befund {i} vÄnster" for i in range(len(rel))],
        "codes": [["NORM", str(i)] for i in range(len(rel))],
    })
    pq.write_table(table, tmp / "manifest.parquet")
    return tmp / "manifest.parquet", ids


@pytest.mark.fixtures
def test_preprocess_shard_counts_schema_and_signals(fx, tmp_path):
    manifest, ids = _manifest(fx, tmp_path)
    cfg, n_shards = pp.PreprocessConfig(), 3
    seen_ok, seen_rej = [], []
    for shard in range(n_shards):
        out, rej = tmp_path / f"out{shard}.parquet", tmp_path / f"rej{shard}.parquet"
        counts = pp.preprocess_shard(manifest, shard, n_shards, cfg, out, rej, root=fx, row_group_size=2)
        table, rejects = pq.read_table(out), pq.read_table(rej)
        expected = [i for i in ids if pp.shard_of(i, n_shards) == shard]
        assert counts["n_input"] == len(expected) == table.num_rows + rejects.num_rows
        assert (counts["n_written"], counts["n_rejected"]) == (table.num_rows, rejects.num_rows)
        assert sorted(table["record_id"].to_pylist() + rejects["record_id"].to_pylist()) == expected
        assert rejects.schema.names == ["record_id", "dataset", "source_path", "reason", "detail"]
        assert table.schema.field("signal").type == pa.binary(12 * 5000 * 4)
        assert table.schema.field("signal").metadata[b"supreme_ecg.shape"] == b"12,5000"
        assert table.schema.field("n_nonfinite_repaired").type == pa.int32()
        assert table.schema.names[:7] == ["record_id", "dataset", "source_path", "patient_id", "split", "report", "codes"]
        signals = pp.read_signals(out)
        assert signals.shape == (table.num_rows, 12, 5000) and signals.dtype == np.float32
        if table.num_rows:
            assert np.allclose(signals.min(axis=(1, 2)), 0) and np.allclose(signals.max(axis=(1, 2)), 1)
            assert pq.ParquetFile(out).num_row_groups == -(-table.num_rows // 2)
        seen_ok += table.to_pylist()
        seen_rej += rejects.to_pylist()
    assert sorted([r["record_id"] for r in seen_ok] + [r["record_id"] for r in seen_rej]) == ids
    reasons = {r["source_path"].split("/")[-1]: r["reason"] for r in seen_rej}
    assert reasons == {"cut.hea": "truncated_dat", "exist.hea": "missing_file"}
    by_path = {r["source_path"]: r for r in seen_ok}
    ptb = by_path["cinc2020/ptb/S0001.hea"]
    assert ptb["original_fs"] == 1000 and ptb["original_n_samples"] == 38400 and ptb["fs"] == 500
    assert by_path["ptbxl/records500/00000/00001_hr.hea"]["lead_sources"][4] == "AVL"
    assert by_path["cinc2020/georgia/E00009.hea"]["codes"] == ["NORM", "6"]
    assert by_path["cinc2020/georgia/E00009.hea"]["report"] == "befund 6 vÄnster"


def test_empty_shard_writes_both_files(tmp_path):
    table = pa.table({"record_id": ["a"], "dataset": ["x"], "source_path": ["nowhere"], "split": ["train"]})
    pq.write_table(table, tmp_path / "m.parquet")
    empty = next(s for s in range(4) if s != pp.shard_of("a", 4))
    counts = pp.preprocess_shard(tmp_path / "m.parquet", empty, 4, RAW, tmp_path / "o.parquet", tmp_path / "r.parquet")
    assert counts["n_input"] == 0
    out = pq.read_table(tmp_path / "o.parquet")
    assert out.num_rows == 0 and "split" in out.schema.names and "signal" in out.schema.names
    assert pq.read_table(tmp_path / "r.parquet").num_rows == 0
    assert pp.read_signals(out).shape == (0, 12, 5000)


def test_read_signals_row_major_sliced_and_chunked(tmp_path):
    x = np.arange(5 * 12 * 3, dtype=np.float32).reshape(5, 12, 3)
    column = pa.chunked_array([pp.signal_array(x[:2]), pp.signal_array(x[2:])])
    table = pa.table({"signal": column}).slice(1)
    np.testing.assert_array_equal(pp.read_signals(table), x[1:])
    pq.write_table(pa.table({"signal": column}), tmp_path / "s.parquet", row_group_size=2)
    np.testing.assert_array_equal(pp.read_signals(tmp_path / "s.parquet"), x)


def test_signal_column_is_little_endian_float32_bytes():
    x = np.linspace(-1, 1, 2 * 12 * 4).reshape(2, 12, 4)  # float64 in, <f4 bytes out
    column = pp.signal_array(x)
    assert column.type == pp.signal_type(4) and pp.signal_n_samples(column.type) == 4
    assert column[1].as_py() == x[1].astype("<f4").tobytes()
    with pytest.raises(ValueError, match="n, 12, n_samples"):
        pp.signal_array(x[:, :6])


def test_read_signals_names_the_fix_for_old_list_shards():
    old = pa.table({"signal": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(36, np.float32)), 36)})
    with pytest.raises(TypeError, match="-R preprocess_shard"):
        pp.read_signals(old)
