"""The whole chain, end to end, through Snakemake on a tiny demo (marked slow: about a minute)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from supreme_ecg.settings import REPO_ROOT

pytestmark = pytest.mark.slow

TINY = """
demo: {n_pretrain: 160, n_ptbxl: 60, n_cpsc: 40, n_csn: 60, seed: 7}
pretrain: {epochs: 2, width: 16, batch_size: 32}
extract: {min_label_count: 3}
preprocess: {shards: {mimic: 2, ptbxl: 1, cpsc2018: 1, csn: 1}}
linear_probe: {percents: [10, 100], seeds: [0, 1]}
evaluation: {n_resamples: 100, n_examples: 1}
"""


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run Snakemake on the project's Snakefile with ``workdir`` as working directory."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1"}
    cmd = [
        os.path.join(bin_dir, "snakemake"), "--snakefile", str(REPO_ROOT / "Snakefile"),
        "--directory", str(workdir), "--cores", "2", *args,
        "--configfile", str(workdir / "config.yaml"), str(workdir / "tiny.yaml"),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    """One full run of ``all`` on the tiny demo."""
    if shutil.which("snakemake", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("snakemake is not installed beside this Python (make install)")
    workdir = tmp_path_factory.mktemp("workflow")
    shutil.copy(REPO_ROOT / "config.yaml", workdir / "config.yaml")
    (workdir / "tiny.yaml").write_text(TINY)
    proc = _snakemake(workdir, "all")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return workdir


def test_all_outputs_written(workflow_run):
    summary = pd.read_csv(workflow_run / "results/zeroshot/summary.csv")
    assert list(summary["task"]) == [
        "ptbxl_super", "ptbxl_sub", "ptbxl_form", "ptbxl_rhythm", "cpsc2018", "csn", "average",
    ]
    assert summary.loc[summary.task != "average", "n_classes"].sum() == 106
    assert (workflow_run / "results/pretrain/checkpoint.pt").exists()
    assert (workflow_run / "results/pretrain/training_curve.png").stat().st_size > 1000
    assert set(summary["splits"]) == {"test"} and summary["random_init_macro_auc"].notna().all()
    for task in summary.task[:-1]:
        for name in ("auc_bars.png", "examples.png", "bootstrap.parquet", "evaluation.json"):
            assert (workflow_run / f"results/zeroshot/{task}/{name}").stat().st_size > 0, (task, name)
        for percent in ("10", "100"):
            per_class = pd.read_parquet(workflow_run / f"results/linear_probe/{task}/{percent}/per_class.parquet")
            assert set(per_class["encoder"]) == {"pretrained", "random_init"}
    probes = pd.read_csv(workflow_run / "results/linear_probe/summary.csv")
    assert sorted(set(probes["fraction"])) == [0.1, 1.0] and len(probes) == 2 * 7
    assert {"task", "fraction", "n_classes", "macro_auc", "ci_low", "ci_high"} <= set(probes.columns)
    text = (workflow_run / "results/summary.md").read_text()
    assert text.startswith("# Results of this run (test split)")
    assert "copied from the papers, NOT measured here" in text and "| csn | random_init |" in text
    assert (workflow_run / "results/plots/overview.png").stat().st_size > 1000


def test_every_record_accounted_for(workflow_run):
    table = pd.read_parquet(workflow_run / "results/records.parquet")
    for dataset in ("mimic", "ptbxl", "cpsc2018", "csn"):
        manifest = pd.read_parquet(workflow_run / f"results/manifests/{dataset}.parquet")
        outcome = pd.read_csv(workflow_run / f"results/preprocessed/{dataset}/summary.csv")
        assert outcome["n_records"].sum() == len(manifest)
        rows = table[table["dataset"] == dataset]
        assert sorted(rows["record_id"]) == sorted(manifest["record_id"].astype(str))
        written = outcome.loc[outcome["outcome"] == "written", "n_records"].sum()
        assert (rows["status"] == "written").sum() == written
        assert rows.loc[rows["status"] == "rejected", "reason"].notna().all()
    rejects = pd.read_parquet(workflow_run / "results/preprocessed/mimic/rejects.parquet")
    assert len(rejects) > 0 and rejects["reason"].str.len().gt(0).all()


def test_second_run_does_nothing(workflow_run):
    proc = _snakemake(workflow_run, "all", "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_rerun_pretrain_only_reruns_downstream(workflow_run):
    proc = _snakemake(workflow_run, "all", "-n", "-R", "pretrain")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    rows = text.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:]
    jobs = {row.split()[0] for row in rows} - {"total"}
    assert jobs == {"pretrain", "random_init_checkpoint", "zeroshot_task", "zeroshot_summary", "example_ecgs",
                    "task_features", "linear_probe", "linear_probe_summary", "provenance", "results_summary",
                    "all"}, jobs


def _add_mimic_record(root: Path) -> str:
    """Copy the first MIMIC-style record under a new study id, as a new PhysioNet release would add it."""
    mimic = root / "data" / "demo" / "mimic-iv-ecg"
    records = pd.read_csv(mimic / "record_list.csv", dtype=str)
    reports = pd.read_csv(mimic / "machine_measurements.csv", dtype=str)
    first = records.iloc[0]
    new_study = "49999999"
    new_path = f"files/p{first.subject_id[:4]}/p{first.subject_id}/s{new_study}/{new_study}"
    (mimic / new_path).parent.mkdir(parents=True)
    header = (mimic / f"{first.path}.hea").read_text().replace(first.study_id, new_study)
    (mimic / f"{new_path}.hea").write_text(header)
    shutil.copy(mimic / f"{first.path}.dat", mimic / f"{new_path}.dat")
    row = first.copy()
    row["study_id"], row["file_name"], row["path"] = new_study, new_study, new_path
    pd.concat([records, row.to_frame().T]).to_csv(mimic / "record_list.csv", index=False)
    report = reports[reports.study_id == first.study_id].assign(study_id=new_study)
    pd.concat([reports, report]).to_csv(mimic / "machine_measurements.csv", index=False)
    return new_study


def test_adding_a_record_redoes_only_its_shard(workflow_run):
    from supreme_ecg.preprocess import shard_of

    new_id = _add_mimic_record(workflow_run)
    target = "results/preprocessed/mimic/summary.csv"
    proc = _snakemake(workflow_run, target, "--forcerun", "index_dataset", "--printshellcmds")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    ran = {line.split("--shard ")[1].split()[0] for line in text.splitlines()
           if "supreme_ecg.cli preprocess " in line and "--shard " in line}
    assert ran == {str(shard_of(new_id, 2))}, text[-3000:]
    manifest = pd.read_parquet(workflow_run / "results/manifests/mimic.parquet")
    assert new_id in set(manifest["record_id"])
    outcome = pd.read_csv(workflow_run / target)
    assert outcome["n_records"].sum() == len(manifest)


def _dry_run_jobs(workdir: Path, extra: str, *targets: str) -> str:
    """Dry run of ``targets`` with ``extra`` YAML on top of the demo config; the planned jobs' text."""
    shutil.copy(REPO_ROOT / "config.yaml", workdir / "config.yaml")
    (workdir / "tiny.yaml").write_text(TINY + extra)
    proc = _snakemake(workdir, *targets, "-n")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_pretrain_corpus_choice_moves_the_extract_and_pretrain_inputs(tmp_path):
    pd.DataFrame({"path": ["ecg/a"], "report": ["sinus rhythm"], "patient_id": ["p"]}).to_csv(
        tmp_path / "mine.csv", index=False)
    text = _dry_run_jobs(tmp_path, f"data: {{pretrain_corpus: manifest, pretrain_manifest: {tmp_path / 'mine.csv'}}}\n",
                         "results/pretrain/checkpoint.pt")
    assert "results/preprocessed/manifest/shard-0-of-1.parquet" in text
    assert "results/manifests/mimic.parquet" not in text and "rule read_in_place" in text
    text = _dry_run_jobs(tmp_path, "data: {pretrain_corpus: ptbxl}\n", "results/pretrain/checkpoint.pt")
    assert "input: results/manifests/ptbxl.parquet" in text and "results/manifests/mimic.parquet" not in text
    text = _dry_run_jobs(tmp_path, "", "results/extract/labels.parquet")
    assert "input: results/manifests/mimic.parquet" in text and "pretrain_corpus.parquet" in text


