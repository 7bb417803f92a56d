"""Zero-shot: class descriptions as queries on each downstream task's test records; per-class and
macro AUC with bootstrap intervals, for the pre-trained model and its random-init baseline.
"""


rule task_labels:
    input:
        manifest=lambda wc: f"results/manifests/{task_dataset(wc.task)}.parquet",
        merl=lambda wc: (
            ["results/data/merl_splits.json"]
            if config["labels"]["merl_compat"] and wc.task not in USER_TASKS
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
        merl=lambda wc: (
            f"--merl-splits-dir {MERL_SPLITS_DIR}"
            if config["labels"]["merl_compat"] and wc.task not in USER_TASKS
            else ""
        ),
        spec=lambda wc: task_label_spec(wc.task),
        split_policy=lambda wc: config["labels"]["split_policy"].get(wc.task, "dataset"),
        ptbxl_folder=dataset_folder_name("ptbxl"),
    shell:
        "python -m supreme_ecg.cli labels --task {wildcards.task} --manifest {input.manifest}"
        " --root {params.root:q} {params.merl} --spec={params.spec:q} --split-policy {params.split_policy}"
        " --ptbxl-folder {params.ptbxl_folder:q} --out {output} > {log} 2>&1"


rule zeroshot_task:
    input:
        checkpoint="results/pretrain/checkpoint.pt",
        baseline="results/baseline/random_init.pt",
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
        bootstrap="results/zeroshot/{task}/bootstrap.parquet",
        evaluation="results/zeroshot/{task}/evaluation.json",
        bars=report(
            "results/zeroshot/{task}/auc_bars.png",
            category="Zero-shot",
            subcategory="{task}",
            caption="../report/zeroshot_auc_bars.rst",
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
        # seen = the description would have been merged into a training label: same threshold
        seen_threshold=config["zeroshot"].get(
            "seen_threshold", config["extract"]["merge_threshold"]
        ),
        bootstrap=BOOTSTRAP_ARGS,
    shell:
        "python -m supreme_ecg.cli zeroshot --task {wildcards.task} --checkpoint {input.checkpoint}"
        " --baseline-checkpoint {input.baseline} --shards {input.shards} --task-labels {input.labels}"
        " --vocabulary {input.vocabulary} --out-dir results/zeroshot/{wildcards.task}"
        " --splits {params.splits} --seen-threshold {params.seen_threshold} {params.bootstrap}"
        " --threads {threads} > {log} 2>&1"


rule example_ecgs:
    input:
        scores=expand("results/zeroshot/{task}/scores.parquet", task=TASKS),
        labels=expand("results/labels/{task}.parquet", task=TASKS),
        manifests=[f"results/manifests/{task_dataset(t)}.parquet" for t in TASKS],
    output:
        report(
            expand("results/zeroshot/{task}/examples.png", task=TASKS),
            category="Example ECGs",
            caption="../report/example_ecgs.rst",
        ),
    log:
        "logs/example_ecgs.log",
    benchmark:
        "benchmarks/out/example_ecgs.tsv"
    conda:
        "../../envs/pretrain.yaml"
    params:
        root=DATA_ROOT,
        n=config["evaluation"]["n_examples"],
        tasks=TASKS,
    shell:
        "python -m supreme_ecg.cli example-ecgs --task {params.tasks} --scores {input.scores}"
        " --task-labels {input.labels} --manifest {input.manifests} --root {params.root:q}"
        " --n {params.n} --out {output} > {log} 2>&1"


rule zeroshot_summary:
    input:
        per_class=expand("results/zeroshot/{task}/per_class.parquet", task=TASKS),
        bootstrap=expand("results/zeroshot/{task}/bootstrap.parquet", task=TASKS),
        evaluation=expand("results/zeroshot/{task}/evaluation.json", task=TASKS),
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
        "python -m supreme_ecg.cli summarise --per-class {input.per_class} --out {output.csv} > {log} 2>&1"
