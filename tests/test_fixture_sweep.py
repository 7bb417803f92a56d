"""Every real fixture record through the preprocess stage (default config): accepted or rejected with a reason.

Real records: PTB-XL ``records100`` and ``records500`` (WFDB), every ``cinc2020`` subfolder (CinC
``.hea`` + ``.mat``) and the SPH HDF5 files, read in place from ``settings.fixtures_dir()`` (skipped
with the reason when absent). Each record either comes out as a float32 (12, 5000) array, finite,
min–max normalised to exactly [0, 1], with its canonical leads taken from the leads of that *name*
(``lead_sources[4].upper() == "AVL"``), or raises ``RecordRejected`` with a reason. The outcome of
every record is listed (``pytest -s`` prints the table; a failure message names the records).

Expected outcomes: every record passes except the ones in :data:`EXPECTED_REJECTS`, three
Chapman-Ningbo records whose precordial leads are all zeros in the source file (checked below
with an independent reader), which the flat-lead check rejects.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from supreme_ecg import formats
from supreme_ecg import preprocess as pp
from supreme_ecg.leads import CANONICAL_LEADS
from supreme_ecg.settings import fixtures_dir

pytestmark = pytest.mark.fixtures
FIXTURES = fixtures_dir()
CFG = pp.PreprocessConfig()
#: Records whose source file holds all-zero leads: rejected on purpose (reason, leads that are zero).
EXPECTED_REJECTS = {
    "cinc2020/chapman_ningbo/JS45542": ("flat_lead", ("V1", "V2", "V3", "V4", "V5", "V6")),
    "cinc2020/chapman_ningbo/JS45544": ("flat_lead", ("V2", "V3", "V4", "V5", "V6")),
    "cinc2020/chapman_ningbo/JS45551": ("flat_lead", ("V4", "V5", "V6")),
}
RECORD_DATA_SUFFIXES = (".hea", ".mat", ".dat", ".h5")


def _groups() -> list[str]:
    """Fixture folders swept, relative to the fixtures root (the CinC subfolders as found)."""
    groups = ["ptbxl/records100", "ptbxl/records500"]
    cinc = FIXTURES / "cinc2020"
    if cinc.is_dir():
        groups += [f"cinc2020/{p.name}" for p in sorted(cinc.iterdir()) if p.is_dir()]
    return groups


def _record_files(group: str) -> list[Path]:
    """One path per record: its ``.hea`` (WFDB/CinC) or its ``.h5`` (SPH)."""
    folder = FIXTURES / group
    return sorted(p for p in folder.rglob("*") if p.suffix in (".hea", ".h5"))


def _key(path: Path) -> str:
    """Record key: path relative to the fixtures root, without extension."""
    return path.relative_to(FIXTURES).with_suffix("").as_posix()


def _outcome(path: Path) -> tuple[str, object, object]:
    """("ok", signal, info) or ("rejected", reason, detail) — anything else propagates."""
    try:
        record = formats.read_record(path)
    except formats.RecordReadError as exc:
        return "rejected", exc.reason, exc.detail
    try:
        signal, info = pp.preprocess_record(record, CFG)
    except pp.RecordRejected as exc:
        return "rejected", exc.reason, exc.detail
    return "ok", signal, info


def _problems_of_accepted(signal: np.ndarray, info: dict) -> list[str]:
    """What is wrong with an accepted record's output (empty when nothing)."""
    problems = []
    if signal.shape != (12, CFG.n_samples) or signal.dtype != np.float32 or not signal.flags.c_contiguous:
        problems.append(f"array {signal.shape} {signal.dtype}")
    elif not np.isfinite(signal).all():
        problems.append("non-finite values")
    elif signal.min() != 0 or signal.max() != 1:
        problems.append(f"range [{signal.min()}, {signal.max()}] is not min-max [0, 1]")
    sources = [str(s).upper() for s in info["lead_sources"]]
    if sources != [name.upper() for name in CANONICAL_LEADS]:
        problems.append(f"lead sources {info['lead_sources']}")
    if info["derived_leads"]:
        problems.append(f"derived leads {info['derived_leads']} (the files carry all 12)")
    return problems


@pytest.fixture(scope="module")
def fixtures_root() -> Path:
    if not (FIXTURES / "ptbxl").is_dir() or not (FIXTURES / "cinc2020").is_dir():
        pytest.skip(f"real ECG fixtures not found at {FIXTURES} (set SUPREME_FIXTURES)")
    return FIXTURES


