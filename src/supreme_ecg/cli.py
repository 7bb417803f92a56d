"""Command line of the workflow: one sub-command per stage, each a thin call into its module.

The Snakemake rules call ``python -m supreme_ecg.cli <stage> ...``; so can a user, without Snakemake.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("supreme_ecg")


def _comma_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def cmd_demo(args: argparse.Namespace) -> dict:
    """Generate the embedded offline demo datasets."""
    from supreme_ecg.demo.corpus import generate_demo

    return generate_demo(
        args.out_root, seed=args.seed, n_pretrain=args.n_pretrain, n_ptbxl=args.n_ptbxl,
        n_cpsc=args.n_cpsc, n_csn=args.n_csn, unseen_concepts=tuple(_comma_list(args.unseen_concepts)),
        defect_share=args.defect_share,
    )


def cmd_fetch(args: argparse.Namespace) -> dict:
    """Download one dataset from PhysioNet (or verify a local copy) and write the report."""
    from supreme_ecg import download

    if args.dataset == "merl_splits":
        report = download.fetch_merl_splits(args.dest, commit=args.commit, jobs=args.jobs)
    else:
        slug, _, version = args.project.partition("/")
        source = download.get_source(args.dataset, base_url=args.base_url, slug=slug, version=version)
        verify = args.source == "local"
        report = (download.verify_local(source, args.dest) if verify
                  else download.fetch_dataset(source, args.dest, jobs=args.jobs))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report.to_json(), encoding="utf-8")
    return {"files": report.files, "verified": report.verified, "fetched": report.fetched}


def cmd_index(args: argparse.Namespace) -> dict:
    """Index one dataset folder into a manifest Parquet (one row per record)."""
    from supreme_ecg import datasets

    manifest = datasets.index_dataset(
        args.dataset, args.root, folder=args.folder or None, kind=args.kind or None,
        manifest=args.manifest_file or None, pretrain_corpus=args.pretrain_corpus or None,
        ptbxl_folds=json.loads(args.ptbxl_folds) if args.ptbxl_folds else None,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(args.out, index=False)
    result = {"dataset": args.dataset, "n_records": len(manifest)}
    if "pretrain_split" in manifest:
        result["pretrain_split"] = manifest["pretrain_split"].replace("", "not_used").value_counts().to_dict()
    return result


def cmd_pretrain_corpus(args: argparse.Namespace) -> dict:
    """Select the rows of the pre-training corpus that pre-train (their reports go to extraction)."""
    import pandas as pd

    from supreme_ecg import datasets

    rows = datasets.pretraining_rows(pd.read_parquet(args.manifest))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(args.out, index=False)
    return {"n_records": len(rows), "n_left_out": rows.attrs["n_left_out"],
            "pretrain_split": rows["pretrain_split"].value_counts().to_dict()}


def cmd_data_unverified(args: argparse.Namespace) -> dict:
    """Record that a local dataset is read in place without checksum verification (data.verify: false)."""
    from supreme_ecg import datasets

    report = datasets.describe_unverified(args.dataset, args.folder)
    log.warning("%s: %s (%s)", args.dataset, report["note"], report["dest"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, sort_keys=True), encoding="utf-8")
    return report


def cmd_preprocess(args: argparse.Namespace) -> dict:
    """Preprocess one shard of a manifest."""
    from supreme_ecg.preprocess import PreprocessConfig, preprocess_shard

    cfg = PreprocessConfig(
        fs=args.fs, n_samples=args.n_samples, length_policy=args.length_policy,
        max_nonfinite_fraction=args.max_nonfinite, normalisation=args.normalisation,
        signal_dtype=args.signal_dtype,
    )
    return preprocess_shard(args.manifest, args.shard, args.n_shards, cfg, args.out, args.rejects, root=args.root,
                            signal_compression=args.signal_compression)


def cmd_preprocess_summary(args: argparse.Namespace) -> dict:
    """Account for every record of a dataset and merge the rejects."""
    from supreme_ecg.preprocess import summarise_dataset

    summary = summarise_dataset(args.manifest, args.shards, args.rejects, args.out, args.rejects_out)
    return {"outcomes": summary.set_index("outcome")["n_records"].to_dict()}


def cmd_record_table(args: argparse.Namespace) -> dict:
    """Write the unified record table of all datasets (metadata and outcome, no signals)."""
    from supreme_ecg.preprocess import record_table

    table = record_table(args.manifests, args.shards, args.rejects)
    table.to_parquet(args.out, index=False)
    counts = table.groupby(["dataset", "status"]).size()
    return {f"{dataset}:{status}": int(n) for (dataset, status), n in counts.items()}


def cmd_extract(args: argparse.Namespace) -> dict:
    """Extract open entities from reports (CSV or Parquet with record_id, report) and standardise them into labels."""
    from supreme_ecg import extract
    from supreme_ecg.llm_backends import BackendUnavailable, backend_options

    options = {**backend_options(args, args.backend), **json.loads(args.backend_options)}
    try:
        backend = extract.make_backend(args.backend, **options)
    except BackendUnavailable as exc:
        raise SystemExit(f"extract: {exc}") from None
    return extract.extract_reports(
        args.reports, args.out, backend, Path(args.cache_dir) / "answers.sqlite", unit=args.unit,
        uncertain_policy=args.uncertain_policy, min_label_count=args.min_label_count,
        text_encoder=None if args.text_encoder == "none" else args.text_encoder, merge_threshold=args.merge_threshold,
    )


def cmd_labels(args: argparse.Namespace) -> dict:
    """Write the downstream labels of one zero-shot task."""
    from supreme_ecg import datasets

    spec = json.loads(args.spec) if args.spec else None
    labels, n_dropped = datasets.task_labels_for(args.task, args.manifest, args.root,
                                                 merl_splits_dir=args.merl_splits_dir or None, spec=spec,
                                                 ptbxl_folder=args.ptbxl_folder or None)
    labels = datasets.apply_split_policy(labels, args.split_policy)
    datasets.write_task_labels(labels, args.out, datasets.task_definition(args.task, spec), args.split_policy)
    classes = [c for c in labels.columns if c not in ("record_id", "split")]
    return {"task": args.task, "n_records": len(labels), "n_dropped_without_label": n_dropped,
            "split_policy": args.split_policy, "splits": labels["split"].value_counts().to_dict(),
            "positives": {c: int((labels[c] == 1).sum()) for c in classes}}


def cmd_pretrain(args: argparse.Namespace) -> dict:
    """Pre-train the ECG encoder and query-fusion head on the extracted labels (under ``torchrun``: DDP)."""
    from supreme_ecg.pretrain import PretrainConfig, pretrain

    # --threads is the job's: under torchrun every process takes its share
    cfg = PretrainConfig.from_mapping({**json.loads(args.settings), "threads": args.threads})
    return pretrain(args.shards, args.labels, args.vocabulary, args.out_dir, cfg)


def cmd_zeroshot(args: argparse.Namespace) -> dict:
    """Zero-shot evaluation of one task."""
    from supreme_ecg.zeroshot import evaluate_task

    return evaluate_task(
        args.task, args.checkpoint, args.shards, args.task_labels, args.vocabulary, args.out_dir,
        splits=tuple(_comma_list(args.splits)), threads=args.threads, seen_threshold=args.seen_threshold,
        baseline_checkpoint_path=args.baseline_checkpoint, n_resamples=args.n_resamples,
        bootstrap_seed=args.bootstrap_seed, level=args.level,
    )


def cmd_random_init(args: argparse.Namespace) -> dict:
    """Write the random-init baseline of a checkpoint (same architecture, labels, preprocessing; fresh weights)."""
    from supreme_ecg.model import load_checkpoint, random_init_checkpoint, save_checkpoint

    save_checkpoint(args.out, random_init_checkpoint(load_checkpoint(args.checkpoint), seed=args.seed))
    return {"out": args.out, "seed": args.seed}


def cmd_features(args: argparse.Namespace) -> dict:
    """Pooled encoder features of a task's records, for the pre-trained encoder and its baseline."""
    from supreme_ecg.linear_probe import extract_features

    checkpoints = {"pretrained": args.checkpoint}
    if args.baseline_checkpoint:
        checkpoints["random_init"] = args.baseline_checkpoint
    return extract_features(checkpoints, args.shards, args.task_labels, args.out, threads=args.threads)


def cmd_linear_probe(args: argparse.Namespace) -> dict:
    """Linear probe of one task with a share of its training labels (early stopping on validation)."""
    from supreme_ecg.linear_probe import ProbeConfig, run_linear_probe

    report = run_linear_probe(
        args.task, args.features, args.task_labels, args.percent, args.out_dir,
        seeds=[int(s) for s in _comma_list(args.seeds)], cfg=ProbeConfig(**json.loads(args.settings)),
        n_resamples=args.n_resamples, bootstrap_seed=args.bootstrap_seed, level=args.level,
    )
    return {e: {k: v for k, v in info.items() if k in ("status", "macro_auc", "ci_low", "ci_high", "n_train_used")}
            for e, info in report["encoders"].items()}


def cmd_linear_probe_summary(args: argparse.Namespace) -> dict:
    """Summarise the linear probes into summary.csv."""
    from supreme_ecg.linear_probe import summarise_probes

    return {"rows": len(summarise_probes(args.probe_dirs, args.out))}


def cmd_results_summary(args: argparse.Namespace) -> dict:
    """results/summary.md (ours, the baseline, the published figures) and the overview chart."""
    import pandas as pd

    from supreme_ecg.plots import plot_overview
    from supreme_ecg.run_report import overview_rows, write_results_summary

    write_results_summary(args.zeroshot, args.probes, args.out, provenance=args.provenance)
    rows = overview_rows(pd.read_csv(args.zeroshot), pd.read_csv(args.probes))
    plot_overview(rows[rows["task"] != "average"], args.plot,
                  title="Macro AUC per task: zero-shot and linear probes, pre-trained vs random-init encoder")
    return {"out": args.out, "plot": args.plot}


