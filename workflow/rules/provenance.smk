"""Provenance: what traces the final tables to their making (code version, config, packages, host, input
and output checksums, extraction backends, where pre-training ran, job times) in results/provenance.json.
It hashes the final tables, so it runs after them; results/summary.md (results_summary) reads it.
"""

from supreme_ecg.provenance import without_secrets


rule provenance:
    input:
        # the final outputs, each checksummed in provenance.json
        tables=["results/zeroshot/summary.csv", "results/linear_probe/summary.csv"],
        checkpoint="results/pretrain/checkpoint.pt",
        vocabulary="results/extract/label_vocabulary.parquet",
        # read for the backends, models and prompts that produced the extracted rows
        entities="results/extract/entities.parquet",
        records="results/extract/records.parquet",
    output:
        report(
            "results/provenance.json",
            category="Provenance",
            caption="../report/provenance.rst",
        ),
    log:
        "logs/provenance.log",
    benchmark:
        "benchmarks/out/provenance.tsv"
    conda:
        "../../envs/pretrain.yaml"
    params:
        config=lambda wildcards: json.dumps(
            without_secrets(config), sort_keys=True, default=str
        ),
        repo=workflow.basedir,
    shell:
        "python -m supreme_ecg.cli provenance --outputs {input.tables} {input.checkpoint} {input.vocabulary}"
        " --entities {input.entities} --records {input.records} --checkpoint {input.checkpoint}"
        " --config {params.config:q} --repo {params.repo:q} --results results --benchmarks benchmarks/out"
        " --out {output} > {log} 2>&1"
