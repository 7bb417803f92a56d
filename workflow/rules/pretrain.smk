"""Pre-train: ECG encoder + frozen text encoder + query fusion, multi-label BCE.

GPUs: `resources: gpu=` is `pretrain.gpus` when `pretrain.device` is auto or cuda (0 for cpu), so the
SLURM profile asks for them; with `pretrain.gpus` > 1 the job starts one process per GPU with
`torchrun --standalone` (DDP). In `profiles/slurm/config.yaml`, give the rule `tasks_per_gpu: 0` (one
SLURM task, torchrun starts the processes) and `cpus_per_gpu` (data-loader workers). Resume state
lives in `pretrain.state_dir` (default cache/pretrain), outside the outputs, so reruns continue.
"""

# GPUs of the job: `pretrain.gpus` unless `pretrain.device` is the CPU; > 1: one process each (torchrun)
PRETRAIN_GPUS = (
    0
    if str(config["pretrain"]["device"]).startswith("cpu")
    else max(int(config["pretrain"]["gpus"]), 1)
)
PRETRAIN_LAUNCHER = (
    f"torchrun --standalone --nproc_per_node={PRETRAIN_GPUS}"
    if PRETRAIN_GPUS > 1
    else "python"
)


rule pretrain:
    input:
        shards=dataset_shards(dataset=PRETRAIN_DATASET),
        labels="results/extract/labels.parquet",
        vocabulary="results/extract/label_vocabulary.parquet",
    output:
        checkpoint="results/pretrain/checkpoint.pt",
        metrics=report(
            "results/pretrain/metrics.parquet",
            category="Pre-training",
            caption="../report/pretrain_metrics.rst",
        ),
        curve=report(
            "results/pretrain/training_curve.png",
            category="Pre-training",
            caption="../report/training_curve.rst",
        ),
    log:
        "logs/pretrain.log",
    benchmark:
        "benchmarks/out/pretrain.tsv"
    conda:
        "../../envs/pretrain.yaml"
    threads: 8
    resources:
        gpu=PRETRAIN_GPUS,
    params:
        settings=lambda wildcards: json.dumps(config["pretrain"], sort_keys=True),
        launcher=PRETRAIN_LAUNCHER,
    shell:
        "{params.launcher} -m supreme_ecg.cli pretrain --shards {input.shards} --labels {input.labels}"
        " --vocabulary {input.vocabulary} --out-dir results/pretrain"
        " --settings {params.settings:q} --threads {threads} > {log} 2>&1"


rule random_init_checkpoint:
    input:
        "results/pretrain/checkpoint.pt",
    output:
        "results/baseline/random_init.pt",
    log:
        "logs/random_init_checkpoint.log",
    benchmark:
        "benchmarks/out/random_init_checkpoint.tsv"
    conda:
        "../../envs/pretrain.yaml"
    params:
        seed=config["evaluation"]["baseline_seed"],
    shell:
        "python -m supreme_ecg.cli random-init --checkpoint {input} --seed {params.seed}"
        " --out {output} > {log} 2>&1"
