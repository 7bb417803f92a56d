"""Throughput and memory of the preprocess stage against the loop a researcher writes today.

    python benchmarks/preprocess_throughput.py [--records 2000] [--scale 10] [--repeat 5] [--workdir DIR]
                                               [--signal-compression CODEC] [--profile]

Writes ``records * scale`` synthetic 500 Hz, 12-lead, 10-s MIMIC-IV-ECG-style records (WFDB
format 16, leads in MIMIC order I, II, III, aVR, aVF, aVL, V1-V6, about 2 % with a NaN run) with
:func:`supreme_ecg.demo.synth.synthesize` and :func:`supreme_ecg.formats.write_wfdb16` into a
``mimic-iv-ecg/files/pNNNN/pNNNNNNNN/sNNNNNNNN/`` tree with ``record_list.csv`` and
``machine_measurements.csv``, builds the manifest with :func:`supreme_ecg.datasets.index_dataset`,
then, each in its own child process with one thread (OMP/OPENBLAS/MKL threads = 1):

* ``ours``: :func:`supreme_ecg.preprocess.preprocess_shard` over the first ``records`` rows (one shard);
* ``baseline``: a loop of ``wfdb.rdsamp`` + numpy (reorder leads by name, NaN -> 0,
  ``scipy.signal.resample`` when fs differs, crop/pad, one global min-max) + ``np.save`` per record,
  over the same records;
* ``ours`` again over all ``records * scale`` rows, to show that peak memory stays flat.

Each child times its own loop (imports excluded): wall seconds and CPU seconds (user + system,
all threads, from ``getrusage(RUSAGE_SELF)``). The per-core rate is records per CPU second of the
single-threaded run, which other load on the machine moves less than wall time; the wall-clock
rate is printed beside it. The two N-record measurements run ``--repeat`` times, interleaved, and
the best run of each counts (on a shared machine the CPU time of identical runs varies by ±20 %).
Peak RSS is the child's ``VmHWM`` (``/proc/self/status``): ``ru_maxrss`` of a child started from a
large parent (``RUSAGE_CHILDREN``, ``os.wait4``) carries the parent's pages over the vfork/exec,
``VmHWM`` belongs to the child's own address space. The last line is

    records_per_s_core=R baseline_records_per_s_core=B ratio=R/B peak_rss_mb=M

where ``M`` is the peak RSS of ``ours`` at the largest record count. ``--profile`` also prints the
top of a cProfile of ``ours`` over the first ``records`` rows. The synthetic records stand in for
MIMIC-IV-ECG (same layout, format, rate, length and lead order), so the figures indicate, not
measure, what the real 800k records need.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from supreme_ecg.leads import CANONICAL_LEADS, MIMIC_LEAD_ORDER  # noqa: E402

FS = 500
N_SAMPLES = 5000
SUBJECT0, STUDY0 = 10_000_000, 40_000_000
BATCH = 256
NAN_SHARE = 0.02
MIMIC_ROWS = [CANONICAL_LEADS.index(name) for name in MIMIC_LEAD_ORDER]


# --------------------------------------------------------------------------- data


def _knobs(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Varied rhythms, conduction, axes, ST shifts and noise, so records are not all alike."""
    return {
        "hr_bpm": rng.uniform(45, 130, n),
        "rhythm": rng.choice([0, 0, 0, 0, 1, 2, 3, 4], n).astype(float),
        "conduction": rng.choice([0, 0, 0, 1, 2, 3, 4], n).astype(float),
        "qrs_axis_deg": rng.uniform(-40, 100, n),
        "qrs_scale": rng.uniform(0.6, 1.6, n),
        "st_mv": rng.normal(0, 0.05, n),
        "st_region": rng.integers(0, 3, n).astype(float),
        "pvc_rate": rng.choice([0.0, 0.0, 0.05], n),
        "baseline_wander_mv": rng.uniform(0, 0.15, n),
        "mains_mv": rng.uniform(0, 0.03, n),
        "emg_mv": rng.uniform(0.005, 0.03, n),
    }


