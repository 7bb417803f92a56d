"""Datasets in: the embedded demo (issue: real PhysioNet downloads come next) and their indexes."""


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


rule index_dataset:
    input:
        rules.demo_data.output.truth,
    output:
        "results/manifests/{dataset}.parquet",
    log:
        "logs/index_dataset/{dataset}.log",
    benchmark:
        "benchmarks/out/index_dataset/{dataset}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        root=lambda wildcards, input: os.path.dirname(input[0]),
    shell:
        "python -m supreme_ecg.cli index --dataset {wildcards.dataset} --root {params.root} --out {output} > {log} 2>&1"
