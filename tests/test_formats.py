"""Reading real ECG fixtures of every source format, and the two writers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import wfdb

from supreme_ecg import formats
from supreme_ecg.leads import CANONICAL_LEADS, reorder_by_name

CINC_FOLDERS = ["cpsc2018", "chapman_ningbo", "georgia", "ptb", "ptbxl"]


def _first_token(hea: Path) -> str:
    """First token of a header's record line."""
    return hea.read_text().split()[0]


def _raw_mat_mv(hea: Path) -> np.ndarray:
    """Independent reference: loadmat ``val`` scaled by the header gains (baseline 0 in CinC)."""
    gains = [float(line.split()[2].split("/")[0]) for line in hea.read_text().splitlines()[1:13]]
    val = scipy.io.loadmat(str(hea.with_suffix(".mat")))["val"].astype(np.float64)
    return val / np.array(gains)[:, None]


# --------------------------------------------------------------------------- headers


def test_parse_gain_variants():
    text = (
        "rec 3 500 10\n"
        "rec.dat 16 1000.0(0)/mV 16 0 -115 13047 0 I\n"
        "rec.dat 16 4880/mV 16 0 5 -1 0 II\n"
        "rec.dat 16 200(12)/mv 12 3 0 0 0 V1 lead\n"
        "#Dx: 1,2\n"
    )
    header = formats.parse_header_text(text)
    assert header.record_name == "rec" and header.n_sig == 3 and header.fs == 500 and header.n_samples == 10
    assert header.gains.tolist() == [1000.0, 4880.0, 200.0]
    assert header.baselines.tolist() == [0, 0, 12]
    assert header.signals[0].checksum == 13047 and header.signals[0].init_value == -115
    assert header.signals[2].units == "mv" and header.to_mv.tolist() == [1.0, 1.0, 1.0]
    assert header.lead_names == ["I", "II", "V1 lead"]
    assert header.comments == ["Dx: 1,2"]


def test_header_defaults_baseline_to_adc_zero():
    header = formats.parse_header_text("r 1 250\nr.dat 212 100/uV 12 7 0 0 0 X\n")
    assert header.signals[0].baseline == 7 and header.n_samples is None
    assert header.to_mv.tolist() == [1e-3]


def test_bad_header_has_reason():
    with pytest.raises(formats.RecordReadError) as err:
        formats.parse_header_text("r 2 500 10\nr.dat 16 1000/mV 16 0 0 0 0 I\n")
    assert err.value.reason == "bad_header"


@pytest.mark.fixtures
def test_read_header_ptbxl_and_mat_first_token(fx):
    header = formats.read_header(fx / "ptbxl/records500/00000/00001_hr.hea")
    assert header.gains.tolist() == [1000.0] * 12 and header.signals[0].fmt == "16"
    assert header.lead_names[3:6] == ["AVR", "AVL", "AVF"]
    assert header.signals[2].checksum == 64050
    georgia = formats.read_header(fx / "cinc2020/georgia/E00009.hea")
    assert _first_token(fx / "cinc2020/georgia/E00009.hea") == "E00009.mat"
    assert georgia.record_name == "E00009" and georgia.gains[0] == 4880.0
    assert georgia.signals[0].byte_offset == 24 and georgia.signals[0].fmt == "16"
    ptb = formats.read_header(fx / "cinc2020/ptb/S0001.hea")
    assert ptb.gains[0] == 1000.0 and ptb.fs == 1000


# --------------------------------------------------------------------------- real records


@pytest.mark.fixtures
@pytest.mark.parametrize("folder", CINC_FOLDERS)
def test_every_cinc_record_reads(fx, folder):
    heas = sorted((fx / "cinc2020" / folder).glob("*.hea"))
    assert heas
    for hea in heas:
        record = formats.read_record(hea)
        header = formats.read_header(hea)
        assert record.source_format == "cinc_mat"
        assert record.signal.dtype == np.float32
        assert record.signal.shape == (header.n_sig, header.n_samples) == (len(record.lead_names), record.n_samples)
        assert np.isfinite(record.signal).all()
        signal12, _, derived = reorder_by_name(record.signal, record.lead_names)
        assert signal12.shape[0] == 12 and derived == []
        if _first_token(hea).endswith(".mat"):
            np.testing.assert_allclose(record.signal, _raw_mat_mv(hea), atol=1e-6)
        else:
            reference = wfdb.rdrecord(str(hea.with_suffix("")))
            np.testing.assert_allclose(record.signal, reference.p_signal.T, atol=1e-6)