def _ids(i: int) -> tuple[int, int]:
    """(subject_id, study_id) of record ``i`` (about three studies per subject)."""
    return SUBJECT0 + i // 3, STUDY0 + i


def _rel_path(subject: int, study: int) -> str:
    """MIMIC-IV-ECG path of a record (without extension), relative to the set folder."""
    return f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"


def write_corpus(data_root: Path, n: int, seed: int = 0) -> float:
    """Write ``n`` records + the two MIMIC tables under ``data_root/mimic-iv-ecg``; returns seconds."""
    from supreme_ecg import formats
    from supreme_ecg.demo.synth import synthesize

    start = time.perf_counter()
    set_root = data_root / "mimic-iv-ecg"
    rng = np.random.default_rng(seed)
    rows = []
    for first in range(0, n, BATCH):
        m = min(BATCH, n - first)
        signals = synthesize(_knobs(m, rng), rng, fs=FS, n_samples=N_SAMPLES)[:, MIMIC_ROWS]
        for k in range(m):
            i = first + k
            subject, study = _ids(i)
            signal = signals[k]
            if rng.random() < NAN_SHARE:  # MIMIC records contain NaN runs
                lead, at = int(rng.integers(12)), int(rng.integers(0, N_SAMPLES - 200))
                signal[lead, at : at + int(rng.integers(5, 200))] = np.nan
            rel = _rel_path(subject, study)
            formats.write_wfdb16(set_root / Path(rel).parent, str(study), signal, list(MIMIC_LEAD_ORDER), FS)
            rows.append((subject, study, rel))
    subjects, studies, paths = zip(*rows)
    pd.DataFrame({"subject_id": subjects, "study_id": studies, "file_name": studies,
                  "ecg_time": "2180-01-01 00:00:00", "path": paths}).to_csv(set_root / "record_list.csv", index=False)
    reports = {f"report_{k}": [None] * n for k in range(18)}
    reports["report_0"] = ["Sinus rhythm"] * n
    reports["report_1"] = ["Normal ECG"] * n
    pd.DataFrame({"subject_id": subjects, "study_id": studies, "cart_id": 6001,
                  "ecg_time": "2180-01-01 00:00:00", **reports}).to_csv(set_root / "machine_measurements.csv", index=False)
    return time.perf_counter() - start


