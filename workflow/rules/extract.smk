"""Extract: report statements -> entities -> standardised multi-hot labels (cached answers)."""

EXTRACT_OUTPUTS = [
    "entities",
    "records",
    "label_vocabulary",
    "labels",
    "unmapped",
    "quarantine",
]
#: extract settings that configure the backend (the rest are stage settings)
BACKEND_KEYS = [
    "model",
    "host",
    "fallback",
    "concurrency",
    "seed",
    "timeout_s",
    "max_retries",
    "max_repairs",
    "backoff_s",
    "max_tokens",
    "keep_alive",
    "api_key_env",
    "prompt_version",
]


rule extract_entities:
    input:
        manifest="results/manifests/mimic.parquet",
    output:
        **{
            name: f"results/extract/{name}.parquet"
            for name in EXTRACT_OUTPUTS
            if name != "label_vocabulary"
        },
        label_vocabulary=report(
            "results/extract/label_vocabulary.parquet",
            category="Extract",
            caption="../report/label_vocabulary.rst",
        ),
    log:
        "logs/extract_entities.log",
    benchmark:
        "benchmarks/out/extract_entities.tsv"
    conda:
        "../../envs/extract.yaml"
    params:
        backend=config["extract"]["backend"],
        unit=config["extract"]["unit"],
        uncertain_policy=config["extract"]["uncertain_policy"],
        min_label_count=config["extract"]["min_label_count"],
        cache_dir=config["extract"]["cache_dir"],
        backend_options=json.dumps(
            {k: v for k, v in config["extract"].items() if k in BACKEND_KEYS},
            sort_keys=True,
        ),
    shell:
        "python -m supreme_ecg.cli extract --manifest {input.manifest} --out-dir results/extract"
        " --backend {params.backend} --unit {params.unit}"
        " --uncertain-policy {params.uncertain_policy}"
        " --min-label-count {params.min_label_count} --cache-dir {params.cache_dir}"
        " --backend-options {params.backend_options:q}"
        " > {log} 2>&1"
