"""The run's headline results: ``results/summary.md`` and the figures that sit beside the tables.

* :func:`write_results_summary` — zero-shot and linear-probe macro AUCs (with intervals) of the
  pre-trained encoder and its random-init baseline per task, and the published figures beside them,
  marked as copied from the papers (``resources/published.yaml``), and the run's provenance
  (:func:`provenance_section`, from ``results/provenance.json``);
* :func:`overview_rows` — the rows of the zero-shot vs probe vs baseline chart;
* :func:`write_example_ecgs` — a figure of a few test ECGs with their true classes and top queries.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from supreme_ecg.zeroshot import format_auc_ci, splits_title

ZERO_SHOT, PROBE = "zero-shot", "probe {}%"


def published_figures() -> list[dict]:
    """The published figures (method, source, verified, zero_shot / linear_probe_N: task → AUC %)."""
    text = resources.files("supreme_ecg.resources").joinpath("published.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def overview_rows(zeroshot: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """Long rows task, method, encoder, macro_auc, ci_low, ci_high from the two summary tables."""
    rows = []
    for encoder, prefix in (("pretrained", ""), ("random_init", "random_init_")):
        for row in zeroshot.to_dict("records"):
            rows.append({"task": row["task"], "method": ZERO_SHOT, "encoder": encoder,
                         "macro_auc": row[f"{prefix}macro_auc"], "ci_low": row[f"{prefix}ci_low"],
                         "ci_high": row[f"{prefix}ci_high"]})
        for row in probes.to_dict("records"):
            rows.append({"task": row["task"], "method": PROBE.format(_percent(row["fraction"])), "encoder": encoder,
                         "macro_auc": row[f"{prefix}macro_auc"], "ci_low": row[f"{prefix}ci_low"],
                         "ci_high": row[f"{prefix}ci_high"]})
    return pd.DataFrame(rows, columns=["task", "method", "encoder", "macro_auc", "ci_low", "ci_high"])


def _percent(fraction: float) -> str:
    """0.01 → '1', 0.1 → '10', 1.0 → '100'."""
    return f"{100 * float(fraction):g}"


def _published_cells(task: str, figures: list[dict]) -> list[str]:
    """Per published method: its zero-shot and probe figures for a task, as text."""
    cells = []
    for fig in figures:
        parts = []
        for key, values in fig.items():
            if key == "zero_shot" or key.startswith("linear_probe_"):
                value = (values or {}).get(task if task != "average" else "mean")
                if value is not None:
                    label = ZERO_SHOT if key == "zero_shot" else PROBE.format(key.rsplit("_", 1)[1])
                    parts.append(f"{label} {float(value):.2f}")
        cells.append("; ".join(parts) or "–")
    return cells


def provenance_section(record: dict, link: str) -> list[str]:
    """The "Provenance" lines of summary.md from a provenance record (:mod:`supreme_ecg.provenance`):
    commit and dirty flag, extraction backends / models / prompt hashes, hosts and GPUs, time span."""
    project, git = record["project"], record["project"].get("git")
    code = f"`{project['name']}` {project['version']}, "
    if git is None:
        code += "not a git checkout"
    else:
        code += f"git commit `{git['commit'][:12]}` " + (
            f"**with uncommitted changes** ({git['n_changes']} paths in `git status`)" if git["dirty"] else "(clean)")
    lines = ["", "## Provenance", "", f"- Code: {code}."]
    extraction = record.get("extraction")
    if extraction:
        produced = "; ".join(f"`{r['backend']}` model `{r['model']}` prompt `{r['prompt_version']}` "
                             f"({r['n_entities']} entities)" for r in extraction["produced_by"]) or "no entities"
        records = ", ".join(f"`{b}` {n}" for b, n in extraction["records_by_backend"].items())
        prompts = "; ".join(f"`{v}` sha256 `{p['sha256'][:16]}…`" for v, p in extraction["prompts"].items())
        lines.append(f"- Extraction (counted from the output tables): {produced}; records per backend: {records}"
                     + (f"; prompt text {prompts}" if prompts else "") + ".")
    pretrain = (record.get("pretrain") or {}).get("trained_on")
    if pretrain:
        gpu = f" ({pretrain['gpu']})" if pretrain.get("gpu") else ""
        code = pretrain.get("code")
        at = (f" with commit `{code['commit'][:12]}` ({'dirty' if code['dirty'] else 'clean'})" if code
              else " (code version not recorded)")
        lines.append(f"- Pre-training ran on `{pretrain['hostname']}`, device `{pretrain['device']}`{gpu}, "
                     f"{pretrain['processes']} process(es){at}.")
    else:
        lines.append("- Pre-training host: not recorded in the checkpoint.")
    host = record["host"]
    gpus = ", ".join(host["gpus"]) if host.get("gpus") else "no GPU"
    lines.append(f"- This record was written on `{host['hostname']}` ({host['platform']}, {host['cpu_count']} CPUs, "
                 f"{gpus}).")
    timing = record.get("timing") or {}
    if timing.get("first_job_start"):
        lines.append(f"- Jobs behind these outputs ran from {timing['first_job_start']} to {timing['last_job_end']} "
                     f"({timing['total_job_wall_s']:.0f} s of job wall time, {len(timing['jobs'])} jobs); "
                     f"provenance recorded at {record['provenance_job']['finished']}.")
    lines.append(f"- Full record: [provenance.json]({link}) (config with defaults, package versions, input "
                 "checksums and manifest digests, output SHA-256, per-job wall times).")
    return lines


def write_results_summary(zeroshot_csv, probe_csv, out_md, provenance=None) -> str:
    """``results/summary.md``: per task, zero-shot and probe macro AUC (%) with 95 % intervals for the
    pre-trained and the random-init encoder, then the published figures (copied, marked as such), then
    the run's provenance when ``provenance`` (the path of ``provenance.json``) is given."""
    zeroshot = pd.read_csv(zeroshot_csv)
    probes = pd.read_csv(probe_csv)
    figures = published_figures()
    fractions = sorted(probes["fraction"].unique())
    splits = {s for v in zeroshot["splits"] for s in str(v).split("+")}
    header = ["task", "encoder", ZERO_SHOT] + [PROBE.format(_percent(f)) for f in fractions]
    lines = [
        f"# Results of this run ({splits_title(splits)})", "",
        "Macro ROC AUC (%) with bootstrap 95 % percentile intervals over the test records. `pretrained` is "
        "this run's checkpoint; `random_init` the same architecture with random weights, scored by the same "
        "code on the same records (what pre-training added). Linear probes: frozen encoder, linear head "
        "trained on the given share of the task's training labels (class-stratified draw), early-stopped on "
        "the task's validation split; shares below 100 % are averaged over seeds (spread in "
        "`results/linear_probe/summary.csv`). Per-class figures: `results/zeroshot/summary.md`, "
        "`results/linear_probe/{task}/{percent}/per_class.parquet`.", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
    ]
    tasks = list(zeroshot["task"])
    for task in tasks:
        zs = zeroshot[zeroshot["task"] == task].iloc[0]
        for encoder, prefix in (("pretrained", ""), ("random_init", "random_init_")):
            cells = [task, encoder, format_auc_ci(zs[f"{prefix}macro_auc"], zs[f"{prefix}ci_low"],
                                                   zs[f"{prefix}ci_high"])]
            for fraction in fractions:
                pr = probes[(probes["task"] == task) & (probes["fraction"] == fraction)]
                cells.append(format_auc_ci(*(pr.iloc[0][f"{prefix}{c}"] for c in ("macro_auc", "ci_low", "ci_high")))
                             if len(pr) else "–")
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "`average`: the mean over tasks; its interval averages the tasks' resamples (each task's test "
              "records resampled on their own).", "",
              "## Published figures — copied from the papers, NOT measured here", "",
              "Other models, other training data sizes and the papers' own evaluation code: context, not a "
              "like-for-like comparison. *unverified* = taken from a summary of the paper, not checked "
              "against the PDF.", "",
              "| task | " + " | ".join(f["method"] for f in figures) + " |", "|---|" + "---|" * len(figures)]
    for task in [t for t in tasks if t != "average"] + ["average"]:
        lines.append("| " + " | ".join([task if task != "average" else "mean of six"]
                                       + _published_cells(task, figures)) + " |")
    lines += ["", "Sources:"] + [f"- {f['method']}: {f['source']}{'' if f.get('verified') else ' (unverified)'}"
                                  for f in figures]
    if provenance is not None:
        link = os.path.relpath(provenance, Path(out_md).parent).replace(os.sep, "/")
        lines += provenance_section(json.loads(Path(provenance).read_text("utf-8")), link)
    text = "\n".join(lines) + "\n"
    Path(out_md).parent.mkdir(parents=True, exist_ok=True)
    Path(out_md).write_text(text, encoding="utf-8")
    return text


