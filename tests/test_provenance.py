"""results/provenance.json: git version, secrets, checksums, backends, pre-training host, timing; the rule's place."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from supreme_ecg import __version__, provenance
from supreme_ecg.model import save_checkpoint
from supreme_ecg.preprocess import manifest_shard_digests
from supreme_ecg.pretrain.outputs import trained_on
from supreme_ecg.run_report import provenance_section
from supreme_ecg.settings import REPO_ROOT

FINAL = ["results/zeroshot/summary.csv", "results/linear_probe/summary.csv", "results/pretrain/checkpoint.pt",
         "results/extract/label_vocabulary.parquet"]
TRAINED_ON = {"hostname": "gpu-node-7", "device": "cuda:0", "gpu": "NVIDIA H200", "processes": 2,
              "code": {"commit": "fedcba9876543210", "dirty": False}}
CONFIG = {"extract": {"backend": "ollama", "model": "qwen3:8b", "api_key": "sk-LEAK1", "api_key_env": "MY_KEY",
                      "max_tokens": 1024},
          "hub": [{"name": "a", "token": "hf_LEAK2"}], "db": {"password": "LEAK3", "client_secret": "LEAK4"}}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def _benchmark(path: Path, seconds: float, finished: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                    f"{seconds}\t0:00:00\t100.5\t1\t1\t1\t0\t0\t50\t{seconds / 2}\n")
    os.utime(path, (finished, finished))


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A small fake run: data record, manifest with two shards, extraction tables, final outputs, benchmarks."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # tmp_path is no git checkout
    results = tmp_path / "results"
    for folder in ("data", "manifests", "preprocessed/ptbxl", "extract", "zeroshot", "linear_probe", "pretrain"):
        (results / folder).mkdir(parents=True)
    (results / "data/ptbxl.json").write_text(json.dumps({"dataset": "ptbxl", "files": 3, "verified": 3}))
    pd.DataFrame({"record_id": [f"r{i}" for i in range(6)], "report": ["sinus rhythm"] * 6}).to_parquet(
        results / "manifests/ptbxl.parquet")
    for shard in (0, 1):
        (results / f"preprocessed/ptbxl/shard-{shard}-of-2.parquet").touch()
    pd.DataFrame({"backend": ["ollama"] * 3 + ["lexicon"] * 2, "model": ["qwen3:8b"] * 3 + ["open-lexicon-x"] * 2,
                  "prompt_version": ["entity_extraction_v2"] * 3 + ["none"] * 2}).to_parquet(
        results / "extract/entities.parquet")
    pd.DataFrame({"record_id": ["r0", "r1", "r2"], "backend": ["ollama", "ollama", "lexicon"]}).to_parquet(
        results / "extract/records.parquet")
    pd.DataFrame({"label": ["af"]}).to_parquet(results / "extract/label_vocabulary.parquet")
    (results / "zeroshot/summary.csv").write_text("task,macro_auc\nptbxl_super,0.8\n")
    (results / "linear_probe/summary.csv").write_text("task,fraction,macro_auc\nptbxl_super,1.0,0.9\n")
    save_checkpoint(results / "pretrain/checkpoint.pt", {"epoch": 3, "text_encoder": "enc",
                                                         "trained_on": TRAINED_ON, "w": torch.zeros(2)})
    now = time.time()
    _benchmark(tmp_path / "benchmarks/out/pretrain.tsv", 100.0, now - 50)
    _benchmark(tmp_path / "benchmarks/out/zeroshot/ptbxl_super.tsv", 10.0, now - 20)
    return tmp_path


def test_record_traces_inputs_outputs_backends_host_and_times(run_dir):
    record = provenance.collect_provenance(FINAL, CONFIG, repo=run_dir)
    assert record["project"] == {"name": "supreme-ecg", "version": __version__, "git": None}
    for path in FINAL:
        assert record["outputs"][path]["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    data = record["inputs"]["data"]["ptbxl"]
    assert data["sha256"] == hashlib.sha256(Path("results/data/ptbxl.json").read_bytes()).hexdigest()
    assert data["record"]["verified"] == 3
    manifest = record["inputs"]["manifests"]["ptbxl"]
    assert manifest["sha256"] == hashlib.sha256(Path("results/manifests/ptbxl.parquet").read_bytes()).hexdigest()
    assert manifest["rows"] == 6
    assert manifest["shard_digests"] == list(manifest_shard_digests("results/manifests/ptbxl.parquet", 2))
    extraction = record["extraction"]
    assert extraction["produced_by"] == [
        {"backend": "lexicon", "model": "open-lexicon-x", "prompt_version": "none", "n_entities": 2},
        {"backend": "ollama", "model": "qwen3:8b", "prompt_version": "entity_extraction_v2", "n_entities": 3}]
    assert extraction["records_by_backend"] == {"lexicon": 1, "ollama": 2}
    prompt = (REPO_ROOT / "src/supreme_ecg/resources/prompts/entity_extraction_v2.txt").read_bytes()
    assert extraction["prompts"] == {"entity_extraction_v2": {
        "file": "resources/prompts/entity_extraction_v2.txt", "sha256": hashlib.sha256(prompt).hexdigest()}}
    assert extraction["configured"] == {"backend": "ollama", "model": "qwen3:8b"}
    assert record["pretrain"] == {"trained_on": TRAINED_ON, "epochs": 3, "text_encoder": "enc"}
    timing = record["timing"]
    assert timing["jobs"]["pretrain"]["wall_s"] == 100.0 and timing["jobs"]["zeroshot/ptbxl_super"]["cpu_s"] == 5.0
    start = os.stat("benchmarks/out/pretrain.tsv").st_mtime - 100
    assert timing["first_job_start"] == provenance._iso(start) and timing["total_job_wall_s"] == 110.0
    assert record["host"]["cpu_count"] == os.cpu_count()
    assert record["environment"]["packages"]["torch"] == str(torch.__version__)
    assert provenance.package_versions(["no-such-distribution"]) == {"no-such-distribution": None}


def test_secrets_never_reach_the_file(run_dir):
    written = provenance.write_provenance("results/provenance.json", FINAL, CONFIG, repo=run_dir)
    text = Path("results/provenance.json").read_text()
    assert "LEAK" not in text
    assert written["config"] == {"extract": {"backend": "ollama", "model": "qwen3:8b", "api_key_env": "MY_KEY",
                                             "max_tokens": 1024}, "hub": [{"name": "a"}], "db": {}}
    assert json.loads(text)["outputs"] == written["outputs"]


def test_git_commit_and_dirty_flag(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text("results/\n")
    (repo / "Snakefile").write_text("rule all:\n")
    _git(repo, "add", ".gitignore", "Snakefile")
    _git(repo, "commit", "-q", "-m", "first")
    (repo / "results").mkdir()
    (repo / "results/out.csv").write_text("a\n")  # ignored outputs leave the checkout clean
    git = provenance.project_version(repo)["git"]
    assert git == {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": False, "n_changes": 0, "changes": []}
    (repo / "Snakefile").write_text("rule all:\n    input: 'x'\n")
    git = provenance.project_version(repo)["git"]
    assert git["dirty"] and git["changes"] == [" M Snakefile"]


def test_trained_on_names_the_device_the_model_is_on_and_the_code():
    git = provenance.project_version(REPO_ROOT)["git"]
    code = {"commit": git["commit"], "dirty": git["dirty"]} if git else None
    assert trained_on(torch.nn.Linear(2, 2)) == {"hostname": provenance.host()["hostname"], "device": "cpu",
                                                 "processes": 1, "gpu": None, "code": code}


def test_summary_section_names_commit_backend_host_and_link(run_dir):
    record = provenance.collect_provenance(FINAL, CONFIG, repo=run_dir)
    record["project"]["git"] = {"commit": "0123456789abcdef", "dirty": True, "n_changes": 2, "changes": []}
    text = "\n".join(provenance_section(record, "provenance.json"))
    assert "## Provenance" in text and "`0123456789ab` **with uncommitted changes** (2 paths" in text
    assert "`ollama` model `qwen3:8b` prompt `entity_extraction_v2` (3 entities)" in text
    assert "`gpu-node-7`, device `cuda:0` (NVIDIA H200), 2 process(es) with commit `fedcba987654` (clean)" in text
    assert "[provenance.json](provenance.json)" in text and "110 s of job wall time, 2 jobs" in text


def test_provenance_runs_after_the_final_tables_and_before_the_summary(tmp_path):
    from test_workflow import TINY, _snakemake

    shutil.copy(REPO_ROOT / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "tiny.yaml").write_text(TINY)
    proc = _snakemake(tmp_path, "all", "-n")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    blocks = {b.split(":", 1)[0]: b for b in (proc.stdout + proc.stderr).split("rule ")[1:]}
    assert "output: results/provenance.json" in blocks["provenance"]
    assert all(path in blocks["provenance"] for path in FINAL)
    summary_inputs = blocks["results_summary"].split("input: ", 1)[1].splitlines()[0]
    assert "results/provenance.json" in summary_inputs
