"""Reading and writing ECG records: WFDB (format 16 fast path), CinC ``.mat``, CPSC2018, SPH HDF5.

Every reader returns a :class:`Record` whose ``signal`` is float32 ``(n_leads, n_samples)`` in mV,
``(adc - baseline) / gain``; the WFDB "invalid sample" value (-32768 in format 16) becomes NaN.
Leads stay in file order: :func:`supreme_ecg.leads.reorder_by_name` puts them in canonical order.

A record that cannot be read raises :class:`RecordReadError`; its ``reason`` becomes the reason of
the preprocess reject row (and of ``predict``'s ``unreadable`` rows): ``missing_file`` (a header,
signal or data file that does not exist, named in the detail), ``format_unsupported`` (a file of
an extension no reader here reads), ``unit_unsupported`` (a signal whose unit is not a voltage),
``empty_record`` (no signals or zero samples), ``bad_header``, ``multisegment_unsupported``,
``truncated_dat``, ``wfdb_unreadable``, ``mat_*`` and ``h5_*`` (damaged files).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from supreme_ecg.leads import CANONICAL_LEADS

#: The format-16 ADC value WFDB reserves for a missing (NaN) sample.
ADC_NAN = -32768
#: Lead order and rate of the original CPSC2018 release and of SPH.
CPSC2018_LEADS = CANONICAL_LEADS
CPSC2018_FS = 500.0
SPH_FS = 500.0

_FMT_RE = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")
_GAIN_RE = re.compile(r"^([-+]?[\d.]+(?:[eE][-+]?\d+)?)(?:\(([-+]?\d+)\))?(?:/(\S+))?$")
_COMMENT_RE = re.compile(r"^\s*([A-Za-z_]+)\s*:\s*(.*?)\s*$")
#: Factor to mV of every voltage unit WFDB knows (wfdb-python's ``unit_scale["voltage"]``: pV, nV,
#: uV, mV, V, kV), keyed in lower case: headers write "mv", "uv", and no ECG is in megavolts. Both
#: micro signs (U+00B5, U+03BC) stand for u.
_VOLT_TO_MV = {"pv": 1e-9, "nv": 1e-6, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "mv": 1.0, "v": 1e3, "kv": 1e6}
#: A WFDB signal file name meaning "no file" (a multi-segment layout header's signals).
NO_FILE = "~"


class RecordReadError(ValueError):
    """A record that cannot be read: ``.reason`` is a short machine-usable code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SignalSpec:
    """One signal line of a WFDB header."""

    file_name: str
    fmt: str
    gain: float
    baseline: int
    units: str
    adc_res: int = 0
    adc_zero: int = 0
    init_value: int | None = None
    checksum: int | None = None
    lead_name: str = ""
    samples_per_frame: int = 1
    skew: int = 0
    byte_offset: int = 0


@dataclass
class Header:
    """A parsed WFDB header (``.hea``)."""

    record_name: str
    n_sig: int
    fs: float
    n_samples: int | None
    signals: list[SignalSpec]
    comments: list[str] = field(default_factory=list)

    @property
    def lead_names(self) -> list[str]:
        """Lead (description) names in file order."""
        return [s.lead_name for s in self.signals]

    @property
    def gains(self) -> np.ndarray:
        """Per-signal gain in ADC units per physical unit."""
        return np.array([s.gain for s in self.signals], dtype=np.float64)

    @property
    def baselines(self) -> np.ndarray:
        """Per-signal baseline (ADC value of 0 physical units)."""
        return np.array([s.baseline for s in self.signals], dtype=np.float64)

    @cached_property
    def to_mv(self) -> np.ndarray:
        """Per-signal factor from the header's units to mV; raises ``unit_unsupported`` naming every
        signal whose unit is not a voltage."""
        factors = [_unit_factor(s.units) for s in self.signals]
        if None in factors:
            bad = [f"signal {i} {s.lead_name or '(unnamed)'!r} in {s.units!r}"
                   for i, (s, factor) in enumerate(zip(self.signals, factors)) if factor is None]
            raise RecordReadError(
                "unit_unsupported", f"{self.record_name}: {', '.join(bad)}: not a voltage unit (V, mV, uV, nV, pV, kV)")
        return np.array(factors, dtype=np.float64)


