#!/usr/bin/env bash
# `make slurm-demo`: the demo through `snakemake --profile profiles/slurm` on the local test cluster.
# Starts the cluster if it is not up (and stops it afterwards if it started it), runs the workflow in
# its own working directory ($SLURM_DEMO_DIR, default runs/slurm-demo) so the local run's results/
# are left alone, lists the jobs with `sacct`, and, when a local run's summaries exist
# ($SLURM_DEMO_COMPARE, default results/), checks that the SLURM run's are equal.
# $SLURM_DEMO_CONFIGS (default config.yaml) names the config files; extra arguments go to Snakemake.
#
# Local-cluster overrides, each because this machine is not a cluster (`--set-resources` replaces the
# profile's, so pretrain's partition is given again): `pretrain:gpu=0` (the node has
# no GPU; pretrain.device stays auto and resolves to the CPU as in the local run), `pretrain:mem_mb`
# (the profile's 64 GB is more than the node has), `--max-threads` (no rule asks for more CPUs than the
# node has), and status checks every few seconds instead of every 40 s.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
RUN_DIR=${SLURM_DEMO_DIR:-runs/slurm-demo}
COMPARE=${SLURM_DEMO_COMPARE:-results}
read -r -a CONFIGS <<<"${SLURM_DEMO_CONFIGS:-$REPO/config.yaml}"
CLUSTER=tests/slurm/cluster.sh

started=0
if ! sinfo -h >/dev/null 2>&1; then
    bash "$CLUSTER" start
    started=1
fi
cleanup() { if [ "$started" = 1 ]; then bash "$CLUSTER" stop; fi; }
trap cleanup EXIT

since=$(date +%Y-%m-%dT%H:%M:%S)
mkdir -p "$RUN_DIR"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PYTHON" -m snakemake --profile profiles/slurm --directory "$RUN_DIR" --configfile "${CONFIGS[@]}" \
    --set-resources pretrain:slurm_partition=gpu pretrain:gpu=0 pretrain:mem_mb=8000 --max-threads "$(nproc)" \
    --slurm-init-seconds-before-status-checks 5 "$@" all

echo "== SLURM jobs of this run (sacct) =="
sacct -X -P --starttime="$since" -o jobid,comment,partition,alloccpus,state,exitcode,elapsed | column -t -s'|'
"$PYTHON" tests/slurm/compare_runs.py "$COMPARE" "$RUN_DIR/results"
