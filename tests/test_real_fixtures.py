"""``configs/real-fixtures.yaml``: the whole chain on the real records of ../shared, read in place.

Pre-training on PTB-XL folds 1–8 (fold 9 validates) with their real reports; zero-shot on PTB-XL
fold 10, CPSC2018, Chapman/Ningbo (CSN) and Georgia (a user task labelled by SNOMED codes). The
end-to-end run is marked slow (a few minutes on 2 cores); the dry run is quick. Both skip with a
reason when the fixtures are absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from supreme_ecg.settings import REPO_ROOT, fixtures_dir

FIXTURES = fixtures_dir()
CONFIG = REPO_ROOT / "configs" / "real-fixtures.yaml"
DATASETS = ("ptbxl", "cpsc2018", "csn", "georgia")
TASKS = ("ptbxl_super", "ptbxl_sub", "ptbxl_form", "ptbxl_rhythm", "cpsc2018", "csn", "georgia")

pytestmark = [
    pytest.mark.skipif(
        not (FIXTURES / "ptbxl" / "ptbxl_database.csv").is_file() or not (FIXTURES / "cinc2020").is_dir(),
        reason=f"real ECG fixtures not found at {FIXTURES} (set SUPREME_FIXTURES)",
    ),
    pytest.mark.skipif(
        shutil.which("snakemake", path=str(Path(sys.executable).parent)) is None,
        reason="snakemake is not installed beside this Python (make install)",
    ),
]


def _snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Snakemake on the project's Snakefile, ``workdir`` as working directory, the fixtures by env."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1",
           "SUPREME_FIXTURES": str(FIXTURES)}
    cmd = [
        os.path.join(bin_dir, "snakemake"), "--snakefile", str(REPO_ROOT / "Snakefile"),
        "--directory", str(workdir), "--cores", "2", *args,
        "--configfile", str(workdir / "config.yaml"), str(CONFIG),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _workdir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("real_fixtures")
    shutil.copy(REPO_ROOT / "config.yaml", workdir / "config.yaml")
    return workdir


def test_dry_run_plans_the_chain_on_the_fixtures(tmp_path_factory):
    workdir = _workdir(tmp_path_factory)
    proc = _snakemake(workdir, "all", "-n", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    rows = text.split("Job stats:")[1].split("\n\n")[0].splitlines()[2:]
    jobs = {row.split()[0]: int(row.split()[1]) for row in rows if row.split()[-1:] and row.split()[-1].isdigit()}
    assert jobs["read_in_place"] == 4 and jobs["index_dataset"] == 4 and "fetch_dataset" not in jobs
    assert jobs["task_labels"] == 7 and jobs["zeroshot_task"] == 7 and jobs["pretrain_corpus"] == 1
    assert jobs["task_features"] == 7 and jobs["linear_probe"] == 21 and jobs["random_init_checkpoint"] == 1
    assert "demo_data" not in jobs and "results/manifests/mimic.parquet" not in text
    assert "input: results/manifests/pretrain_corpus.parquet" in text
    assert not list(workdir.glob("data")), "the fixtures are read in place, never copied"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One full run of ``all`` with configs/real-fixtures.yaml."""
    workdir = _workdir(tmp_path_factory)
    proc = _snakemake(workdir, "all")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return workdir


@pytest.mark.slow
def test_outputs_exist_and_say_the_data_was_not_verified(run):
    summary = pd.read_csv(run / "results/zeroshot/summary.csv")
    assert list(summary["task"]) == [*TASKS, "average"]
    for task in TASKS:
        per_class = pd.read_parquet(run / f"results/zeroshot/{task}/per_class.parquet")
        assert len(per_class) and "n_pos" in per_class
        assert (run / f"results/zeroshot/{task}/auc_bars.png").is_file()
    assert (run / "results/pretrain/checkpoint.pt").is_file()
    assert (run / "results/extract/label_vocabulary.parquet").is_file()
    for dataset in DATASETS:
        report = json.loads((run / f"results/data/{dataset}.json").read_text())
        assert report["verified"] == 0 and report["checksums_checked"] is False
        assert report["dest"].startswith(str(FIXTURES.resolve()))
    assert not (run / "data").exists(), "nothing is copied out of the fixtures"


@pytest.mark.slow
def test_probes_run_where_a_task_has_train_and_val_and_say_why_not_elsewhere(run):
    probes = pd.read_csv(run / "results/linear_probe/summary.csv")
    full = probes[probes["fraction"] == 1.0].set_index("task")
    for task in ("ptbxl_super", "ptbxl_sub", "ptbxl_form", "ptbxl_rhythm"):  # folds 1-8 / 9 / 10
        assert full.loc[task, "status"] == "ok" and full.loc[task, "n_test"] > 0, task
        assert not pd.isna(full.loc[task, "macro_auc"]) and not pd.isna(full.loc[task, "random_init_macro_auc"])
    for task in ("cpsc2018", "csn", "georgia"):  # split policy all_test: nothing to train a head on
        assert "no train/val records" in full.loc[task, "status"], task
    summary = pd.read_csv(run / "results/zeroshot/summary.csv")
    assert set(summary["splits"]) == {"test"}


@pytest.mark.slow
def test_every_record_is_accounted_for(run):
    table = pd.read_parquet(run / "results/records.parquet")
    for dataset in DATASETS:
        manifest = pd.read_parquet(run / f"results/manifests/{dataset}.parquet")
        outcome = pd.read_csv(run / f"results/preprocessed/{dataset}/summary.csv")
        assert outcome["n_records"].sum() == len(manifest)
        rows = table[table["dataset"] == dataset]
        assert sorted(rows["record_id"]) == sorted(manifest["record_id"].astype(str))
        assert rows.loc[rows["status"] == "rejected", "reason"].notna().all()
    ptbxl = pd.read_parquet(run / "results/manifests/ptbxl.parquet")
    assert len(ptbxl) == len(pd.read_csv(FIXTURES / "ptbxl" / "ptbxl_database.csv"))
    corpus = pd.read_parquet(run / "results/manifests/pretrain_corpus.parquet")
    assert set(corpus["strat_fold"]) == set(range(1, 10))
    assert (corpus["pretrain_split"] == "val").sum() == (ptbxl["strat_fold"] == 9).sum()
    extracted = pd.read_parquet(run / "results/extract/records.parquet")
    assert sorted(extracted["record_id"]) == sorted(corpus["record_id"])
    for task in TASKS:
        labels = pd.read_parquet(run / f"results/labels/{task}.parquet")
        scores = pd.read_parquet(run / f"results/zeroshot/{task}/scores.parquet")
        assert set(scores["record_id"]) <= set(labels["record_id"])
        if task.startswith("ptbxl"):
            test_ids = set(labels.loc[labels["split"] == "test", "record_id"])
            assert test_ids.isdisjoint(corpus["record_id"]), "fold 10 never pre-trains"
        else:
            assert (labels["split"] == "test").all()
            written = table[table["dataset"] == task]  # these tasks are named after their sets
            assert set(scores["record_id"]) == set(written.loc[written["status"] == "written", "record_id"])


@pytest.mark.slow
def test_second_run_does_nothing(run):
    proc = _snakemake(run, "all", "-n", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr
