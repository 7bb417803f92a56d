#!/usr/bin/env bash
# Fault drills on the local SLURM cluster (tests/slurm/cluster.sh), through profiles/slurm:
#   1. scancel the pretrain job mid-epoch, rerun  -> it resumes from its last saved state, not from zero;
#   2. scancel the pretrain job again, this time with the profile's `retries: 1` in force
#      -> Snakemake resubmits it by itself and the new attempt resumes;
#   3. scancel one preprocess shard job while its sibling runs -> the rerun redoes only that shard.
# Needs a finished `make slurm-demo` (runs/slurm-demo): the drills copy it to runs/drills and drop the
# outputs they exercise. Prints what each drill showed; exits 1 if any did not behave. DRILLS="1 3"
# runs some of them.
set -euo pipefail
SOURCE=${SLURM_DEMO_DIR:-runs/slurm-demo}
DRILL=${DRILLS_DIR:-runs/drills}
cd "$(dirname "$0")/../.."
[ -f "$SOURCE/results/summary.md" ] || { echo "drills: run \`make slurm-demo\` first ($SOURCE)" >&2; exit 2; }
source tests/slurm/local.sh

rm -rf "$DRILL" && cp -a "$SOURCE" "$DRILL"
failures=0
report() { echo "DRILL $1: $2 — $3"; [ "$2" = PASS ] || failures=$((failures + 1)); }

smk() {  # smk LOGFILE ARGS...: the workflow in the drill folder on the local cluster
    local logfile=$1; shift
    local_snakemake "$DRILL" "$@" --configfile "$REPO/config.yaml" >"$logfile" 2>&1  # --configfile last
}

job_of() {  # job_of COMMENT_PREFIX: id of the running SLURM job whose comment starts so
    squeue -h -t R -o '%i %k' | awk -v p="$1" 'index($2, p) == 1 {print $1; exit}'
}

wait_until() {  # wait_until SECONDS COMMAND...
    local end=$((SECONDS + $1)); shift
    until "$@"; do [ $SECONDS -lt $end ] || return 1; sleep 2; done
}

epochs_logged() {  # whole epochs the pretrain log reports
    local n
    n=$(grep -c "epoch [0-9]*/[0-9]*: train_loss" "$DRILL/logs/pretrain.log" 2>/dev/null) || true
    echo "${n:-0}"
}
mid_epoch() { [ "$(epochs_logged)" -ge "$1" ] && [ -n "$(job_of rule_pretrain)" ]; }

kill_pretrain_after_epochs() {  # wait for N whole epochs plus a little, then scancel the pretrain job
    wait_until 900 mid_epoch "$1" || return 1
    sleep 3
    local job; job=$(job_of rule_pretrain)
    echo "$job $(epochs_logged)"
    scancel "$job"
}

fresh_pretrain() { rm -rf "$DRILL/cache/pretrain" "$DRILL/results/pretrain" "$DRILL/logs/pretrain.log"; }
resumed_line() { grep -o "resumed from [^;]*" "$DRILL/logs/pretrain.log" | head -1; }
metrics_epochs() {
    "$PYTHON" -c "import pandas as pd, sys; e = pd.read_parquet(sys.argv[1]).epoch; print(len(e), e.is_unique, e.min(), e.max())" \
        "$DRILL/results/pretrain/metrics.parquet"
}

# --- 1: scancel pretrain, rerun by hand -----------------------------------------------------------
drill_1() {
fresh_pretrain
smk "$DRILL/drill1-first.log" --retries 0 results/pretrain/checkpoint.pt &
runner=$!
read -r job at_kill < <(kill_pretrain_after_epochs 3) || true
wait "$runner" && first_rc=0 || first_rc=$?
state=$(sacct -X -n -P -j "${job:-0}" -o state | head -1)
smk "$DRILL/drill1-rerun.log" --retries 0 results/pretrain/checkpoint.pt && rerun_rc=0 || rerun_rc=$?
resumed=$(resumed_line)
if [ "$first_rc" != 0 ] && [[ "$state" == CANCELLED* ]] && [ "$rerun_rc" = 0 ] && [ -n "$resumed" ]; then
    report 1 PASS "job $job cancelled after $at_kill whole epochs (sacct: $state, snakemake exit $first_rc); rerun: $resumed; metrics rows/unique/first/last epoch: $(metrics_epochs)"
else
    report 1 FAIL "job=${job:-none} state=$state first_rc=$first_rc rerun_rc=$rerun_rc resumed='${resumed}' (logs in $DRILL)"
fi

}

# --- 2: scancel pretrain under the profile's retries -------------------------------------------------
drill_2() {
fresh_pretrain
smk "$DRILL/drill2.log" results/pretrain/checkpoint.pt &
runner=$!
read -r job at_kill < <(kill_pretrain_after_epochs 2) || true
wait "$runner" && rc=0 || rc=$?
states=$(sacct -X -n -P --starttime=2000-01-01 -o jobid,comment,state | awk -F'|' -v j="${job:-0}" '$1 >= j && $2 == "rule_pretrain" {print $1 ":" $3}' | tr '\n' ' ')
resumed=$(resumed_line)
if [ "$rc" = 0 ] && [[ "$states" == *CANCELLED*COMPLETED* ]] && [ -n "$resumed" ]; then
    report 2 PASS "job $job cancelled after $at_kill epochs; Snakemake resubmitted it itself (pretrain jobs: $states); attempt 2: $resumed; metrics: $(metrics_epochs)"
else
    report 2 FAIL "rc=$rc pretrain jobs: '$states' resumed='$resumed' (log $DRILL/drill2.log)"
fi

}

# --- 3: scancel one preprocess shard -----------------------------------------------------------------
drill_3() {
shards=(results/preprocessed/ptbxl/shard-0-of-2.parquet results/preprocessed/ptbxl/shard-1-of-2.parquet)
(cd "$DRILL" && rm -f "${shards[@]}" results/preprocessed/ptbxl/rejects-*-of-2.parquet)
smk "$DRILL/drill3-first.log" --retries 0 --keep-going "${shards[@]}" &
runner=$!
both_running() { [ -n "$(job_of rule_preprocess_shard_wildcards_ptbxl_0)" ] && [ -n "$(job_of rule_preprocess_shard_wildcards_ptbxl_1)" ]; }
wait_until 300 both_running || true
victim=$(job_of rule_preprocess_shard_wildcards_ptbxl_0)
[ -n "$victim" ] && scancel "$victim"
wait "$runner" || true
sibling_before=$(stat -c %Y "$DRILL/${shards[1]}" 2>/dev/null || echo missing)
plan=$("$PYTHON" -m snakemake -n --directory "$DRILL" "${shards[@]}" --configfile "$REPO/config.yaml" 2>&1 \
    | awk '$1 == "preprocess_shard" {print $2; exit}') || true
smk "$DRILL/drill3-rerun.log" --retries 0 "${shards[@]}" && rerun_rc=0 || rerun_rc=$?
sibling_after=$(stat -c %Y "$DRILL/${shards[1]}" 2>/dev/null || echo missing)
if [ -n "$victim" ] && [ "$plan" = 1 ] && [ "$rerun_rc" = 0 ] && [ "$sibling_before" = "$sibling_after" ] \
    && [ -f "$DRILL/${shards[0]}" ]; then
    report 3 PASS "shard 0's job $victim cancelled while shard 1 ran; the rerun planned $plan preprocess_shard job and left shard 1 (mtime $sibling_after) untouched"
else
    report 3 FAIL "victim=${victim:-none} planned=${plan:-0} rerun_rc=$rerun_rc sibling $sibling_before -> $sibling_after"
fi

}

for n in ${DRILLS:-1 2 3}; do "drill_$n"; done
echo "== pretrain and preprocess jobs of the drills (sacct) =="
sacct -X -P -n --starttime=2000-01-01 -o jobid,comment,state,elapsed | grep -E "rule_pretrain\b|rule_preprocess_shard" | tail -12 | column -t -s'|'
exit $((failures > 0))