def cmd_provenance(args: argparse.Namespace) -> dict:
    """results/provenance.json: code version, config, packages, host, input and output checksums, timing."""
    from supreme_ecg.provenance import write_provenance

    record = write_provenance(args.out, args.outputs, json.loads(args.config), args.repo, results=args.results,
                              benchmarks=args.benchmarks, entities=args.entities, records=args.records,
                              checkpoint=args.checkpoint)
    return {"out": args.out, "git": record["project"]["git"] and record["project"]["git"]["commit"],
            "outputs": len(record["outputs"])}


def cmd_example_ecgs(args: argparse.Namespace) -> dict:
    """Per task, a figure of example test ECGs with their true classes and top-scored queries."""
    from supreme_ecg.run_report import write_example_ecgs

    lists = [args.task, args.scores, args.task_labels, args.manifest, args.out]
    if len({len(x) for x in lists}) != 1:
        raise SystemExit("example-ecgs: --task, --scores, --task-labels, --manifest and --out need one value per task")
    return {task: write_example_ecgs(task, scores, labels, manifest, args.root, out, n=args.n)["records"]
            for task, scores, labels, manifest, out in zip(*lists)}


def cmd_predict(args: argparse.Namespace) -> dict:
    """Score ECG files against free-text condition descriptions (or a benchmark task's classes)."""
    from supreme_ecg import predict

    return predict.run(args)


def cmd_summarise(args: argparse.Namespace) -> dict:
    """Summarise the zero-shot tasks into summary.csv (and summary.md beside it)."""
    from supreme_ecg.zeroshot import summarise

    summary = summarise(args.per_class, args.out)
    return {"rows": len(summary)}


