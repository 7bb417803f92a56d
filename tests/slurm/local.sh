# Sourced by demo.sh and drills.sh: the repository, its Python, the local cluster (started here if it is
# not up, and then stopped on exit) and `local_snakemake`, Snakemake through profiles/slurm with the
# overrides a 2-core node without a GPU needs, each because this machine is not a cluster:
#   pretrain:gpu=0        the node has no GPU; pretrain.device stays auto and resolves to the CPU as in
#                         the local run;
#   pretrain:mem_mb=8000  the profile's 64 GB is more than the node has;
#   pretrain:slurm_partition=gpu  given again, since --set-resources replaces the profile's;
#   --max-threads         no rule asks for more CPUs than the node has;
#   status checks every 5 s instead of every 40 s.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$PWD
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
CLUSTER=tests/slurm/cluster.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

started_cluster=0
if ! sinfo -h >/dev/null 2>&1; then
    bash "$CLUSTER" start
    started_cluster=1
fi
stop_cluster_if_started() { if [ "$started_cluster" = 1 ]; then bash "$CLUSTER" stop; fi; }
trap stop_cluster_if_started EXIT

local_snakemake() {  # local_snakemake WORKDIR ARGS...: the workflow in WORKDIR on the local cluster
    local workdir=$1; shift
    "$PYTHON" -m snakemake --profile profiles/slurm --directory "$workdir" \
        --set-resources pretrain:slurm_partition=gpu pretrain:gpu=0 pretrain:mem_mb=8000 \
        --max-threads "$(nproc)" --slurm-init-seconds-before-status-checks 5 "$@"
}
