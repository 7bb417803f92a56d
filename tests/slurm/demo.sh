#!/usr/bin/env bash
# `make slurm-demo`: the demo through `snakemake --profile profiles/slurm` on the local test cluster.
# Starts the cluster if it is not up (and stops it afterwards if it started it), runs the workflow in
# its own working directory ($SLURM_DEMO_DIR, default runs/slurm-demo) so the local run's results/
# are left alone, lists the jobs with `sacct`, and, when a local run's summaries exist
# ($SLURM_DEMO_COMPARE, default results/), checks that the SLURM run's are equal.
# $SLURM_DEMO_CONFIGS (default config.yaml) names the config files; extra arguments go to Snakemake.
#
# The local cluster and its overrides: tests/slurm/local.sh.
set -euo pipefail
source "$(dirname "$0")/local.sh"
RUN_DIR=${SLURM_DEMO_DIR:-runs/slurm-demo}
COMPARE=${SLURM_DEMO_COMPARE:-results}
read -r -a CONFIGS <<<"${SLURM_DEMO_CONFIGS:-$REPO/config.yaml}"

since=$(date +%Y-%m-%dT%H:%M:%S)
mkdir -p "$RUN_DIR"
local_snakemake "$RUN_DIR" "$@" all --configfile "${CONFIGS[@]}"  # --configfile last: it takes a list

echo "== SLURM jobs of this run (sacct) =="
sacct -X -P --starttime="$since" -o jobid,comment,partition,alloccpus,state,exitcode,elapsed | column -t -s'|'
"$PYTHON" tests/slurm/compare_runs.py "$COMPARE" "$RUN_DIR/results"
