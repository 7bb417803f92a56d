"""Datasets in: the embedded demo, or PhysioNet downloads / local copies verified by checksum."""


rule demo_data:
    output:
        truth=f"{DATA_ROOT}/demo_truth.parquet",
    log:
        "logs/demo_data.log",
    benchmark:
        "benchmarks/out/demo_data.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        root=lambda wildcards, output: os.path.dirname(output.truth),
        seed=config["demo"]["seed"],
        n_pretrain=config["demo"]["n_pretrain"],
        n_ptbxl=config["demo"]["n_ptbxl"],
        n_cpsc=config["demo"]["n_cpsc"],
        n_csn=config["demo"]["n_csn"],
        defect_share=config["demo"]["defect_share"],
        unseen=",".join(config["demo"]["unseen_concepts"]),
    shell:
        "python -m supreme_ecg.cli demo --out-root {params.root} --seed {params.seed}"
        " --n-pretrain {params.n_pretrain} --n-ptbxl {params.n_ptbxl}"
        " --n-cpsc {params.n_cpsc} --n-csn {params.n_csn}"
        " --defect-share {params.defect_share} --unseen-concepts '{params.unseen}'"
        " > {log} 2>&1"


rule fetch_dataset:
    output:
        "results/data/{dataset}.json",
    log:
        "logs/fetch_dataset/{dataset}.log",
    benchmark:
        "benchmarks/out/fetch_dataset/{dataset}.tsv"
    wildcard_constraints:
        dataset="mimic|ptbxl|cpsc2018|csn",
    conda:
        "../../envs/extract.yaml"
    threads: 8
    params:
        dest=lambda wildcards: dataset_folder(wildcards.dataset),
        source=config["data"]["source"],
        project=lambda wildcards: config["data"]["physionet"][wildcards.dataset],
        base_url=config["data"]["physionet_base"],
    shell:
        "python -m supreme_ecg.cli fetch --dataset {wildcards.dataset} --dest {params.dest}"
        " --source {params.source} --project {params.project} --base-url {params.base_url}"
        " --jobs {threads} --out {output} > {log} 2>&1"


rule fetch_merl_splits:
    output:
        "results/data/merl_splits.json",
    log:
        "logs/fetch_dataset/merl_splits.log",
    benchmark:
        "benchmarks/out/fetch_dataset/merl_splits.tsv"
    conda:
        "../../envs/extract.yaml"
    params:
        dest=MERL_SPLITS_DIR,
        commit=config["labels"]["merl_commit"],
    shell:
        "python -m supreme_ecg.cli fetch --dataset merl_splits --dest {params.dest}"
        " --commit {params.commit} --out {output} > {log} 2>&1"


checkpoint index_dataset:
    input:
        dataset_ready,
    output:
        "results/manifests/{dataset}.parquet",
    log:
        "logs/index_dataset/{dataset}.log",
    benchmark:
        "benchmarks/out/index_dataset/{dataset}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        root=DATA_ROOT,
    shell:
        "python -m supreme_ecg.cli index --dataset {wildcards.dataset} --root {params.root} --out {output} > {log} 2>&1"