@dataclass
class Record:
    """An ECG record in mV with leads in file order."""

    record_name: str
    signal: np.ndarray
    lead_names: list[str]
    fs: float
    n_samples: int
    comments: list[str] = field(default_factory=list)
    dx_codes: list[str] = field(default_factory=list)
    age: int | None = None
    sex: str | None = None
    source_format: str = ""


# --------------------------------------------------------------------------- header parsing


def _unit_factor(units: str) -> float | None:
    """Factor from a WFDB voltage unit (any case) to mV; None for any other unit."""
    return _VOLT_TO_MV.get(units.strip().lower())


def _int_or_none(tokens: list[str], i: int) -> int | None:
    """``int(tokens[i])`` or None when absent."""
    return int(tokens[i]) if len(tokens) > i else None


def _parse_record_line(line: str) -> tuple[str, int, float, int | None]:
    """Record line → (record_name, n_sig, fs, n_samples); tolerates ``NAME.mat`` as first token."""
    tokens = line.split()
    name = tokens[0]
    if "/" in name:
        raise RecordReadError("multisegment_unsupported", name)
    for ext in (".mat", ".hea", ".dat"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    n_sig = int(tokens[1])
    fs = float(tokens[2].split("/")[0]) if len(tokens) > 2 else 250.0
    return name, n_sig, fs, _int_or_none(tokens, 3)


@lru_cache(maxsize=1024)
def _parse_fmt_field(token: str) -> tuple[str, int, int, int]:
    """Format field (``16``, ``16+24``, ``212x2:3+5``) → (format, samples per frame, skew, byte offset)."""
    match = _FMT_RE.match(token)
    if match is None:
        raise RecordReadError("bad_header", f"format field {token!r}")
    fmt, spf, skew, offset = match.groups()
    return fmt, int(spf or 1), int(skew or 0), int(offset or 0)


@lru_cache(maxsize=1024)
def _parse_gain_field(token: str) -> tuple[float, int | None, str]:
    """Gain field (``1000/mV``, ``200.0(0)/mV``) → (gain, baseline or None, units); gain 0 means 200."""
    match = _GAIN_RE.match(token)
    if match is None:
        raise RecordReadError("bad_header", f"gain field {token!r}")
    gain = float(match.group(1)) or 200.0
    baseline = int(match.group(2)) if match.group(2) else None
    return gain, baseline, match.group(3) or "mV"


def _parse_signal_line(line: str) -> SignalSpec:
    """One signal line → :class:`SignalSpec` (gain 0 or absent means WFDB's default 200)."""
    tokens = line.split()
    n = len(tokens)
    fmt, spf, skew, offset = _parse_fmt_field(tokens[1])
    gain, baseline, units = _parse_gain_field(tokens[2]) if n > 2 else (200.0, None, "mV")
    adc_zero = int(tokens[4]) if n > 4 else 0
    return _signal_spec(
        file_name=tokens[0], fmt=fmt, gain=gain,
        baseline=adc_zero if baseline is None else baseline, units=units,
        adc_res=int(tokens[3]) if n > 3 else 0, adc_zero=adc_zero,
        init_value=int(tokens[5]) if n > 5 else None, checksum=int(tokens[6]) if n > 6 else None,
        lead_name=" ".join(tokens[8:]), samples_per_frame=spf, skew=skew, byte_offset=offset,
    )


def _signal_spec(**values) -> SignalSpec:
    """``SignalSpec(**values)`` (every field given) without the frozen dataclass's per-field
    ``object.__setattr__`` calls, which cost more than parsing the line (12+ per record)."""
    spec = object.__new__(SignalSpec)
    spec.__dict__.update(values)
    return spec


# _signal_spec relies on SignalSpec being a plain dataclass: fields in __dict__, no __post_init__.
assert not hasattr(SignalSpec, "__slots__") and not hasattr(SignalSpec, "__post_init__")


def parse_header_text(text: str) -> Header:
    """Parse the text of a WFDB header."""
    lines, comments = [], []
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):
            comments.append(stripped[1:].strip())
        elif stripped:
            lines.append(stripped.split("#")[0])
    if not lines:
        raise RecordReadError("bad_header", "no record line")
    try:
        name, n_sig, fs, n_samples = _parse_record_line(lines[0])
        signals = [_parse_signal_line(line) for line in lines[1 : 1 + n_sig]]
    except (IndexError, ValueError) as exc:
        if isinstance(exc, RecordReadError):
            raise
        raise RecordReadError("bad_header", str(exc)) from exc
    if len(signals) != n_sig:
        raise RecordReadError("bad_header", f"{len(signals)} signal lines for n_sig={n_sig}")
    return Header(name, n_sig, fs, n_samples, signals, comments)


