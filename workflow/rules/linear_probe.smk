"""Linear probes: frozen encoder features per task (pre-trained and random-init), a linear head per task
and share of the training labels, early-stopped on the validation split; test AUCs with intervals.
"""


rule task_features:
    input:
        checkpoint="results/pretrain/checkpoint.pt",
        baseline="results/baseline/random_init.pt",
        labels="results/labels/{task}.parquet",
        shards=dataset_shards,
    output:
        "results/features/{task}.parquet",
    log:
        "logs/features/{task}.log",
    benchmark:
        "benchmarks/out/features/{task}.tsv"
    conda:
        "../../envs/pretrain.yaml"
    threads: 2
    shell:
        "python -m supreme_ecg.cli features --checkpoint {input.checkpoint}"
        " --baseline-checkpoint {input.baseline} --shards {input.shards}"
        " --task-labels {input.labels} --out {output} --threads {threads} > {log} 2>&1"


rule linear_probe:
    input:
        features="results/features/{task}.parquet",
        labels="results/labels/{task}.parquet",
    output:
        per_class="results/linear_probe/{task}/{percent}/per_class.parquet",
        bootstrap="results/linear_probe/{task}/{percent}/bootstrap.parquet",
        probe="results/linear_probe/{task}/{percent}/probe.json",
    log:
        "logs/linear_probe/{task}/{percent}.log",
    benchmark:
        "benchmarks/out/linear_probe/{task}/{percent}.tsv"
    conda:
        "../../envs/pretrain.yaml"
    params:
        seeds=",".join(str(s) for s in config["linear_probe"]["seeds"]),
        settings=json.dumps(
            {
                k: v
                for k, v in config["linear_probe"].items()
                if k not in ("percents", "seeds")
            },
            sort_keys=True,
        ),
        bootstrap=BOOTSTRAP_ARGS,
    shell:
        "python -m supreme_ecg.cli linear-probe --task {wildcards.task} --features {input.features}"
        " --task-labels {input.labels} --percent {wildcards.percent}"
        " --out-dir results/linear_probe/{wildcards.task}/{wildcards.percent}"
        " --seeds {params.seeds} --settings {params.settings:q} {params.bootstrap} > {log} 2>&1"


rule linear_probe_summary:
    input:
        expand(
            "results/linear_probe/{task}/{percent}/probe.json",
            task=TASKS,
            percent=PROBE_PERCENTS,
        ),
    output:
        report(
            "results/linear_probe/summary.csv",
            category="Linear probe",
            caption="../report/linear_probe_summary.rst",
        ),
    log:
        "logs/linear_probe/summary.log",
    benchmark:
        "benchmarks/out/linear_probe/summary.tsv"
    conda:
        "../../envs/pretrain.yaml"
    params:
        dirs=lambda wildcards, input: [os.path.dirname(p) for p in input],
    shell:
        "python -m supreme_ecg.cli linear-probe-summary --probe-dirs {params.dirs} --out {output} > {log} 2>&1"


rule results_summary:
    input:
        zeroshot="results/zeroshot/summary.csv",
        probes="results/linear_probe/summary.csv",
        provenance="results/provenance.json",
    output:
        md=report(
            "results/summary.md",
            category="Summary",
            caption="../report/results_summary.rst",
        ),
        plot=report(
            "results/plots/overview.png",
            category="Summary",
            caption="../report/overview.rst",
        ),
    log:
        "logs/results_summary.log",
    benchmark:
        "benchmarks/out/results_summary.tsv"
    conda:
        "../../envs/pretrain.yaml"
    shell:
        "python -m supreme_ecg.cli results-summary --zeroshot {input.zeroshot} --probes {input.probes}"
        " --provenance {input.provenance} --out {output.md} --plot {output.plot} > {log} 2>&1"