@pytest.mark.fixtures
def test_georgia_gain_4880(fx):
    hea = fx / "cinc2020/georgia/E00009.hea"
    record = formats.read_record(hea)
    raw = scipy.io.loadmat(str(hea.with_suffix(".mat")))["val"]
    np.testing.assert_allclose(record.signal, raw / 4880.0, rtol=1e-6, atol=1e-7)
    assert record.record_name == "E00009"
    assert record.dx_codes == ["428750005", "39732003", "427084000"] and record.age == 76 and record.sex == "M"


@pytest.mark.fixtures
def test_cpsc_long_records_and_metadata(fx):
    records = [formats.read_record(p) for p in sorted((fx / "cinc2020/cpsc2018").glob("A*.hea"))]
    assert any(r.n_samples >= 7500 for r in records)
    a0001 = formats.read_record(fx / "cinc2020/cpsc2018/A0001")  # extension-less path
    assert a0001.n_samples == 7500 and a0001.fs == 500
    assert a0001.dx_codes == ["59118001"] and a0001.age == 74 and a0001.sex == "M"
    assert formats.read_record(fx / "cinc2020/georgia/E00001.mat").age is None  # "#Age: NaN"


@pytest.mark.fixtures
def test_ptb_1khz(fx):
    for hea in sorted((fx / "cinc2020/ptb").glob("*.hea")):
        record = formats.read_record(hea)
        assert record.fs == 1000 and record.signal.shape[0] >= 12
        assert 38 <= record.n_samples / record.fs <= 116


@pytest.mark.fixtures
@pytest.mark.parametrize("sub,suffix", [("records500", "hr"), ("records100", "lr")])
def test_ptbxl_fast_path_matches_wfdb(fx, sub, suffix):
    heas = sorted((fx / "ptbxl" / sub / "00000").glob(f"*_{suffix}.hea"))[::97]
    assert heas
    for hea in heas:
        record = formats.read_record(hea)
        reference = wfdb.rdrecord(str(hea.with_suffix("")))
        assert record.source_format == "wfdb16"
        assert record.fs == reference.fs and record.n_samples == reference.sig_len
        np.testing.assert_allclose(record.signal, reference.p_signal.T, atol=1e-6)
        signal12, sources, _ = reorder_by_name(record.signal, record.lead_names)
        avl = reference.sig_name.index("AVL")
        assert sources[4] == "AVL" and CANONICAL_LEADS[4] == "aVL"
        np.testing.assert_allclose(signal12[4], reference.p_signal[:, avl], atol=1e-6)


@pytest.mark.fixtures
def test_sph_h5(fx):
    with open(fx / "cinc2020/sph/metadata.csv", newline="") as handle:
        lengths = {row["ECG_ID"]: int(row["N"]) for row in csv.DictReader(handle)}
    files = sorted((fx / "cinc2020/sph").glob("*.h5"))
    assert files
    for path in files:
        record = formats.read_record(path)
        assert record.source_format == "sph_h5" and record.fs == 500
        assert record.signal.dtype == np.float32 and record.signal.shape[0] == 12
        assert record.n_samples == lengths.get(path.name, record.n_samples)  # SPH00005 has no metadata row
        assert record.lead_names == list(CANONICAL_LEADS) and np.isfinite(record.signal).all()


# --------------------------------------------------------------------------- other readers


def test_original_cpsc2018_struct(tmp_path):
    data = np.random.default_rng(0).normal(size=(12, 6000))
    scipy.io.savemat(str(tmp_path / "A9999.mat"), {"ECG": {"sex": "Female", "age": 61.0, "data": data}})
    record = formats.read_record(tmp_path / "A9999")
    assert record.source_format == "cpsc2018_mat" and record.fs == 500 and record.n_samples == 6000
    assert record.lead_names == list(CANONICAL_LEADS) and record.sex == "F" and record.age == 61
    np.testing.assert_allclose(record.signal, data, rtol=1e-6)


def test_other_wfdb_format_goes_through_wfdb(tmp_path):
    signal = np.random.default_rng(1).normal(scale=0.5, size=(500, 2))
    wfdb.wrsamp("r212", fs=250, units=["mV", "mV"], sig_name=["I", "II"], p_signal=signal,
                fmt=["212", "212"], adc_gain=[200.0, 200.0], baseline=[0, 0], write_dir=str(tmp_path))
    record = formats.read_record(tmp_path / "r212.hea")
    assert record.source_format == "wfdb"
    np.testing.assert_allclose(record.signal, signal.T, atol=0.5 / 200 + 1e-6)


def test_missing_file(tmp_path):
    with pytest.raises(formats.RecordReadError) as err:
        formats.read_record(tmp_path / "nothing")
    assert err.value.reason == "missing_file" and isinstance(err.value, ValueError)


# --------------------------------------------------------------------------- writers