def read_header(hea_path: str | Path) -> Header:
    """Read and parse a WFDB ``.hea`` file."""
    path = Path(hea_path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError as exc:
        raise RecordReadError("missing_file", str(path)) from exc
    return parse_header_text(text)


def parse_comments(comments: list[str]) -> dict[str, object]:
    """``#Dx:``, ``#Age:``, ``#Sex:`` comments → ``{dx_codes, age, sex}``."""
    found: dict[str, str] = {}
    for comment in comments:
        match = _COMMENT_RE.match(comment)
        if match:
            found.setdefault(match.group(1).lower(), match.group(2))
    dx = [c.strip() for c in found.get("dx", "").split(",") if c.strip()]
    return {"dx_codes": dx, "age": _parse_age(found.get("age")), "sex": _parse_sex(found.get("sex"))}


def _parse_age(value: object) -> int | None:
    """Age as int, None for ``NaN``/``Unknown``/empty."""
    try:
        age = float(np.asarray(value).ravel()[0]) if value is not None else float("nan")
    except (ValueError, TypeError, IndexError):
        return None
    return None if not np.isfinite(age) else int(round(age))


def _parse_sex(value: object) -> str | None:
    """``Male``/``Female``/``M``/``F`` (any case) → ``"M"``/``"F"``, else None."""
    text = str(np.asarray(value).ravel()[0]).strip().upper() if value is not None else ""
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(text)


# --------------------------------------------------------------------------- readers


#: Largest per-record intermediate (in samples) kept for reuse between records; larger ones allocate.
_SCRATCH_MAX_SAMPLES = 1 << 21


class _Scratch(threading.local):
    """Per-thread buffers reused for a record's intermediates (raw ADC, float64 products).

    Allocating and freeing about half a megabyte per record makes glibc return the pages to the
    system and fault them in again on the next record, which costs more than the arithmetic.
    Nothing returned to a caller ever aliases these buffers.
    """

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, key: str, size: int, dtype) -> np.ndarray:
        """A 1-D array of ``size`` elements of ``dtype`` (contents undefined)."""
        if size > _SCRATCH_MAX_SAMPLES:
            return np.empty(size, dtype)
        array = self.arrays.get(key)
        if array is None or array.size < size or array.dtype != np.dtype(dtype):
            array = self.arrays[key] = np.empty(size, dtype)
        return array[:size]


_SCRATCH = _Scratch()


def _scale(adc: np.ndarray, header: Header) -> np.ndarray:
    """ADC (n_sig, n) → float32 mV, NaN where adc is :data:`ADC_NAN`.

    ``(adc - baseline) * (to_mv / gain)`` in float64, rounded once to float32. For int16 input
    (every WFDB format-16 and CinC record) the float64 values live in a reused buffer, the result
    is C-contiguous, and the NaN mask is only built when the minimum is :data:`ADC_NAN` (the
    smallest int16, so the test is exact).
    """
    factor = (header.to_mv / header.gains)[:, None]
    if adc.dtype == np.int16:
        scaled = _SCRATCH.get("scaled", adc.size, np.float64).reshape(adc.shape)
        np.copyto(scaled, adc)  # int16 → float64 is exact (and makes a transposed view contiguous)
        baselines = header.baselines
        if baselines.any():  # x - 0.0 == x: skip the pass when every baseline is 0
            scaled -= baselines[:, None]
        scaled *= factor
        signal = scaled.astype(np.float32)
        if adc.size and adc.min() == ADC_NAN:
            signal[adc == ADC_NAN] = np.nan
        return signal
    signal = ((adc.astype(np.float64) - header.baselines[:, None]) * factor).astype(np.float32)
    signal[adc == ADC_NAN] = np.nan
    return signal


#: ``errno`` values for which :meth:`pathlib.Path.is_file` answers False instead of raising.
_NO_FILE_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})