def test_jobs_run_with_the_python_that_runs_snakemake(tmp_path):
    """`.venv/bin/snakemake` without an activated environment and with only the system's bin folders on
    PATH: a job that needs the project's packages (the demo generator) runs."""
    shutil.copy(REPO_ROOT / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "tiny.yaml").write_text(TINY)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [str(bin_dir / "snakemake"), "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(tmp_path),
         "--cores", "2", "data/demo/demo_truth.parquet",
         "--configfile", str(tmp_path / "config.yaml"), str(tmp_path / "tiny.yaml")],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + (tmp_path / "logs/demo_data.log").read_text()[-2000:]
    assert (tmp_path / "data/demo/demo_truth.parquet").stat().st_size > 0


def test_conda_jobs_import_the_package_from_this_checkout(tmp_path):
    """Under `--sdm conda` the rules' environments do not install the package: the jobs' shell prefix puts
    this checkout's src/ first on PYTHONPATH and leaves PATH (the environment's python) alone. With no
    conda here to build the environments, the prefix is read from Snakemake after it parsed the workflow
    with `--sdm conda`, and run before a Python that lacks the package (the system's, no PYTHONPATH).
    (The README's commands, its `--config extract=...` example among them: test_readme_commands.py.)"""
    shutil.copy(REPO_ROOT / "config.yaml", tmp_path / "config.yaml")
    read_prefix = ("import sys\nfrom snakemake.cli import main\nfrom snakemake.shell import shell\n"
                   "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\nprint(shell._process_prefix)\n")
    proc = subprocess.run([sys.executable, "-c", read_prefix, "--snakefile", str(REPO_ROOT / "Snakefile"),
                           "--directory", str(tmp_path), "--sdm", "conda", "--list-rules"],
                          capture_output=True, text=True, timeout=300)
    prefix = proc.stdout.splitlines()[-1] if proc.stdout else ""
    assert "export PYTHONPATH=" in prefix and str(Path(sys.executable).parent) not in prefix, proc.stderr[-3000:]
    system = {"PATH": "/usr/bin:/bin"}
    python = shutil.which("python3", path=system["PATH"])
    has_package = python and subprocess.run([python, "-c", "import supreme_ecg"], env=system,
                                            capture_output=True).returncode == 0
    if python is None or has_package:
        pytest.skip("no system python3 without the package to stand in for a rule's environment")
    job = subprocess.run(["bash", "-c", f"{prefix}{python} -c 'import supreme_ecg; print(supreme_ecg.__file__)'"],
                         env=system, capture_output=True, text=True, timeout=60)
    assert job.returncode == 0, job.stderr
    assert Path(job.stdout.strip()).resolve() == (REPO_ROOT / "src/supreme_ecg/__init__.py").resolve()


def test_snakefiles_are_lint_and_snakefmt_clean():
    """`make lint`'s Snakemake checks, so that CI catches a rule that drifts."""
    bin_dir = Path(sys.executable).parent
    fmt = subprocess.run([str(bin_dir / "snakefmt"), "--check", "Snakefile", "workflow/rules"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert fmt.returncode == 0, fmt.stderr[-2000:]
    lint = subprocess.run([str(bin_dir / "snakemake"), "--lint"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, (lint.stdout + lint.stderr)[-3000:]
