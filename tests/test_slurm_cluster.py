"""The tiny demo as SLURM jobs through `profiles/slurm` (tests/slurm/demo.sh, the script of `make
slurm-demo`), compared with the same demo run locally. Needs a SLURM cluster with accounting that this
user may submit to: CI starts one on the machine (`tests/slurm/cluster.sh start`); elsewhere the tests
are skipped with the reason."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from supreme_ecg.settings import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

sys.path.insert(0, str(REPO_ROOT / "tests" / "slurm"))
from compare_runs import TABLES  # noqa: E402  (tests/slurm is no package)

TINY = """
demo: {n_pretrain: 160, n_ptbxl: 60, n_cpsc: 40, n_csn: 60, seed: 7}
pretrain: {epochs: 2, width: 16, batch_size: 32}
extract: {min_label_count: 3}
preprocess: {shards: {mimic: 2, ptbxl: 1, cpsc2018: 1, csn: 1}}
linear_probe: {percents: [100], seeds: [0]}
evaluation: {n_resamples: 50, n_examples: 1}
"""


def _cluster_reason() -> str | None:
    """Why the tests cannot run here, or None."""
    if shutil.which("sinfo") is None or shutil.which("sacct") is None:
        return "no SLURM client commands (start the test cluster: tests/slurm/cluster.sh start)"
    for cmd in (["sinfo", "-h"], ["sacct", "-n", "-X", "--starttime=now"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[:200]} (tests/slurm/cluster.sh start)"
    return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(local workdir, SLURM workdir, demo.sh stdout, its stderr: Snakemake's log): the tiny demo both ways."""
    reason = _cluster_reason()
    if reason:
        pytest.skip(reason)
    configs = tmp_path_factory.mktemp("configs")
    (configs / "tiny.yaml").write_text(TINY)
    config_files = [str(REPO_ROOT / "config.yaml"), str(configs / "tiny.yaml")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    local = tmp_path_factory.mktemp("local")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO_ROOT / "Snakefile"),
                           "--directory", str(local), "--cores", "2", "all", "--configfile", *config_files],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    slurm = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(["bash", str(REPO_ROOT / "tests/slurm/demo.sh")], capture_output=True, text=True,
                          timeout=1500, env={**env, "PYTHON": sys.executable, "SLURM_DEMO_DIR": str(slurm),
                                             "SLURM_DEMO_CONFIGS": " ".join(config_files),
                                             "SLURM_DEMO_COMPARE": str(local / "results")})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return local, slurm, proc.stdout, proc.stderr


def test_every_job_ran_as_a_slurm_job_and_sacct_lists_it(runs):
    _, _, out, log = runs
    jobs = out.split("== SLURM jobs of this run (sacct) ==")[1]
    rules = re.findall(r"\brule_(\w+?)(?:_wildcards_\S+)?\s", jobs)
    for rule in ("demo_data", "preprocess_shard", "extract_entities", "pretrain", "zeroshot_task", "linear_probe",
                 "provenance", "results_summary"):
        assert rule in rules, (rule, jobs[:3000])
    states = re.findall(r"\b(COMPLETED|FAILED|CANCELLED\S*|TIMEOUT|OUT_OF_MEMORY)\b", jobs)
    assert states and set(states) == {"COMPLETED"}, jobs[:3000]
    # one SLURM job per job Snakemake submitted (the target rule `all` runs locally)
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    assert len(states) == len(submitted) == len(set(submitted)), (len(states), len(submitted))


def test_summaries_equal_the_local_run(runs):
    local, slurm, out, _ = runs
    for table in TABLES:
        assert f"{table}: EQUAL" in out, out[-2000:]
        assert (slurm / "results" / table).read_bytes() == (local / "results" / table).read_bytes()
