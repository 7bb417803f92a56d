"""Bad input from other sources is refused with a plain reason: units that are not voltages, missing
signal files, extensions no reader reads, records of zero samples, records without the 12 leads.

Records are written in ``tmp_path`` (``wfdb.wrsamp``, :func:`formats.write_wfdb16`, hand-written
headers, multi-segment ones included) or copied from the real fixtures (``settings.fixtures_dir()``,
skipped with the reason when absent); wfdb-python is the reference for what each record holds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import wfdb

from supreme_ecg import formats
from supreme_ecg import preprocess as pp
from supreme_ecg.leads import CANONICAL_LEADS
from supreme_ecg.predict import prepare_record
from supreme_ecg.settings import fixtures_dir

FIXTURES = fixtures_dir()
PTBXL_RECORD = FIXTURES / "ptbxl" / "records500" / "00000" / "00001_hr"
CINC_RECORD = FIXTURES / "cinc2020" / "georgia" / "E00009"
needs_fixtures = pytest.mark.skipif(
    not (PTBXL_RECORD.with_suffix(".hea").is_file() and CINC_RECORD.with_suffix(".hea").is_file()),
    reason=f"real ECG fixtures not found at {FIXTURES} (set SUPREME_FIXTURES)",
)


def _read_error(path) -> formats.RecordReadError:
    """The RecordReadError :func:`formats.read_record` raises for ``path``."""
    with pytest.raises(formats.RecordReadError) as err:
        formats.read_record(path)
    return err.value


def _signal(n=500, leads=2, seed=0) -> np.ndarray:
    """A random (n, leads) signal, wfdb's layout."""
    return np.random.default_rng(seed).normal(scale=0.5, size=(n, leads))


def _wrsamp(directory: Path, name: str, units, fmt="212", n=500, gain=200.0, sig_name=None, **extra) -> Path:
    """``wfdb.wrsamp`` a random record with the given units; returns its header path."""
    leads = len(units)
    wfdb.wrsamp(name, fs=250, units=list(units), sig_name=sig_name or [f"ch{i}" for i in range(leads)],
                p_signal=_signal(n, leads), fmt=[fmt] * leads, adc_gain=[gain] * leads, baseline=[0] * leads,
                write_dir=str(directory), **extra)
    return directory / f"{name}.hea"


def _set_units(hea: Path, units: str) -> None:
    """Rewrite every ``/mV`` of a header's signal lines as ``/<units>``."""
    hea.write_text(hea.read_text().replace("/mV", f"/{units}"))


def _drop_length(hea: Path) -> None:
    """Remove the number of samples from a header's record line."""
    lines = hea.read_text().splitlines()
    lines[0] = " ".join(lines[0].split()[:3])
    hea.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- 1. units


@pytest.mark.parametrize(("units", "to_mv"), [
    ("V", 1e3), ("v", 1e3), ("mV", 1.0), ("mv", 1.0), ("MV", 1.0), ("uV", 1e-3), ("uv", 1e-3), ("UV", 1e-3),
    ("\u00b5V", 1e-3), ("\u03bcV", 1e-3), ("nV", 1e-6), ("nv", 1e-6), ("pV", 1e-9), ("kV", 1e6),
])
def test_every_voltage_unit_is_scaled_to_mv(units, to_mv):
    header = formats.parse_header_text(f"r 1 500 10\nr.dat 16 1000/{units} 16 0 0 0 0 I\n")
    assert header.to_mv.tolist() == [to_mv]


@pytest.mark.parametrize("units", ["uV", "nV", "V"])
def test_format16_fast_path_scales_units_like_wfdb(tmp_path, units):
    signal = np.cumsum(_signal(600, 12, seed=1), axis=0).T.astype(np.float32)
    hea = formats.write_wfdb16(tmp_path, "r", signal, list(CANONICAL_LEADS), 500)
    _set_units(hea, units)
    record = formats.read_record(hea)
    reference, fields = wfdb.rdsamp(str(tmp_path / "r"))
    assert record.source_format == "wfdb16" and fields["units"] == [units] * 12
    factor = formats.parse_header_text(f"r 1 500\nr.dat 16 1/{units}\n").to_mv[0]
    np.testing.assert_allclose(record.signal, reference.T * factor, rtol=1e-6)
    assert factor != 1.0 and np.abs(record.signal).max() > 0


def test_nv_and_v_channels_of_one_record_through_wfdb(tmp_path):
    """The layout of wfdb-python's ``n8_evoked_raw_95_F1_R9`` (format 24, one nV and one V signal)."""
    hea = _wrsamp(tmp_path, "n8", ["nV", "V"], fmt="24", gain=1e6)
    record = formats.read_record(hea)
    reference, fields = wfdb.rdsamp(str(tmp_path / "n8"))
    assert record.source_format == "wfdb" and fields["units"] == ["nV", "V"]
    np.testing.assert_allclose(record.signal, (reference * [1e-6, 1e3]).T, rtol=1e-6)


