#!/usr/bin/env bash
# A real single-node SLURM on this machine, for the SLURM tests (and for trying the profile).
#   localslurm.sh install   Debian packages: munge, slurmctld, slurmd, slurm-client, slurmdbd, mariadb
#   localslurm.sh start     configure and start munged, mariadb, slurmdbd, slurmctld, slurmd
#   localslurm.sh stop      stop what `start` started
#   localslurm.sh status    exit 0 when the node is idle and sacct answers
# Loopback only; no systemd needed (daemons are started by hand and write PID files).
# GPUs are a generic resource backed by character devices (links to /dev/null), so GPU rules are
# schedulable on a node without GPUs; torch still sees no CUDA and runs on the CPU.
set -euo pipefail

STATE=${PCAM_SLURM_STATE:-/var/lib/pcam-slurm}
CONF_DIR=/etc/slurm
CLUSTER=pcam
NODE=localhost
FAKE_GPUS=${PCAM_SLURM_GPUS:-2}
PKGS=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

log() { echo "localslurm: $*" >&2; }

need_root() { [ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }; }

install() {
    need_root
    local missing=()
    for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

write_config() {
    local cpus mem_kb mem_mb def_mem
    cpus=$(nproc)
    mem_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
    mem_mb=$(( mem_kb * 85 / 100 / 1024 ))
    def_mem=$(( mem_mb / cpus ))
    mkdir -p "$CONF_DIR" "$STATE"/{ctld,slurmd,log} /run/munge
    local files=""
    for i in $(seq 0 $((FAKE_GPUS - 1))); do
        ln -sfn /dev/null "$STATE/fakegpu$i"
        files+="$STATE/fakegpu$i,"
    done
    cat > "$CONF_DIR/slurm.conf" <<CONF
# Written by tools/slurm/localslurm.sh
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CommunicationParameters=NoInAddrAny
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=300
MailProg=/bin/true
DefMemPerCPU=$def_mem
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$NODE
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStoreFlags=job_comment
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=main Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
    echo "NodeName=$NODE Name=gpu File=${files%,}" > "$CONF_DIR/gres.conf"
    cat > "$CONF_DIR/slurmdbd.conf" <<CONF
# Written by tools/slurm/localslurm.sh
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$CONF_DIR/slurmdbd.conf"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq 1 $((limit * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
    log "timed out waiting for $what"; return 1
}

start() {
    need_root
    install
    write_config
    # munge: its key, then the daemon as the munge user.
    [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key /run/munge; chmod 400 /etc/munge/munge.key
    mkdir -p /var/lib/munge /var/log/munge; chown munge:munge /var/lib/munge /var/log/munge
    if ! pgrep -x munged >/dev/null; then runuser -u munge -- munged; fi
    wait_for 10 munge munge -n
    # MariaDB on its socket only.
    if ! mysqladmin ping >/dev/null 2>&1; then
        mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
        [ -d /var/lib/mysql/mysql ] || mysql_install_db --user=mysql >/dev/null 2>&1
        (mysqld_safe --skip-networking >/dev/null 2>&1 &)
        wait_for 30 mariadb mysqladmin ping
    fi
    running "$STATE/slurmdbd.pid" || slurmdbd
    wait_for 20 slurmdbd bash -c "ss -ltn 2>/dev/null | grep -q ':6819 ' || sacctmgr -n list cluster"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    running "$STATE/slurmctld.pid" || slurmctld
    wait_for 20 slurmctld scontrol ping
    running "$STATE/slurmd.pid" || slurmd -N "$NODE"
    wait_for 30 "node $NODE" bash -c "sinfo -h -n $NODE -o %t | grep -Eq '^(idle|mix|alloc)'"
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    log "up: $(sinfo -h -o '%P %t %G' | head -1)"
}

stop() {
    for d in slurmd slurmctld slurmdbd; do
        if running "$STATE/$d.pid"; then kill "$(cat "$STATE/$d.pid")" || true; fi
    done
    mysqladmin shutdown >/dev/null 2>&1 || true
    pkill -x munged >/dev/null 2>&1 || true
    log "stopped"
}

status() {
    scontrol ping >/dev/null 2>&1 && sacct -n -X -S now-1minutes >/dev/null 2>&1 \
        && sinfo -h -n "$NODE" -o %t | grep -Eq '^(idle|mix|alloc)'
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