def _demo_signal(n=1200, leads=12, seed=0):
    """A smooth random mV signal."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(scale=0.02, size=(leads, n)), axis=1).astype(np.float32)


@pytest.mark.parametrize("gain", [1000.0, 4880.0])
def test_wfdb16_round_trip_and_wfdb_reads_it(tmp_path, gain):
    signal = _demo_signal()
    hea = formats.write_wfdb16(tmp_path, "rt", signal, list(CANONICAL_LEADS), 500, gain=gain,
                               comments=["Age: 50", "#Dx: 1,2"])
    record = formats.read_record(hea)
    assert record.source_format == "wfdb16" and record.lead_names == list(CANONICAL_LEADS)
    assert np.abs(record.signal - signal).max() <= 0.5 / gain + 1e-6
    assert record.age == 50 and record.dx_codes == ["1", "2"]
    reference = wfdb.rdrecord(str(tmp_path / "rt"))
    np.testing.assert_allclose(reference.p_signal.T, record.signal, atol=1e-6)
    digital = wfdb.rdrecord(str(tmp_path / "rt"), physical=False)
    assert [c % 65536 for c in digital.checksum] == digital.calc_checksum()  # written signed, as CinC does
    assert digital.init_value == digital.d_signal[0].tolist()


def test_wfdb16_nan_and_clipping(tmp_path):
    signal = _demo_signal(n=100, leads=2)
    signal[0, 10:13] = np.nan
    signal[1, 5] = 100.0  # 100 mV · 1000 > int16
    formats.write_wfdb16(tmp_path, "nan", signal, ["I", "II"], 100)
    record = formats.read_record(tmp_path / "nan")
    assert np.isnan(record.signal[0, 10:13]).all() and np.isfinite(record.signal[0, 13:]).all()
    assert record.signal[1, 5] == pytest.approx(32.767)
    assert np.isnan(wfdb.rdrecord(str(tmp_path / "nan")).p_signal[10:13, 0]).all()


def test_cinc_mat_round_trip(tmp_path):
    signal = _demo_signal(n=900)
    hea = formats.write_cinc_mat(tmp_path, "C0001", signal, list(CANONICAL_LEADS), 257, gain=4880.0,
                                 comments=["#Age: 40", "#Sex: Female", "#Dx: 426783006"])
    first = hea.read_text().splitlines()[1].split()
    assert first[:3] == ["C0001.mat", "16+24", "4880/mV"]
    val = scipy.io.loadmat(str(tmp_path / "C0001.mat"))["val"]
    assert val.dtype == np.int16 and val.shape == (12, 900)
    record = formats.read_record(hea)
    assert record.source_format == "cinc_mat" and record.fs == 257 and record.sex == "F"
    assert np.abs(record.signal - signal).max() <= 0.5 / 4880 + 1e-6
    np.testing.assert_allclose(wfdb.rdrecord(str(tmp_path / "C0001")).p_signal.T, record.signal, atol=1e-6)


def test_truncated_dat(tmp_path):
    hea = formats.write_wfdb16(tmp_path, "cut", _demo_signal(n=500), list(CANONICAL_LEADS), 500)
    dat = tmp_path / "cut.dat"
    dat.write_bytes(dat.read_bytes()[:-100])
    with pytest.raises(formats.RecordReadError) as err:
        formats.read_record(hea)
    assert err.value.reason == "truncated_dat"


def test_mat_shape_mismatch_and_corrupt_mat(tmp_path):
    hea = formats.write_cinc_mat(tmp_path, "bad", _demo_signal(n=500), list(CANONICAL_LEADS), 500)
    hea.write_text(hea.read_text().replace("bad 12 500 500", "bad 12 500 600", 1))
    with pytest.raises(formats.RecordReadError) as err:
        formats.read_record(hea)
    assert err.value.reason == "mat_shape_mismatch"
    mat = tmp_path / "bad.mat"
    mat.write_bytes(mat.read_bytes()[:200])
    with pytest.raises(formats.RecordReadError) as err:
        formats.read_record(hea)
    assert err.value.reason == "mat_unreadable"


def test_reorder_by_name_permutes_copies_only_when_needed():
    canonical = np.arange(12 * 4, dtype=np.float32).reshape(12, 4)
    same, sources, derived = reorder_by_name(canonical, [name.upper() for name in CANONICAL_LEADS])
    assert same is canonical and derived == [] and sources[3] == "AVR"
    mimic_order = [0, 1, 2, 3, 5, 4, *range(6, 12)]  # I, II, III, aVR, aVF, aVL, V1-V6
    swapped, sources, _ = reorder_by_name(canonical[mimic_order], [CANONICAL_LEADS[i] for i in mimic_order])
    np.testing.assert_array_equal(swapped, canonical)
    assert sources == list(CANONICAL_LEADS)