@pytest.mark.parametrize("units", ["mmHg", "NU", "Ohm", "bpm", "furlongs"])
def test_a_unit_that_is_not_a_voltage_is_refused_naming_unit_and_signal(tmp_path, units):
    hea = _wrsamp(tmp_path, "mixed", ["mV", units, "uV"], sig_name=["II", "ABP", "V"])
    error = _read_error(hea)
    assert error.reason == "unit_unsupported"
    assert f"signal 1 'ABP' in '{units}'" in error.detail and "not a voltage unit" in error.detail
    assert "'II'" not in error.detail and "'V'" not in error.detail
    assert wfdb.rdsamp(str(tmp_path / "mixed"))[1]["units"] == ["mV", units, "uV"]  # wfdb reads any unit


def test_unit_is_refused_on_every_path_before_the_data_is_read(tmp_path):
    signal = _signal(500, 12).T
    fast = formats.write_wfdb16(tmp_path, "fast", signal, list(CANONICAL_LEADS), 500)
    mat = formats.write_cinc_mat(tmp_path, "cinc", signal, list(CANONICAL_LEADS), 500)
    other = _wrsamp(tmp_path, "other", ["mV", "mV"], sig_name=["I", "II"])
    for hea in (fast, mat, other):
        lines = hea.read_text().splitlines()
        lines[2] = lines[2].replace("/mV", "/mmHg")
        hea.write_text("\n".join(lines) + "\n")
        for data in tmp_path.glob(f"{hea.stem}.*"):
            if data.suffix != ".hea":
                data.unlink()  # no data: the unit is told first
        error = _read_error(hea)
        assert (error.reason, error.detail) == ("unit_unsupported", f"{hea.stem}: signal 1 'II' in 'mmHg': "
                                                "not a voltage unit (V, mV, uV, nV, pV, kV)")


def test_several_bad_units_and_an_unnamed_signal_are_all_named():
    header = formats.parse_header_text("r 3 125 10\nr.dat 16 1/NU\nr.dat 16 1/mV 16 0 0 0 0 II\nr.dat 16 1/Ohm\n")
    with pytest.raises(formats.RecordReadError) as err:
        _ = header.to_mv
    assert err.value.detail.startswith("r: signal 0 '(unnamed)' in 'NU', signal 2 '(unnamed)' in 'Ohm':")


# --------------------------------------------------------------------------- 2. missing signal files


@pytest.mark.parametrize("with_length", [True, False])
@pytest.mark.parametrize("kind", ["wfdb16", "wfdb", "cinc_mat"])
def test_missing_signal_file_is_missing_file_on_every_path(tmp_path, kind, with_length):
    if kind == "wfdb16":
        hea, data = formats.write_wfdb16(tmp_path, "r", _signal().T, ["I", "II"], 500), "r.dat"
    elif kind == "cinc_mat":
        hea, data = formats.write_cinc_mat(tmp_path, "r", _signal().T, ["I", "II"], 500), "r.mat"
    else:
        hea, data = _wrsamp(tmp_path, "r", ["mV", "mV"]), "r.dat"
    assert formats.read_record(hea).source_format == kind
    if not with_length:
        _drop_length(hea)
    (tmp_path / data).unlink()
    for path in (hea, tmp_path / "r", tmp_path / data):  # header, record and data paths
        error = _read_error(path)
        assert (error.reason, error.detail) == ("missing_file", str(tmp_path / data))
    with pytest.raises(FileNotFoundError):
        wfdb.rdsamp(str(tmp_path / "r"))


def test_the_missing_one_of_several_signal_files_is_named(tmp_path):
    """Three signal files, as in wfdb-python's ``mixedsignals``; the second is gone."""
    specs = [("a.dat", "I"), ("b.dat", "II"), ("c.dat", "V1")]
    lines = ["r 3 250 100"] + [f"{name} 16 200/mV 16 0 0 0 0 {lead}" for name, lead in specs]
    (tmp_path / "r.hea").write_text("\n".join(lines) + "\n")
    for name, _ in specs:
        np.zeros(100, "<i2").tofile(tmp_path / name)
    assert formats.read_record(tmp_path / "r.hea").signal.shape == (3, 100)
    (tmp_path / "b.dat").unlink()
    error = _read_error(tmp_path / "r.hea")
    assert (error.reason, error.detail) == ("missing_file", str(tmp_path / "b.dat"))