@pytest.mark.parametrize("group", _groups())
def test_every_fixture_record_passes_or_is_rejected_with_a_reason(fixtures_root, group):
    files = _record_files(group)
    assert files, f"no records found under {fixtures_root / group}"
    # nothing lost before the sweep: every data file belongs to a swept record
    swept = {_key(p) for p in files}
    data_files = [p for p in (fixtures_root / group).rglob("*") if p.suffix in RECORD_DATA_SUFFIXES]
    assert {_key(p) for p in data_files} == swept

    lines, failures = [], []
    for path in files:
        key = _key(path)
        status, first, second = _outcome(path)
        expected = EXPECTED_REJECTS.get(key)
        if status == "ok":
            problems = _problems_of_accepted(first, second)
            lines.append(f"{key}: ok (fs {second['original_fs']:g}, {second['original_n_samples']} samples, "
                         f"{second['n_nonfinite_repaired']} repaired)")
            if problems:
                failures.append(f"{key}: accepted but {'; '.join(problems)}")
            if expected:
                failures.append(f"{key}: accepted, expected rejection {expected[0]}")
        else:
            lines.append(f"{key}: rejected {first}: {second}")
            if not first:
                failures.append(f"{key}: rejected without a reason")
            if expected is None or expected[0] != first:
                failures.append(f"{key}: rejected {first} ({second}), expected to pass")
    print(f"\n{group}: {len(files)} records\n  " + "\n  ".join(lines))
    assert len(lines) == len(files)  # one outcome per record
    assert not failures, "\n".join(failures)


def test_expected_rejects_hold_all_zero_leads(fixtures_root):
    """The rejected Chapman records really carry all-zero leads (read with scipy, not our reader)."""
    import scipy.io

    for key, (reason, zero_leads) in EXPECTED_REJECTS.items():
        mat = fixtures_root / f"{key}.mat"
        if not mat.is_file():
            pytest.skip(f"{mat} absent")
        val = scipy.io.loadmat(str(mat))["val"]
        names = [line.split()[-1] for line in (fixtures_root / f"{key}.hea").read_text().splitlines()[1:13]]
        zero = tuple(name for name, row in zip(names, val) if not np.any(row))
        assert zero == zero_leads, key
        assert reason == "flat_lead"


def test_fixture_sweep_through_preprocess_shard_accounts_for_every_record(fixtures_root, tmp_path):
    """The shard stage on all fixture records: written + rejected = all, with the same outcomes."""
    files = [p for group in _groups() for p in _record_files(group)]
    keys = [_key(p) for p in files]
    manifest = pd.DataFrame({
        "record_id": keys,
        "dataset": [k.split("/")[0] + "/" + k.split("/")[1] for k in keys],
        "source_path": [p.relative_to(fixtures_root).as_posix() for p in files],
    })
    manifest_path = tmp_path / "manifest.parquet"
    manifest.to_parquet(manifest_path)
    out, rejects = tmp_path / "shard.parquet", tmp_path / "rejects.parquet"
    counts = pp.preprocess_shard(manifest_path, 0, 1, CFG, out, rejects, root=fixtures_root, row_group_size=64)
    written = pq.read_table(out, columns=["record_id"]).column("record_id").to_pylist()
    rejected = pd.read_parquet(rejects)
    assert counts["n_input"] == len(files) == counts["n_written"] + counts["n_rejected"]
    assert sorted(written + rejected["record_id"].tolist()) == sorted(keys)
    assert dict(zip(rejected["record_id"], rejected["reason"])) == {k: r for k, (r, _) in EXPECTED_REJECTS.items()}
    assert Counter(rejected["reason"]) == Counter(counts["reasons"])
    signals = pp.read_signals(out)
    assert signals.shape == (len(written), 12, CFG.n_samples) and np.isfinite(signals).all()
    assert (signals.min(axis=(1, 2)) == 0).all() and (signals.max(axis=(1, 2)) == 1).all()
    # the shard holds exactly what preprocess_record returns for each record
    by_key = dict(zip(keys, files))
    for i in range(0, len(written), 97):
        status, signal, _ = _outcome(by_key[written[i]])
        assert status == "ok" and np.array_equal(signals[i], signal)