def pick_examples(scores: pd.DataFrame, labels: pd.DataFrame, class_names: list[str], n: int) -> list[str]:
    """Record ids of ``n`` test records with at least one positive class, spread evenly over the sorted
    ids (deterministic; no choice by score)."""
    scored = scores.loc[scores["encoder"] == "pretrained", "record_id"].astype(str)
    lab = labels[labels["record_id"].astype(str).isin(set(scored))]
    positive = lab[(lab[class_names] == 1).any(axis=1)]["record_id"].astype(str).sort_values().tolist()
    if not positive:
        return []
    picks = np.linspace(0, len(positive) - 1, num=min(n, len(positive))).round().astype(int)
    return [positive[i] for i in dict.fromkeys(picks.tolist())]


def write_example_ecgs(task: str, scores_path, labels_path, manifest_path, root, out_path, n: int = 3,
                       top: int = 3) -> dict:
    """A figure of ``n`` scored records of a task: 12 leads on ECG paper (mV, from the source files), the
    record's true classes and the ``top`` class descriptions it scored highest under the pre-trained model."""
    from supreme_ecg.datasets import task_classes
    from supreme_ecg.plots import plot_example_ecgs, read_example_signal

    classes = task_classes(task, labels_path)
    names = [c.name for c in classes]
    describe = {c.name: c.description for c in classes}
    scores = pd.read_parquet(scores_path)
    labels = pd.read_parquet(labels_path)
    manifest = pd.read_parquet(manifest_path, columns=["record_id", "source_path"])
    source = dict(zip(manifest["record_id"].astype(str), manifest["source_path"].astype(str)))
    examples = []
    for record_id in pick_examples(scores, labels, names, n):
        row = scores[(scores["encoder"] == "pretrained") & (scores["record_id"].astype(str) == record_id)].iloc[0]
        truth = labels[labels["record_id"].astype(str) == record_id].iloc[0]
        signal, fs = read_example_signal(Path(root) / source[record_id])
        ranked = sorted(names, key=lambda c: -float(row[c]))[:top]
        examples.append({"record_id": record_id, "signal_mv": signal, "fs": fs,
                         "labels": [c for c in names if truth[c] == 1],
                         "top_queries": [(describe[c], float(row[c])) for c in ranked]})
    plot_example_ecgs(examples, out_path, title=f"{task}: example test ECGs, true classes and top-scored queries")
    return {"task": task, "records": [e["record_id"] for e in examples]}