@needs_fixtures
@pytest.mark.parametrize("source", [PTBXL_RECORD, CINC_RECORD])
def test_real_record_without_its_signal_file(tmp_path, source):
    data = next(p for p in source.parent.glob(f"{source.name}.*") if p.suffix != ".hea")
    shutil.copy(source.with_suffix(".hea"), tmp_path)
    error = _read_error(tmp_path / f"{source.name}.hea")
    assert (error.reason, error.detail) == ("missing_file", str(tmp_path / data.name))
    shutil.copy(data, tmp_path)
    assert formats.read_record(tmp_path / f"{source.name}.hea").signal.shape[0] == 12


# --------------------------------------------------------------------------- 3. extensions not read


@pytest.mark.parametrize(("name", "told"), [("r.edf", "'.edf'"), ("r.EDF", "'.EDF'"), ("r.txt", "'.txt'"),
                                            ("rec", "no extension")])
def test_an_existing_file_of_an_unread_extension_is_format_unsupported(tmp_path, name, told):
    (tmp_path / name).write_bytes(b"0       some bytes")
    error = _read_error(tmp_path / name)
    assert error.reason == "format_unsupported"
    assert error.detail.startswith(f"{tmp_path / name}: {told} is not read")
    assert ".hea" in error.detail and ".mat" in error.detail and ".h5" in error.detail


def test_a_file_that_does_not_exist_stays_missing_file(tmp_path):
    for name in ("r.edf", "rec", "r.h5", "r.hea"):
        error = _read_error(tmp_path / name)
        assert (error.reason, error.detail) == ("missing_file", str(tmp_path / name))
    assert _read_error(tmp_path / "r.dat").detail == f"no header for {tmp_path / 'r.dat'}"


def test_a_record_name_with_a_dot_is_still_read_by_its_header(tmp_path):
    formats.write_wfdb16(tmp_path, "rec.v2", _signal().T, ["I", "II"], 500)
    assert formats.read_record(tmp_path / "rec.v2").signal.shape == (2, 500)


# --------------------------------------------------------------------------- 4. empty records


def _write_multisegment(directory: Path) -> Path:
    """A variable-layout multi-segment record as in wfdb-python's ``multi-segment`` sample data:
    a master header, its layout header (0 samples, signal files ``~``) and two segments."""
    (directory / "ms_layout.hea").write_text(
        "ms_layout 2 125 0 10:44:18\n~ 0 86/mV 11 0 -1024 0 0 II\n~ 0 1.25(-100)/mmHg 9 0 -256 0 0 ABP\n")
    for name in ("ms_0001", "ms_0002"):
        wfdb.wrsamp(name, fs=125, units=["mV"], sig_name=["II"], p_signal=_signal(250, 1), fmt=["16"],
                    adc_gain=[200.0], baseline=[0], write_dir=str(directory))
    (directory / "ms.hea").write_text("ms/3 2 125 500\nms_layout 0\nms_0001 250\nms_0002 250\n")
    return directory / "ms.hea"


def test_multisegment_layout_header_is_an_empty_record(tmp_path):
    master = _write_multisegment(tmp_path)
    with pytest.raises(ValueError, match="sampto must be greater than sampfrom"):
        wfdb.rdrecord(str(tmp_path / "ms_layout"))
    for path in (tmp_path / "ms_layout.hea", tmp_path / "ms_layout"):
        error = _read_error(path)
        assert (error.reason, error.detail) == (
            "empty_record", "ms_layout.hea: 0 samples (a multi-segment layout header: its signals have no files)")
    assert wfdb.rdrecord(str(tmp_path / "ms")).sig_len == 500
    error = _read_error(master)
    assert (error.reason, error.detail) == ("multisegment_unsupported", "ms/3")
    assert formats.read_record(tmp_path / "ms_0001.hea").signal.shape == (1, 250)  # a segment reads alone


@pytest.mark.parametrize("kind", ["wfdb16", "wfdb", "cinc_mat"])
def test_header_of_zero_samples_is_an_empty_record(tmp_path, kind):
    if kind == "wfdb16":
        hea = formats.write_wfdb16(tmp_path, "r", np.zeros((2, 0)), ["I", "II"], 500)
    elif kind == "cinc_mat":
        hea = formats.write_cinc_mat(tmp_path, "r", np.zeros((2, 0)), ["I", "II"], 500)
    else:
        hea = _wrsamp(tmp_path, "r", ["mV", "mV"])
        hea.write_text(hea.read_text().replace("r 2 250 500", "r 2 250 0"))
    assert hea.read_text().split()[3] == "0"
    error = _read_error(hea)
    assert (error.reason, error.detail) == ("empty_record", "r.hea: 0 samples")