def build_manifests(data_root: Path, workdir: Path, counts: list[int]) -> dict[int, Path]:
    """The project's MIMIC manifest (``index_dataset``), and its first ``c`` rows for each count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from supreme_ecg.datasets import index_dataset

    manifest = index_dataset("mimic", data_root)
    table = pa.Table.from_pandas(manifest, preserve_index=False)
    paths = {}
    for count in counts:
        paths[count] = workdir / f"manifest-{count}.parquet"
        pq.write_table(table.slice(0, count), paths[count])
    return paths


# --------------------------------------------------------------------------- the two pipelines (child side)


class _Timer:
    """Wall and CPU (user + system, all threads) seconds of a block."""

    def __enter__(self) -> _Timer:
        self.user0, self.sys0 = self._cpu()
        self.wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        user, system = self._cpu()
        self.wall_s = time.perf_counter() - self.wall0
        self.user_s, self.sys_s = user - self.user0, system - self.sys0
        self.cpu_s = self.user_s + self.sys_s

    @staticmethod
    def _cpu() -> tuple[float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime, usage.ru_stime


def run_ours(manifest: Path, data_root: Path, out_dir: Path) -> dict:
    """``preprocess_shard`` over the whole manifest as one shard (``$BENCH_SIGNAL_COMPRESSION``: codec)."""
    from supreme_ecg.preprocess import PreprocessConfig, preprocess_shard

    codec = os.environ.get("BENCH_SIGNAL_COMPRESSION")
    kwargs = {"signal_compression": codec} if codec else {}
    with _Timer() as timer:
        summary = preprocess_shard(manifest, 0, 1, PreprocessConfig(), out_dir / "shard.parquet",
                                   out_dir / "rejects.parquet", root=data_root, **kwargs)
    size = (out_dir / "shard.parquet").stat().st_size
    return {"n": summary["n_input"], "n_written": summary["n_written"], "wall_s": timer.wall_s, "cpu_s": timer.cpu_s,
            "sys_s": timer.sys_s, "kb_per_record": size / 1024 / max(summary["n_written"], 1)}


def run_baseline(manifest: Path, data_root: Path, out_dir: Path) -> dict:
    """What a researcher writes today: rdsamp + numpy + np.save, one file per record."""
    import pyarrow.parquet as pq
    import scipy.signal
    import wfdb

    paths = pq.read_table(manifest, columns=["source_path"]).column("source_path").to_pylist()
    canon = [name.upper() for name in CANONICAL_LEADS]
    with _Timer() as timer:
        _baseline_loop(paths, data_root, out_dir, canon, scipy.signal, wfdb)
    kb = sum(path.stat().st_size for path in out_dir.glob("*.npy")) / 1024 / max(len(paths), 1)
    return {"n": len(paths), "n_written": len(paths), "wall_s": timer.wall_s, "cpu_s": timer.cpu_s,
            "sys_s": timer.sys_s, "kb_per_record": kb}


def _baseline_loop(paths, data_root, out_dir, canon, signal_mod, wfdb) -> None:
    """The loop itself (``signal_mod`` is ``scipy.signal``)."""
    for k, rel in enumerate(paths):
        signal, meta = wfdb.rdsamp(str(data_root / rel))  # (n, 12) float64, NaN for invalid samples
        names = [name.upper() for name in meta["sig_name"]]
        signal = signal.T[[names.index(name) for name in canon]]
        signal = np.nan_to_num(signal, nan=0.0)
        if meta["fs"] != FS:
            signal = signal_mod.resample(signal, int(round(signal.shape[1] * FS / meta["fs"])), axis=1)
        signal = signal[:, :N_SAMPLES]
        if signal.shape[1] < N_SAMPLES:
            signal = np.pad(signal, ((0, 0), (0, N_SAMPLES - signal.shape[1])))
        lo, hi = signal.min(), signal.max()
        signal = (signal - lo) / (hi - lo) if hi > lo else np.zeros_like(signal)
        np.save(out_dir / f"{k}.npy", signal.astype(np.float32))


def peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(kind: str, manifest: Path, data_root: Path, out_dir: Path) -> None:
    """Run one pipeline and print its timings and peak RSS as JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"ours": run_ours, "baseline": run_baseline}[kind](manifest, data_root, out_dir)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent side


