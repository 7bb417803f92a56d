"""Zero-shot: class descriptions as queries on each downstream task; per-class and macro AUC."""


rule task_labels:
    input:
        manifest=lambda wc: f"results/manifests/{catalogue.task_dataset(wc.task)}.parquet",
        merl=(
            ["results/data/merl_splits.json"]
            if config["labels"]["merl_compat"]
            else []
        ),
    output:
        "results/labels/{task}.parquet",
    log:
        "logs/task_labels/{task}.log",
    benchmark:
        "benchmarks/out/task_labels/{task}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        root=DATA_ROOT,
        merl=(
            f"--merl-splits-dir {MERL_SPLITS_DIR}"
            if config["labels"]["merl_compat"]
            else ""
        ),
    shell:
        "python -m supreme_ecg.cli labels --task {wildcards.task} --manifest {input.manifest}"
        " --root {params.root} {params.merl} --out {output} > {log} 2>&1"


rule zeroshot_task:
    input:
        checkpoint="results/pretrain/checkpoint.pt",
        vocabulary="results/extract/label_vocabulary.parquet",
        labels="results/labels/{task}.parquet",
        shards=dataset_shards,
    output:
        per_class=report(
            "results/zeroshot/{task}/per_class.parquet",
            category="Zero-shot",
            subcategory="{task}",
            caption="../report/zeroshot_per_class.rst",
        ),
        scores="results/zeroshot/{task}/scores.parquet",
        roc=report(
            "results/zeroshot/{task}/roc.png",
            category="Zero-shot",
            subcategory="{task}",
            caption="../report/zeroshot_roc.rst",
        ),
    log:
        "logs/zeroshot/{task}.log",
    benchmark:
        "benchmarks/out/zeroshot/{task}.tsv"
    conda:
        "../../envs/pretrain.yaml"
    threads: 2
    params:
        splits=",".join(config["zeroshot"]["splits"]),
    shell:
        "python -m supreme_ecg.cli zeroshot --task {wildcards.task} --checkpoint {input.checkpoint}"
        " --shards {input.shards} --task-labels {input.labels}"
        " --vocabulary {input.vocabulary} --out-dir results/zeroshot/{wildcards.task}"
        " --splits {params.splits} --threads {threads} > {log} 2>&1"


rule zeroshot_summary:
    input:
        expand("results/zeroshot/{task}/per_class.parquet", task=TASKS),
    output:
        csv=report(
            "results/zeroshot/summary.csv",
            category="Zero-shot",
            caption="../report/zeroshot_summary.rst",
        ),
        md="results/zeroshot/summary.md",
    log:
        "logs/zeroshot/summary.log",
    benchmark:
        "benchmarks/out/zeroshot/summary.tsv"
    conda:
        "../../envs/pretrain.yaml"
    shell:
        "python -m supreme_ecg.cli summarise --per-class {input} --out {output.csv} > {log} 2>&1"
