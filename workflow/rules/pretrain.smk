"""Pre-train: ECG encoder + frozen text encoder + query fusion, multi-label BCE."""


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
        gpu=1 if config["pretrain"]["device"].startswith("cuda") else 0,
    params:
        settings=lambda wildcards: json.dumps(config["pretrain"], sort_keys=True),
    shell:
        "python -m supreme_ecg.cli pretrain --shards {input.shards} --labels {input.labels}"
        " --vocabulary {input.vocabulary} --out-dir results/pretrain"
        " --settings {params.settings:q} --threads {threads} > {log} 2>&1"
