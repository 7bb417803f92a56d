"""Pre-train: ECG encoder + frozen text encoder + query fusion, multi-label BCE."""


rule pretrain:
    input:
        shards=dataset_shards(dataset="mimic"),
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
        text_encoder=config["pretrain"]["text_encoder"],
        text_pooling=config["pretrain"]["text_pooling"],
        epochs=config["pretrain"]["epochs"],
        batch_size=config["pretrain"]["batch_size"],
        lr=config["pretrain"]["lr"],
        weight_decay=config["pretrain"]["weight_decay"],
        width=config["pretrain"]["width"],
        downsample=config["pretrain"]["downsample"],
        val_share=config["pretrain"]["val_share"],
        seed=config["pretrain"]["seed"],
        device=config["pretrain"]["device"],
    shell:
        "python -m supreme_ecg.cli pretrain --shards {input.shards} --labels {input.labels}"
        " --vocabulary {input.vocabulary} --out-dir results/pretrain"
        " --text-encoder {params.text_encoder} --text-pooling {params.text_pooling}"
        " --epochs {params.epochs} --batch-size {params.batch_size} --lr {params.lr}"
        " --weight-decay {params.weight_decay} --width {params.width}"
        " --downsample {params.downsample} --val-share {params.val_share}"
        " --seed {params.seed} --device {params.device} --threads {threads}"
        " > {log} 2>&1"