def run_child(kind: str, manifest: Path, data_root: Path, out_dir: Path) -> dict:
    """One run of a pipeline in a fresh child process (its output folder removed afterwards)."""
    cmd = [sys.executable, __file__, "--child", kind, "--manifest", str(manifest),
           "--data-root", str(data_root), "--out", str(out_dir)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, check=False)
    shutil.rmtree(out_dir, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def summarise(kind: str, runs: list[dict]) -> dict:
    """The best run (least CPU time) of a pipeline, with the largest peak RSS over the runs."""
    best = dict(min(runs, key=lambda r: r["cpu_s"]))
    best.update(kind=kind, runs=len(runs), peak_rss_mb=max(r["peak_rss_mb"] for r in runs),
                rate=best["n"] / best["wall_s"], cpu_rate=best["n"] / best["cpu_s"],
                best_wall_rate=max(r["n"] / r["wall_s"] for r in runs))
    return best


def profile(manifest: Path, data_root: Path, out_dir: Path, top: int = 25) -> None:
    """cProfile of ``ours`` (in this process), top functions by cumulative time."""
    import cProfile
    import pstats

    import supreme_ecg.preprocess  # noqa: F401  (imports outside the profile)

    out_dir.mkdir(parents=True, exist_ok=True)
    prof = cProfile.Profile()
    prof.enable()
    run_ours(manifest, data_root, out_dir)
    prof.disable()
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(top)
    shutil.rmtree(out_dir, ignore_errors=True)


def _line(r: dict) -> str:
    return (f"{r['kind']:<9} n={r['n']:>6}  {r['cpu_rate']:8.1f} records/CPU-s (1 core)  "
            f"{r['best_wall_rate']:8.1f} records/s wall  (best of {r['runs']}: CPU {r['cpu_s']:6.2f} s "
            f"of which kernel {r['sys_s']:5.2f} s, "
            f"wall {r['wall_s']:6.2f} s)  peak RSS {r['peak_rss_mb']:7.1f} MB  output {r.get('kb_per_record', 0):.0f} KB/record")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000, help="N: records of the ours-vs-baseline run")
    parser.add_argument("--scale", type=int, default=10, help="ours also runs at scale*N records (memory check)")
    parser.add_argument("--workdir", type=Path, help="keep data here (default: a temporary folder, removed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each N-record measurement (best counts)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of ours at N")
    parser.add_argument("--signal-compression", help="Parquet codec of ours' signal column (default: the stage's)")
    parser.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.manifest, args.data_root, args.out)
        return 0
    if args.records < 1 or args.scale < 1 or args.repeat < 1:
        parser.error("--records, --scale and --repeat must be positive")
    if args.signal_compression:
        os.environ["BENCH_SIGNAL_COMPRESSION"] = args.signal_compression  # read by the children

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="preprocess_throughput_")
    workdir = Path(args.workdir or tmp.name)
    try:
        data_root = workdir / "data"
        counts = sorted({args.records, args.records * args.scale})
        total = counts[-1]
        record_list = data_root / "mimic-iv-ecg" / "record_list.csv"
        if record_list.is_file() and len(pd.read_csv(record_list, usecols=["study_id"])) >= total:
            print(f"reusing the records under {data_root} (the first {total})")
        else:
            shutil.rmtree(data_root / "mimic-iv-ecg", ignore_errors=True)
            seconds = write_corpus(data_root, total, args.seed)
            print(f"wrote {total} WFDB format-16 records (500 Hz, 12 x 5000) in {seconds:.1f} s under {data_root}")
        os.sync()  # no write-back of the new files during the timed runs
        manifests = build_manifests(data_root, workdir, counts)
        print(f"manifests: {', '.join(f'{c} rows' for c in counts)}; one process, one thread per run")

        if args.profile:
            profile(manifests[args.records], data_root, workdir / "out-profile")
        runs = []
        first: dict[str, list[dict]] = {"ours": [], "baseline": []}
        for _ in range(args.repeat):  # interleaved, so both see the same machine load
            for kind in first:
                first[kind].append(run_child(kind, manifests[args.records], data_root, workdir / f"out-{kind}"))
        for kind in first:
            runs.append(summarise(kind, first[kind]))
            print(_line(runs[-1]), flush=True)
        for count in counts[1:]:
            runs.append(summarise("ours", [run_child("ours", manifests[count], data_root, workdir / "out-ours")]))
            print(_line(runs[-1]), flush=True)
        ours, base = runs[0], runs[1]
        largest = [r for r in runs if r["kind"] == "ours"][-1]
        print("peak RSS of ours by record count: "
              + ", ".join(f"{r['n']}: {r['peak_rss_mb']:.1f} MB" for r in runs if r["kind"] == "ours"))
        print(f"wall-clock ratio (best runs): {ours['best_wall_rate'] / base['best_wall_rate']:.2f}")
        ratio = ours["cpu_rate"] / base["cpu_rate"]
        print(f"records_per_s_core={ours['cpu_rate']:.1f} baseline_records_per_s_core={base['cpu_rate']:.1f} "
              f"ratio={ratio:.2f} peak_rss_mb={largest['peak_rss_mb']:.1f}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
