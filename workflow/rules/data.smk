"""Datasets in: the embedded demo, PhysioNet downloads / local copies verified by checksum, or local
folders and user manifests read in place unverified (said so in results/data/<dataset>.json).
"""


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
        dataset=_regex([d for d in DATASET_FOLDERS if d not in UNVERIFIED]),
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


rule read_in_place:
    output:
        "results/data/{dataset}.json",
    log:
        "logs/fetch_dataset/{dataset}.log",
    benchmark:
        "benchmarks/out/fetch_dataset/{dataset}.tsv"
    wildcard_constraints:
        dataset=_regex(UNVERIFIED),
    conda:
        "../../envs/preprocess.yaml"
    params:
        folder=lambda wildcards: dataset_spec(wildcards.dataset)["manifest"]
        or dataset_folder(wildcards.dataset),
    shell:
        "python -m supreme_ecg.cli data-unverified --dataset {wildcards.dataset} --folder {params.folder:q}"
        " --out {output} > {log} 2>&1"


checkpoint index_dataset:
    input:
        dataset_ready,
    output:
        "results/manifests/{dataset}.parquet",
    log:
        "logs/index_dataset/{dataset}.log",
    benchmark:
        "benchmarks/out/index_dataset/{dataset}.tsv"
    wildcard_constraints:
        dataset=_regex(DATASETS),
    conda:
        "../../envs/preprocess.yaml"
    params:
        root=DATA_ROOT,
        folder=lambda wildcards: dataset_spec(wildcards.dataset)["folder"],
        kind=lambda wildcards: dataset_spec(wildcards.dataset)["kind"],
        manifest=lambda wildcards: dataset_spec(wildcards.dataset)["manifest"],
        corpus=lambda wildcards: dataset_spec(wildcards.dataset).get(
            "pretrain_corpus", ""
        ),
        folds=lambda wildcards: json.dumps(
            dataset_spec(wildcards.dataset).get("ptbxl_folds", {}), sort_keys=True
        ),
    shell:
        "python -m supreme_ecg.cli index --dataset {wildcards.dataset} --root {params.root:q}"
        " --folder {params.folder:q} --kind {params.kind} --manifest-file={params.manifest:q}"
        " --pretrain-corpus={params.corpus:q} --ptbxl-folds={params.folds:q}"
        " --out {output} > {log} 2>&1"


rule pretrain_corpus:
    input:
        f"results/manifests/{PRETRAIN_DATASET}.parquet",
    output:
        "results/manifests/pretrain_corpus.parquet",
    log:
        "logs/pretrain_corpus.log",
    benchmark:
        "benchmarks/out/pretrain_corpus.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        corpus=PRETRAIN_DATASET,
    shell:
        "python -m supreme_ecg.cli pretrain-corpus --manifest {input} --out {output} > {log} 2>&1"
