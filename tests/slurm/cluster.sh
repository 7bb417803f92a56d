#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and `make slurm-demo`:
# munged, MariaDB (loopback only), slurmdbd (so `sacct` has job states), slurmctld and slurmd,
# all run as root with their state under $SUPREME_SLURM_DIR (default /tmp/supreme-slurm).
#
#   tests/slurm/cluster.sh install   # apt-get the Debian packages (slurm-wlm, slurmdbd, munge, mariadb-server)
#   tests/slurm/cluster.sh start     # write the configs, start the daemons, wait until the node is idle
#   tests/slurm/cluster.sh stop      # cancel jobs, stop the daemons
#   tests/slurm/cluster.sh status    # sinfo + sacctmgr show cluster
#
# Partitions "standard" (default) and "gpu" both hold the one node, so profiles/slurm runs unchanged;
# the node has no GPU, so a job asking for one stays pending: run the demo with pretrain.device cpu.
# Commands find the cluster through /etc/slurm/slurm.conf, a link to the config here: inside a job,
# snakemake-executor-plugin-slurm-jobstep drops every SLURM_* variable (SLURM_CONF too) before its
# `srun`, so only the default path reaches it. `start` refuses to replace an /etc/slurm/slurm.conf that
# is not its own link, and `stop` removes the link.
set -euo pipefail

DIR=${SUPREME_SLURM_DIR:-/tmp/supreme-slurm}
CLUSTER=supreme
ACCOUNT=supreme
DB_PORT=${SUPREME_SLURM_DB_PORT:-33061}
export SLURM_CONF=$DIR/etc/slurm.conf
SYSTEM_CONF=/etc/slurm/slurm.conf

log() { echo "cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (the daemons and their configs need it)"; }

install() {
    need_root
    local missing=()
    for bin in slurmctld slurmd slurmdbd sacct munged mariadbd; do
        command -v "$bin" >/dev/null || missing+=("$bin")
    done
    [ ${#missing[@]} = 0 ] && { log "packages already installed"; return; }
    log "installing slurm-wlm slurmdbd munge mariadb-server (missing: ${missing[*]})"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        slurm-wlm slurmdbd munge mariadb-server mariadb-client >/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2; shift 2
    for _ in $(seq "$((seconds * 2))"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "$what did not come up in ${seconds}s (logs in $DIR/log)"
}

running() { [ -f "$DIR/run/$1.pid" ] && kill -0 "$(cat "$DIR/run/$1.pid")" 2>/dev/null; }

write_configs() {
    local cpus mem
    cpus=$(nproc)
    mem=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 9 / 10))
    mkdir -p "$DIR"/{etc,run,log,state,spool,mysql}
    cat >"$DIR/etc/slurm.conf" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
KillWait=10
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
NodeName=localhost CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=standard Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
CONF
    cat >"$DIR/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$DIR/etc/slurmdbd.conf"
    if [ -e "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" != "$SLURM_CONF" ]; then
        die "$SYSTEM_CONF exists and is not this test cluster's: not replacing it"
    fi
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -sfn "$SLURM_CONF" "$SYSTEM_CONF"
}

start_munge() {
    running munged && return
    mkdir -p /run/munge
    chown munge:munge /run/munge 2>/dev/null || true
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null || \
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- munged --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" 2>/dev/null \
        || munged --force --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log"
    wait_for 10 munged bash -c "munge -n | unmunge"
}

start_mariadb() {
    running mariadb && return
    if [ ! -d "$DIR/mysql/mysql" ]; then
        mariadb-install-db --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=normal \
            >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: see $DIR/log/mariadb-install.log"
    fi
    mariadbd --user=root --datadir="$DIR/mysql" --bind-address=127.0.0.1 --port="$DB_PORT" \
        --socket="$DIR/run/mysql.sock" --pid-file="$DIR/run/mariadb.pid" \
        --log-error="$DIR/log/mariadb.log" --innodb-buffer-pool-size=64M &
    wait_for 30 MariaDB mariadb --socket="$DIR/run/mysql.sock" -u root -e "select 1"
}

start_slurm() {
    if ! running slurmdbd; then
        slurmdbd 2>>"$DIR/log/slurmdbd.log" || true  # reads slurmdbd.conf beside $SLURM_CONF
        wait_for 30 slurmdbd sacctmgr -n show cluster
    fi
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    if ! sacctmgr -n -P show account format=account | grep -qx "$ACCOUNT"; then
        sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="supreme-ecg test cluster" \
            organization=local >/dev/null
    fi
    if ! sacctmgr -n -P show user root format=defaultaccount | grep -qx "$ACCOUNT"; then
        sacctmgr -i add user root account="$ACCOUNT" defaultaccount="$ACCOUNT" >/dev/null
    fi
    running slurmctld || slurmctld -f "$DIR/etc/slurm.conf"
    wait_for 30 slurmctld scontrol ping
    running slurmd || slurmd -f "$DIR/etc/slurm.conf"
    wait_for 60 "the node" bash -c "sinfo -h -N -o %t -p standard | grep -Eq '^(idle|mix|alloc)'"
}

start() {
    need_root
    install
    write_configs
    start_munge
    start_mariadb
    start_slurm
    log "up: $(sinfo -h -o '%P %a %D %c %t' | tr '\n' ';')  SLURM_CONF=$SLURM_CONF"
}

stop_pid() {  # stop_pid NAME: TERM, wait up to 20 s, then KILL
    local pidfile=$DIR/run/$1.pid pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

stop() {
    if [ -f "$SLURM_CONF" ] && running slurmctld; then
        scancel --full --quiet --user=root 2>/dev/null || true
    fi
    for daemon in slurmd slurmctld slurmdbd mariadb munged; do stop_pid "$daemon"; done
    [ "$(readlink "$SYSTEM_CONF" 2>/dev/null)" = "$SLURM_CONF" ] && rm -f "$SYSTEM_CONF"
    log "stopped"
}

status() {
    sinfo
    sacctmgr -n show cluster format=cluster,controlhost
}

case "${1:-}" in
install) install ;;
start) start ;;
stop) stop ;;
status) status ;;
*) die "usage: $0 install|start|stop|status" ;;
esac
