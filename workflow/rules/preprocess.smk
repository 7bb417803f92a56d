"""Preprocess: every record to canonical leads, rate, length and scale, in Parquet shards."""


rule preprocess_shard:
    input:
        manifest=shard_manifest,
    output:
        shard="results/preprocessed/{dataset}/shard-{shard}-of-{n}.parquet",
        rejects="results/preprocessed/{dataset}/rejects-{shard}-of-{n}.parquet",
    log:
        "logs/preprocess/{dataset}-{shard}-of-{n}.log",
    benchmark:
        "benchmarks/out/preprocess/{dataset}-{shard}-of-{n}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        rows=shard_digest,
        root=DATA_ROOT,
        fs=config["preprocess"]["fs"],
        n_samples=config["preprocess"]["n_samples"],
        length_policy=config["preprocess"]["length_policy"],
        max_nonfinite=config["preprocess"]["max_nonfinite_fraction"],
        normalisation=config["preprocess"]["normalisation"],
        signal_compression=config["preprocess"]["signal_compression"],
        signal_dtype=config["preprocess"]["signal_dtype"],
    shell:
        "python -m supreme_ecg.cli preprocess --manifest {input.manifest} --root {params.root}"
        " --shard {wildcards.shard} --n-shards {wildcards.n}"
        " --fs {params.fs} --n-samples {params.n_samples}"
        " --length-policy {params.length_policy} --max-nonfinite {params.max_nonfinite}"
        " --normalisation {params.normalisation}"
        " --signal-compression {params.signal_compression} --signal-dtype {params.signal_dtype}"
        " --out {output.shard} --rejects {output.rejects} > {log} 2>&1"


rule preprocess_summary:
    input:
        shards=lambda wc: dataset_shards(dataset=wc.dataset),
        rejects=lambda wc: dataset_shards(dataset=wc.dataset, kind="rejects"),
        manifest="results/manifests/{dataset}.parquet",
    output:
        summary=report(
            "results/preprocessed/{dataset}/summary.csv",
            category="Preprocess",
            caption="../report/preprocess_summary.rst",
        ),
        rejects="results/preprocessed/{dataset}/rejects.parquet",
    log:
        "logs/preprocess/{dataset}-summary.log",
    benchmark:
        "benchmarks/out/preprocess/{dataset}-summary.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "python -m supreme_ecg.cli preprocess-summary --manifest {input.manifest} --shards {input.shards}"
        " --rejects {input.rejects} --out {output.summary} --rejects-out {output.rejects}"
        " > {log} 2>&1"


rule record_table:
    input:
        manifests=expand("results/manifests/{dataset}.parquet", dataset=DATASETS),
        shards=[s for d in DATASETS for s in dataset_shards(dataset=d)],
        rejects=[s for d in DATASETS for s in dataset_shards(dataset=d, kind="rejects")],
    output:
        report(
            "results/records.parquet",
            category="Preprocess",
            caption="../report/record_table.rst",
        ),
    log:
        "logs/record_table.log",
    benchmark:
        "benchmarks/out/record_table.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "python -m supreme_ecg.cli record-table --manifests {input.manifests} --shards {input.shards} --rejects {input.rejects}"
        " --out {output} > {log} 2>&1"
