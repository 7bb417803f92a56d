"""Extract: report statements -> open entities -> standardised multi-hot labels (cached answers)."""

EXTRACT_OUTPUTS = [
    "entities",
    "records",
    "entity_clusters",
    "label_vocabulary",
    "labels",
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
        manifest="results/manifests/pretrain_corpus.parquet",
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
        merge_threshold=config["extract"]["merge_threshold"],
        text_encoder=config["pretrain"]["text_encoder"],
        backend_options=json.dumps(
            {k: v for k, v in config["extract"].items() if k in BACKEND_KEYS},
            sort_keys=True,
        ),
    shell:
        "python -m supreme_ecg.cli extract --reports {input.manifest} --out results/extract"
        " --backend {params.backend} --unit {params.unit}"
        " --uncertain-policy {params.uncertain_policy}"
        " --min-label-count {params.min_label_count} --cache-dir {params.cache_dir}"
        " --text-encoder {params.text_encoder:q} --merge-threshold {params.merge_threshold}"
        " --backend-options {params.backend_options:q}"
        " > {log} 2>&1"