def _bootstrap_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the bootstrap intervals (config ``evaluation``)."""
    from supreme_ecg import bootstrap

    p.add_argument("--n-resamples", type=int, default=bootstrap.N_RESAMPLES)
    p.add_argument("--bootstrap-seed", type=int, default=bootstrap.SEED)
    p.add_argument("--level", type=float, default=bootstrap.LEVEL)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every stage; the defaults of the config's settings are the config schema's."""
    from supreme_ecg.config_schema import schema_defaults
    from supreme_ecg.llm_backends import add_backend_arguments

    demo, data, labels, preprocess, extract, pretrain, zeroshot, probe, evaluation = (
        schema_defaults(section) for section in ("demo", "data", "labels", "preprocess", "extract", "pretrain",
                                                 "zeroshot", "linear_probe", "evaluation"))

    parser = argparse.ArgumentParser(prog="supreme-ecg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help=cmd_demo.__doc__)
    p.add_argument("--out-root", required=True)
    p.add_argument("--seed", type=int, default=demo["seed"])
    p.add_argument("--n-pretrain", type=int, default=demo["n_pretrain"])
    p.add_argument("--n-ptbxl", type=int, default=demo["n_ptbxl"])
    p.add_argument("--n-cpsc", type=int, default=demo["n_cpsc"])
    p.add_argument("--n-csn", type=int, default=demo["n_csn"])
    p.add_argument("--defect-share", type=float, default=demo["defect_share"])
    p.add_argument("--unseen-concepts", default=",".join(demo["unseen_concepts"]), help="comma-separated")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("fetch", help=cmd_fetch.__doc__)
    p.add_argument("--dataset", required=True, choices=["mimic", "ptbxl", "cpsc2018", "csn", "merl_splits"])
    p.add_argument("--dest", required=True)
    p.add_argument("--source", default="physionet", choices=["physionet", "local"])
    p.add_argument("--project", default="", help="PhysioNet slug/version, e.g. ptb-xl/1.0.3")
    p.add_argument("--base-url", default=data["physionet_base"])
    p.add_argument("--commit", default=labels["merl_commit"], help="MERL repository commit of the split CSVs")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("index", help=cmd_index.__doc__)
    p.add_argument("--dataset", required=True, help="mimic, ptbxl, cpsc2018, csn, or a name of your own")
    p.add_argument("--root", required=True, help="data root holding the dataset folders")
    p.add_argument("--folder", default="", help="the set's folder under --root (default: PhysioNet name)")
    p.add_argument("--kind", default="", choices=["", "mimic", "ptbxl", "cinc", "manifest"])
    p.add_argument("--manifest-file", default="", help="kind manifest: your CSV/Parquet table")
    p.add_argument("--pretrain-corpus", default="", choices=["", "mimic", "ptbxl", "manifest"],
                   help="this set is the pre-training corpus: mark its pretrain_split")
    p.add_argument("--ptbxl-folds", default="", help='JSON {"train": [1, ...], "val": [9]}')
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("pretrain-corpus", help=cmd_pretrain_corpus.__doc__)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_pretrain_corpus)

    p = sub.add_parser("data-unverified", help=cmd_data_unverified.__doc__)
    p.add_argument("--dataset", required=True)
    p.add_argument("--folder", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data_unverified)

    p = sub.add_parser("preprocess", help=cmd_preprocess.__doc__)
    p.add_argument("--manifest", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--n-shards", type=int, required=True)
    p.add_argument("--fs", type=int, default=preprocess["fs"])
    p.add_argument("--n-samples", type=int, default=preprocess["n_samples"])
    p.add_argument("--length-policy", default=preprocess["length_policy"])
    p.add_argument("--max-nonfinite", type=float, default=preprocess["max_nonfinite_fraction"])
    p.add_argument("--normalisation", default=preprocess["normalisation"])
    p.add_argument("--signal-compression", default=preprocess["signal_compression"], choices=["none", "snappy", "zstd"])
    p.add_argument("--signal-dtype", default=preprocess["signal_dtype"], choices=["float32", "float16"])
    p.add_argument("--out", required=True)
    p.add_argument("--rejects", required=True)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("preprocess-summary", help=cmd_preprocess_summary.__doc__)
    p.add_argument("--manifest", required=True)
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--rejects", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--rejects-out", required=True)
    p.set_defaults(func=cmd_preprocess_summary)

    p = sub.add_parser("record-table", help=cmd_record_table.__doc__)
    p.add_argument("--manifests", nargs="+", required=True)
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--rejects", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_record_table)

    p = sub.add_parser("extract", help=cmd_extract.__doc__)
    p.add_argument("--reports", required=True, help="CSV or Parquet with columns record_id and report")
    p.add_argument("--out", required=True, help="output folder (entities, records, labels, ... .parquet)")
    p.add_argument("--backend", default=extract["backend"], choices=["lexicon", "ollama", "openai"])
    p.add_argument("--unit", default=extract["unit"], choices=["statement", "report"])
    p.add_argument("--uncertain-policy", default=extract["uncertain_policy"], choices=["positive", "negative", "ignore"])
    p.add_argument("--min-label-count", type=int, default=extract["min_label_count"])
    p.add_argument("--cache-dir", default=extract["cache_dir"], help="persistent answer cache folder")
    p.add_argument("--text-encoder", default=pretrain["text_encoder"],
                   help="frozen text encoder that merges near-duplicate entity names ('none': exact merging only)")
    p.add_argument("--merge-threshold", type=float, default=extract["merge_threshold"],
                   help="cosine similarity at which two entity names become one label")
    p.add_argument("--backend-options", default="{}", help="JSON object of backend options (below)")
    add_backend_arguments(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("labels", help=cmd_labels.__doc__)
    p.add_argument("--task", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--merl-splits-dir", default=None, help="use the released MERL CSVs (merl_compat)")
    p.add_argument("--spec", default="", help="JSON definition of a user task (classes, label_source)")
    p.add_argument("--split-policy", default="dataset", choices=["dataset", "all_test"])
    p.add_argument("--ptbxl-folder", default="", help="PTB-XL folder under --root (scp_statements.csv)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_labels)

    p = sub.add_parser("pretrain", help=cmd_pretrain.__doc__)
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--vocabulary", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--settings", default="{}", help="JSON object of PretrainConfig fields (others: the schema's defaults)")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("zeroshot", help=cmd_zeroshot.__doc__)
    p.add_argument("--task", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--task-labels", required=True)
    p.add_argument("--vocabulary", default=None,
                   help="label_vocabulary.parquet (optional: the training labels come from the checkpoint; "
                        "when given it must list the same labels)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--splits", default=",".join(zeroshot["splits"]))
    p.add_argument("--seen-threshold", type=float, default=zeroshot["seen_threshold"],
                   help="cosine from which a class description counts as a training label (seen); "
                        "default: the extraction's default merge threshold")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baseline-checkpoint", default=None, help="the random-init baseline, scored beside")
    _bootstrap_arguments(p)
    p.set_defaults(func=cmd_zeroshot)

    p = sub.add_parser("random-init", help=cmd_random_init.__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--seed", type=int, default=evaluation["baseline_seed"])
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_random_init)

    p = sub.add_parser("features", help=cmd_features.__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--baseline-checkpoint", default=None)
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--task-labels", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("linear-probe", help=cmd_linear_probe.__doc__)
    p.add_argument("--task", required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--task-labels", required=True)
    p.add_argument("--percent", type=float, required=True, help="share of the training labels, in percent")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--seeds", default=",".join(str(s) for s in probe["seeds"]),
                   help="comma-separated; 100 %% uses the first only")
    p.add_argument("--settings", default="{}", help="JSON object of ProbeConfig fields (others: the schema's defaults)")
    _bootstrap_arguments(p)
    p.set_defaults(func=cmd_linear_probe)

    p = sub.add_parser("linear-probe-summary", help=cmd_linear_probe_summary.__doc__)
    p.add_argument("--probe-dirs", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_linear_probe_summary)

    p = sub.add_parser("results-summary", help=cmd_results_summary.__doc__)
    p.add_argument("--zeroshot", required=True, help="results/zeroshot/summary.csv")
    p.add_argument("--probes", required=True, help="results/linear_probe/summary.csv")
    p.add_argument("--out", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--provenance", default=None, help="results/provenance.json (adds a Provenance section)")
    p.set_defaults(func=cmd_results_summary)

    p = sub.add_parser("provenance", help=cmd_provenance.__doc__)
    p.add_argument("--outputs", nargs="+", required=True, help="final outputs to checksum")
    p.add_argument("--config", default="{}", help="JSON of the validated config (secrets are stripped)")
    p.add_argument("--repo", default=".", help="the workflow's checkout (git commit and dirty flag)")
    p.add_argument("--results", default="results", help="results folder (data records, manifests, shards)")
    p.add_argument("--benchmarks", default="benchmarks/out", help="Snakemake benchmark files (job wall times)")
    p.add_argument("--entities", default=None, help="extract entities.parquet (default: under --results)")
    p.add_argument("--records", default=None, help="extract records.parquet (default: under --results)")
    p.add_argument("--checkpoint", default=None, help="pretrain checkpoint.pt (default: under --results)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_provenance)

    p = sub.add_parser("example-ecgs", help=cmd_example_ecgs.__doc__)
    p.add_argument("--task", nargs="+", required=True)
    p.add_argument("--scores", nargs="+", required=True)
    p.add_argument("--task-labels", nargs="+", required=True)
    p.add_argument("--manifest", nargs="+", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--out", nargs="+", required=True)
    p.add_argument("--n", type=int, default=evaluation["n_examples"])
    p.set_defaults(func=cmd_example_ecgs)

    p = sub.add_parser("predict", help=cmd_predict.__doc__)
    from supreme_ecg import predict  # light at import: torch loads when predict runs

    predict.add_arguments(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("summarise", help=cmd_summarise.__doc__)
    p.add_argument("--per-class", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_summarise)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one stage; log its result as one JSON line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    result = args.func(args)
    log.info("%s done in %.1f s: %s", args.command, time.perf_counter() - start,
             json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