@pytest.mark.parametrize(("fmt", "detail"), [("16", "{hea}: 0 samples"), ("212", "r: signal files ['r.dat'] are empty")])
def test_empty_signal_file_without_header_length_is_an_empty_record(tmp_path, fmt, detail):
    hea = _wrsamp(tmp_path, "r", ["mV", "mV"], fmt=fmt)
    _drop_length(hea)
    (tmp_path / "r.dat").write_bytes(b"")
    error = _read_error(hea)
    assert (error.reason, error.detail) == ("empty_record", detail.format(hea=hea))


def test_header_without_signals_and_sph_file_of_zero_samples_are_empty_records(tmp_path):
    (tmp_path / "z.hea").write_text("z 0 125 0\n")
    assert (_read_error(tmp_path / "z.hea").reason, _read_error(tmp_path / "z.hea").detail) == (
        "empty_record", "z.hea: no signals")
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        handle["ecg"] = np.zeros((12, 0), np.float32)
    error = _read_error(tmp_path / "s.h5")
    assert (error.reason, error.detail) == ("empty_record", f"{tmp_path / 's.h5'}: 0 samples")


# --------------------------------------------------------------------------- 5. missing leads


def test_missing_leads_names_the_missing_and_the_present_leads():
    names = [name for name in CANONICAL_LEADS if name != "V3"] + ["vx"]
    record = formats.Record("r", np.ones((12, 5000), np.float32), names, 500, 5000)
    with pytest.raises(pp.RecordRejected) as err:
        pp.preprocess_record(record, pp.PreprocessConfig())
    assert err.value.reason == "missing_leads"
    assert err.value.detail == f"missing precordial leads ['V3']; the record has {names}"
    limb = ["II", "III", "aVR", "V1", "V2", "V3", "V4", "V5", "V6"]
    record = formats.Record("r", np.ones((9, 5000), np.float32), limb, 500, 5000)
    with pytest.raises(pp.RecordRejected) as err:
        pp.preprocess_record(record, pp.PreprocessConfig())
    assert err.value.detail == (f"missing limb leads ['I', 'aVL', 'aVF'] and cannot derive without I and II; "
                                f"the record has {limb}")


# --------------------------------------------------------------------------- reasons in reject rows


def test_reasons_reach_the_reject_rows_and_predict(tmp_path):
    """Each case above ends as a preprocess reject row and a predict ``unreadable``/``rejected`` row."""
    signal = np.cumsum(_signal(5000, 12), axis=0).T
    good = formats.write_wfdb16(tmp_path, "good", signal, list(CANONICAL_LEADS), 500)
    volts = formats.write_wfdb16(tmp_path, "volts", signal, list(CANONICAL_LEADS), 500)
    _set_units(volts, "V")
    pressure = formats.write_wfdb16(tmp_path, "pressure", signal, list(CANONICAL_LEADS), 500)
    _set_units(pressure, "mmHg")
    gone = _wrsamp(tmp_path, "gone", ["mV", "mV"])
    (tmp_path / "gone.dat").unlink()
    (tmp_path / "scan.edf").write_bytes(b"0       ")
    _write_multisegment(tmp_path)
    three = formats.write_wfdb16(tmp_path, "three", signal[:3], ["I", "II", "III"], 500)
    expected = {
        good.name: None, volts.name: None, pressure.name: "unit_unsupported", gone.name: "missing_file",
        "scan.edf": "format_unsupported", "ms_layout.hea": "empty_record", three.name: "missing_leads",
    }
    names = list(expected)
    pq.write_table(pa.table({"record_id": names, "dataset": ["x"] * len(names), "source_path": names}),
                   tmp_path / "manifest.parquet")
    counts = pp.preprocess_shard(tmp_path / "manifest.parquet", 0, 1, pp.PreprocessConfig(),
                                 tmp_path / "out.parquet", tmp_path / "rejects.parquet", root=tmp_path)
    rejects = {row["record_id"]: row for row in pq.read_table(tmp_path / "rejects.parquet").to_pylist()}
    assert {name: row["reason"] for name, row in rejects.items()} == {k: v for k, v in expected.items() if v}
    assert counts["n_written"] == 2 and counts["reasons"]["unit_unsupported"] == 1
    assert "'mmHg'" in rejects[pressure.name]["detail"] and "V1" in rejects[pressure.name]["detail"]
    assert rejects[gone.name]["detail"] == str(tmp_path / "gone.dat")
    assert rejects[three.name]["detail"].endswith("the record has ['I', 'II', 'III']")
    written = pp.read_signals(tmp_path / "out.parquet")
    np.testing.assert_allclose(written[0], written[1], atol=1e-6)  # min-max normalised: V scales away
    statuses = {name: prepare_record(tmp_path / name, pp.PreprocessConfig())[1:3] for name in names}
    assert statuses[pressure.name] == ("unreadable", "unit_unsupported")
    assert statuses["scan.edf"] == ("unreadable", "format_unsupported")
    assert statuses[three.name] == ("rejected", "missing_leads")