def _open_regular(path) -> int | None:
    """A read-only descriptor of the regular file at ``path`` (links followed), or None where
    :meth:`pathlib.Path.is_file` would be False; one ``open`` + ``fstat`` instead of ``stat`` + ``open``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in _NO_FILE_ERRNOS:
            return None
        raise
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        return None
    return fd


def _read_regular_text(path) -> str | None:
    """UTF-8 text (errors replaced) of the regular file at ``path``, or None where there is none."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _read_int16_le(path, count: int) -> np.ndarray | None:
    """Up to ``count`` little-endian int16 samples from the start of the regular file at ``path``
    (fewer if it is shorter), or None where there is no such file.

    Reads straight into a reused buffer (the result is only valid until the next call).
    """
    fd = _open_regular(path)
    if fd is None:
        return None
    buffer = _SCRATCH.get("dat", count, np.dtype("<i2"))
    view = memoryview(buffer).cast("B")
    got = 0
    try:
        while got < len(view):
            n = os.readv(fd, [view[got:]])
            if not n:
                break
            got += n
    finally:
        os.close(fd)
    return buffer[: got // 2]


def _is_fast_wfdb16(header: Header) -> bool:
    """True when the record is one format-16 ``.dat`` without skew, offset or oversampling."""
    specs = header.signals
    return (
        len({s.file_name for s in specs}) == 1
        and not specs[0].file_name.lower().endswith(".mat")
        and all(s.fmt == "16" and s.skew == 0 and s.byte_offset == 0 and s.samples_per_frame == 1 for s in specs)
    )


def _read_wfdb16_fast(directory: Path, header: Header) -> np.ndarray:
    """Format-16 ``.dat`` → mV (one read into a reused buffer); raises ``truncated_dat``."""
    dat = directory / header.signals[0].file_name
    n_sig = header.n_sig
    if header.n_samples is None:
        if not dat.is_file():
            raise RecordReadError("missing_file", str(dat))
        count, raw = -1, np.fromfile(dat, dtype="<i2")
    else:
        count = header.n_samples * n_sig
        raw = _read_int16_le(dat, count)
        if raw is None:
            raise RecordReadError("missing_file", str(dat))
    if (count >= 0 and raw.size < count) or raw.size % n_sig:
        raise RecordReadError("truncated_dat", f"{dat.name}: {raw.size} samples, header needs {count}")
    return _scale(raw.reshape(-1, n_sig).T, header)


def _signal_files(directory: Path, header: Header) -> list[Path]:
    """The signal files a header names, each once, in header order; raises ``missing_file``."""
    paths = [directory / name for name in dict.fromkeys(s.file_name for s in header.signals) if name != NO_FILE]
    for path in paths:
        if not path.is_file():
            raise RecordReadError("missing_file", str(path))
    return paths


def _read_wfdb_generic(directory: Path, header: Header, stem: str) -> np.ndarray:
    """Any other WFDB format through ``wfdb.rdrecord`` → mV; raises ``missing_file`` (as the
    format-16 path does) and ``empty_record`` for signal files without a byte when the header
    gives no length (wfdb: "sampto must be greater than sampfrom")."""
    import wfdb

    files = _signal_files(directory, header)
    if header.n_samples is None and files and all(path.stat().st_size == 0 for path in files):
        raise RecordReadError("empty_record", f"{stem}: signal files {[p.name for p in files]} are empty")
    try:
        rec = wfdb.rdrecord(str(directory / stem), physical=True)
    except FileNotFoundError as exc:  # a file that went away after the check
        raise RecordReadError("missing_file", str(exc.filename or exc)) from exc
    except Exception as exc:  # wfdb raises many types on corrupt files
        raise RecordReadError("wfdb_unreadable", f"{type(exc).__name__}: {exc}") from exc
    return (rec.p_signal.T * header.to_mv[:, None]).astype(np.float32)


def _read_cinc_mat(directory: Path, header: Header) -> np.ndarray:
    """CinC v4 ``.mat`` (``val`` int16 n_sig × N) → mV; raises ``mat_shape_mismatch``."""
    mat = directory / header.signals[0].file_name
    val = _loadmat_key(mat, "val")
    expected = (header.n_sig, header.n_samples if header.n_samples is not None else val.shape[-1])
    if val.ndim != 2 or val.shape != expected:
        raise RecordReadError("mat_shape_mismatch", f"{mat.name}: val {val.shape}, header {expected}")
    return _scale(val, header)


def _loadmat_key(path: Path, key: str) -> np.ndarray:
    """One variable of a ``.mat`` file; raises ``missing_file``/``mat_unreadable``/``mat_no_<key>``."""
    import scipy.io

    if not path.is_file():
        raise RecordReadError("missing_file", str(path))
    try:
        content = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError on damaged files
        raise RecordReadError("mat_unreadable", f"{path.name}: {type(exc).__name__}: {exc}") from exc
    if key not in content:
        raise RecordReadError(f"mat_no_{key.lower()}", f"{path.name}: keys {sorted(content)}")
    return content[key]


def _read_from_header(hea: Path, text: str | None = None) -> Record:
    """A record described by a WFDB header (``text``: its content, if already read): format-16
    fast path, CinC ``.mat`` or wfdb."""
    header = read_header(hea) if text is None else parse_header_text(text)
    directory, stem = hea.parent, hea.name[: -len(".hea")]
    _check_not_empty(hea, header)
    _ = header.to_mv  # a unit that is not a voltage is told before any data is read
    if header.signals and header.signals[0].file_name.lower().endswith(".mat"):
        signal, kind = _read_cinc_mat(directory, header), "cinc_mat"
    elif _is_fast_wfdb16(header):
        signal, kind = _read_wfdb16_fast(directory, header), "wfdb16"
    else:
        signal, kind = _read_wfdb_generic(directory, header, stem), "wfdb"
    return Record(
        record_name=stem, signal=signal, lead_names=header.lead_names, fs=header.fs,
        n_samples=signal.shape[1], comments=header.comments, source_format=kind,
        **parse_comments(header.comments),
    )


def _check_not_empty(hea: Path, header: Header) -> None:
    """Raise ``empty_record`` for a header without signals or with a length of 0 samples (such as
    a multi-segment layout header, whose signals have no files and which wfdb refuses with
    "sampto must be greater than sampfrom")."""
    if header.n_sig == 0:
        raise RecordReadError("empty_record", f"{hea.name}: no signals")
    if header.n_samples == 0:
        layout = all(s.file_name == NO_FILE for s in header.signals)
        kind = " (a multi-segment layout header: its signals have no files)" if layout else ""
        raise RecordReadError("empty_record", f"{hea.name}: 0 samples{kind}")


def read_cpsc2018_mat(mat_path: str | Path) -> Record:
    """Original CPSC2018 release ``.mat`` (struct ``ECG``: sex, age, data 12 × N in mV, 500 Hz)."""
    path = Path(mat_path)
    ecg = _loadmat_key(path, "ECG")
    try:
        data = np.asarray(ecg["data"][0, 0], dtype=np.float32)
        sex, age = ecg["sex"][0, 0], ecg["age"][0, 0]
    except (ValueError, IndexError, KeyError) as exc:
        raise RecordReadError("mat_bad_struct", f"{path.name}: {exc}") from exc
    if data.ndim != 2 or data.shape[0] != 12:
        raise RecordReadError("mat_shape_mismatch", f"{path.name}: ECG.data {data.shape}")
    return Record(
        record_name=path.stem, signal=np.ascontiguousarray(data), lead_names=list(CPSC2018_LEADS),
        fs=CPSC2018_FS, n_samples=data.shape[1], age=_parse_age(age), sex=_parse_sex(sex),
        source_format="cpsc2018_mat",
    )


def read_sph_h5(h5_path: str | Path) -> Record:
    """SPH HDF5 (dataset ``ecg``, 12 × N, 500 Hz, mV, canonical order)."""
    import h5py

    path = Path(h5_path)
    if not path.is_file():
        raise RecordReadError("missing_file", str(path))
    try:
        with h5py.File(path, "r") as handle:
            data = np.asarray(handle["ecg"][()], dtype=np.float32)
    except (OSError, KeyError) as exc:
        raise RecordReadError("h5_unreadable", f"{path.name}: {exc}") from exc
    if data.ndim != 2 or data.shape[0] != 12:
        raise RecordReadError("h5_shape_mismatch", f"{path.name}: ecg {data.shape}")
    return Record(
        record_name=path.stem, signal=data, lead_names=list(CANONICAL_LEADS), fs=SPH_FS,
        n_samples=data.shape[1], source_format="sph_h5",
    )


def _with_suffix(path: Path, suffix: str) -> Path:
    """``path`` + suffix without treating dots in the record name as an extension."""
    return path.with_name(path.name + suffix)


def read_record(path: str | Path) -> Record:
    """Read any supported record from its header path, data path or extension-less record path.

    Raises :class:`RecordReadError`: ``missing_file`` where no such record exists,
    ``format_unsupported`` for an existing file of an extension read here by no reader (``.edf``),
    ``empty_record`` for a record of zero samples, and the readers' reasons.
    """
    record = _read_any(Path(path))
    if record.signal.shape[-1] == 0:
        raise RecordReadError("empty_record", f"{path}: 0 samples")
    return record


def _read_any(path: Path) -> Record:
    """:func:`read_record` before the check for zero samples."""
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return read_sph_h5(path)
    if suffix in (".hea", ".dat", ".mat"):
        base = path.with_suffix("")
        if suffix == ".hea" or _with_suffix(base, ".hea").is_file():
            return _read_from_header(_with_suffix(base, ".hea"))
        if suffix == ".mat":
            return read_cpsc2018_mat(path)
        raise RecordReadError("missing_file", f"no header for {path}")
    hea = _with_suffix(path, ".hea")
    text = _read_regular_text(hea)  # the usual case: read the header instead of testing for it first
    if text is not None:
        return _read_from_header(hea, text)
    for ext, reader in ((".mat", read_cpsc2018_mat), (".h5", read_sph_h5)):
        candidate = _with_suffix(path, ext)
        if candidate.is_file():
            return reader(candidate)
    if path.is_file():
        extension = repr(path.suffix) if path.suffix else "no extension"
        raise RecordReadError(
            "format_unsupported",
            f"{path}: {extension} is not read (WFDB .hea/.dat, CinC or CPSC2018 .mat, SPH .h5/.hdf5 are)")
    raise RecordReadError("missing_file", str(path))


# --------------------------------------------------------------------------- writers


def _to_adc(signal_mv: np.ndarray, gain: float) -> np.ndarray:
    """mV → int16 ADC: round(mV·gain) clipped to ±32767, NaN/inf → :data:`ADC_NAN`."""
    signal = np.asarray(signal_mv, dtype=np.float64)
    if signal.ndim != 2:
        raise ValueError(f"signal must be (n_leads, n_samples), got {signal.shape}")
    finite = np.isfinite(signal)
    adc = np.clip(np.rint(np.where(finite, signal, 0.0) * gain), -32767, 32767).astype(np.int16)
    adc[~finite] = ADC_NAN
    return adc


def _num(value: float) -> str:
    """Compact number text for headers (``1000``, ``4880``, ``257.5``)."""
    return f"{float(value):.10g}"


def _header_text(record_name, adc, lead_names, fs, gain, file_name, fmt, comments) -> str:
    """WFDB header text with init values and 16-bit checksums."""
    n_sig, n = adc.shape
    if len(lead_names) != n_sig:
        raise ValueError(f"{len(lead_names)} lead names for {n_sig} signals")
    sums = adc.sum(axis=1, dtype=np.int64)
    checksums = ((sums + 32768) % 65536) - 32768
    inits = adc[:, 0] if n else np.zeros(n_sig, dtype=np.int16)
    lines = [f"{record_name} {n_sig} {_num(fs)} {n}"]
    lines += [
        f"{file_name} {fmt} {_num(gain)}/mV 16 0 {int(inits[i])} {int(checksums[i])} 0 {lead_names[i]}"
        for i in range(n_sig)
    ]
    lines += ["#" + c.lstrip("#") if c.startswith("#") else f"#{c}" for c in comments]
    return "\n".join(lines) + "\n"


def write_wfdb16(directory, record_name, signal_mv, lead_names, fs, gain=1000.0, comments=()) -> Path:
    """Write ``record_name.hea`` + format-16 ``record_name.dat``; returns the header path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    adc = _to_adc(signal_mv, gain)
    adc.T.astype("<i2").tofile(directory / f"{record_name}.dat")
    hea = directory / f"{record_name}.hea"
    hea.write_text(_header_text(record_name, adc, lead_names, fs, gain, f"{record_name}.dat", "16", comments))
    return hea


def write_cinc_mat(directory, record_name, signal_mv, lead_names, fs, gain=1000.0, comments=()) -> Path:
    """Write CinC-form ``record_name.hea`` (``16+24``) + MATLAB v4 ``record_name.mat``; returns the header path."""
    import scipy.io

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    adc = _to_adc(signal_mv, gain)
    scipy.io.savemat(str(directory / f"{record_name}.mat"), {"val": adc}, format="4")
    hea = directory / f"{record_name}.hea"
    hea.write_text(_header_text(record_name, adc, lead_names, fs, gain, f"{record_name}.mat", "16+24", comments))
    return hea
