#!/usr/bin/env bash
# A one-host Slurm cluster on this machine, from Debian's packages, for trying and testing
# `torchx run -s slurm launchers/components.py:train ...` against a real Slurm.
#
#   sudo bash scripts/slurm_local.sh          # install if needed, configure, start (idempotent)
#   sudo bash scripts/slurm_local.sh status   # which daemons run; the node's state
#   sudo bash scripts/slurm_local.sh stop     # stop every daemon this script started
#
# What it runs, as root, without systemd and without cgroups (containers have neither):
#   munged (as user munge)   authentication between the Slurm daemons and commands
#   mysqld_safe (MariaDB)    storage for slurmdbd
#   slurmdbd                 accounting: torchx's slurm scheduler reads job states with `sacct`
#                            (`torchx status`, `torchx log`, `torchx run --wait` need it)
#   slurmctld, slurmd        the controller and this host as its only node
# Config: /etc/slurm/slurm.conf (partition `debug`, the default; the node's CPUs and memory
# from `slurmd -C`; DefMemPerCPU so a job without --mem does not take the whole node;
# proctrack/linuxproc + task/none instead of cgroups), /etc/slurm/slurmdbd.conf.
# Logs: /var/log/slurm/*.log, /var/log/distrec-slurm-mysqld.log.
#
# Needs root and apt-get (Debian 12 / Ubuntu 22.04+: Slurm 21-23). Exit status 3 when either
# is missing, so CI can tell "cannot run here" from "broken".
# This is a test cluster: one host, one partition, no fair share, no security hardening.
set -euo pipefail

CLUSTER=${SLURM_LOCAL_CLUSTER:-distrec}
HOST=$(hostname -s)
CONF=/etc/slurm
LOG=/var/log/slurm
DB_PASS=distrec-local-slurmdbd
MYSQL_LOG=/var/log/distrec-slurm-mysqld.log
PACKAGES=(munge mariadb-server slurmctld slurmd slurm-client slurmdbd)

say() { echo "slurm_local: $*" >&2; }
die() { say "error: $*"; exit "${2:-1}"; }

alive() {  # alive PIDFILE: the process in PIDFILE runs
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2; shift 2
    for _ in $(seq $((secs * 4))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.25
    done
    die "$what did not come up within ${secs}s; see the logs in $LOG and $MYSQL_LOG"
}

need_root_and_apt() {
    [ "$(id -u)" = 0 ] || die "needs root (it installs packages and starts system daemons)" 3
    command -v apt-get >/dev/null || command -v slurmctld >/dev/null || die "needs apt-get (Debian/Ubuntu) to install Slurm" 3
}

install() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} = 0 ] && return
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists of a fresh machine may be stale or absent: update once on failure.
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } \
        || die "apt-get install ${missing[*]} failed"
}

write_if_changed() {  # write_if_changed FILE MODE OWNER < content; status 0 when it changed
    local new; new=$(cat)
    if [ -f "$1" ] && [ "$(cat "$1")" = "$new" ]; then return 1; fi
    printf '%s\n' "$new" > "$1"
    chmod "$2" "$1"; chown "$3" "$1"
    return 0
}

configure() {
    mkdir -p "$CONF" "$LOG" /var/spool/slurmctld /var/spool/slurmd /run/munge /run/mysqld
    chown munge:munge /run/munge; chown mysql:mysql /run/mysqld
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key

    # slurmctld must resolve its own host name (some containers' /etc/hosts lack it).
    getent hosts "$HOST" >/dev/null || { say "adding $HOST to /etc/hosts"; echo "127.0.0.1 $HOST" >> /etc/hosts; }
    # This host as seen by slurmd: "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105". Slurm
    # drains a node that registers with less memory than configured: configure 95% of it.
    local node mem; node=$(slurmd -C | head -n1)
    [[ $node == NodeName=*RealMemory=* ]] || die "slurmd -C printed no node line: $node"
    mem=${node##*RealMemory=}; mem=${mem%% *}
    node="NodeName=$HOST ${node#NodeName=* }"
    node="${node/RealMemory=$mem/RealMemory=$((mem * 95 / 100))}"
    CHANGED=0
    write_if_changed "$CONF/slurm.conf" 644 root:root <<EOF && CHANGED=1 || true
# Written by distrec's scripts/slurm_local.sh: a one-host test cluster. Not for production.
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# No cgroups (containers, no systemd): track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# CPUs and memory are consumable; a job without --mem gets 1 GB per CPU, not the whole node.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
# torchx reads job states with sacct: accounting through slurmdbd.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$node State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    write_if_changed "$CONF/slurmdbd.conf" 600 root:root <<EOF && CHANGED=1 || true
# Written by distrec's scripts/slurm_local.sh.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    wait_for 20 munged sh -c 'munge -n | unmunge'
}

start_mysql() {
    if mysqladmin ping >/dev/null 2>&1; then :; else
        say "starting MariaDB (mysqld_safe)"
        [ -d /var/lib/mysql/mysql ] || mysql_install_db --user=mysql >/dev/null
        setsid nohup mysqld_safe --user=mysql >>"$MYSQL_LOG" 2>&1 </dev/null &
        wait_for 60 MariaDB mysqladmin ping
    fi
    mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
              CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurm() {
    if [ "$CHANGED" = 1 ]; then  # a new config reaches running daemons by a restart
        stop_slurm quiet
    fi
    if ! alive /run/slurmdbd.pid; then
        say "starting slurmdbd"
        slurmdbd
        wait_for 60 slurmdbd sacctmgr -n show cluster
    fi
    sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER" \
        || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    if ! alive /run/slurmctld.pid; then
        say "starting slurmctld"
        slurmctld
        wait_for 60 slurmctld scontrol ping
    fi
    if ! alive /run/slurmd.pid; then
        say "starting slurmd"
        slurmd
    fi
    # A node left down or drained by an earlier run (e.g. killed daemons) comes back.
    if sinfo -h -n "$HOST" -o %t | grep -Eq '^(down|drain|drng|fail)'; then
        scontrol update nodename="$HOST" state=resume || true
    fi
    wait_for 60 "node $HOST" sh -c "sinfo -h -n $HOST -o %t | grep -Eq '^(idle|mix|alloc)'"
}

stop_pid() {  # stop_pid PIDFILE NAME
    alive "$1" || return 0
    local pid; pid=$(cat "$1")
    [ "${2:-}" = quiet ] || say "stopping $(basename "$1" .pid) ($pid)"
    kill "$pid"
    for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
}

stop_slurm() {
    stop_pid /run/slurmd.pid "${1:-}"
    stop_pid /run/slurmctld.pid "${1:-}"
    stop_pid /run/slurmdbd.pid "${1:-}"
}

stop_all() {
    stop_slurm
    if command -v mysqladmin >/dev/null && mysqladmin ping >/dev/null 2>&1; then
        say "stopping MariaDB"; mysqladmin shutdown
    fi
    stop_pid /run/munge/munged.pid
}

status() {
    local rc=0
    for d in slurmdbd slurmctld slurmd; do
        if alive /run/$d.pid; then echo "$d: running ($(cat /run/$d.pid))"; else echo "$d: stopped"; rc=1; fi
    done
    if mysqladmin ping >/dev/null 2>&1; then echo "mariadb: running"; else echo "mariadb: stopped"; rc=1; fi
    if alive /run/munge/munged.pid; then echo "munged: running"; else echo "munged: stopped"; rc=1; fi
    [ $rc = 0 ] && sinfo
    return $rc
}

case "${1:-start}" in
    start)
        need_root_and_apt
        t0=$SECONDS
        install
        t1=$SECONDS
        configure
        start_munge
        start_mysql
        start_slurm
        say "cluster '$CLUSTER' up: partition debug, node $HOST (install $((t1 - t0))s, total $((SECONDS - t0))s)"
        sinfo >&2
        ;;
    stop) [ "$(id -u)" = 0 ] || die "needs root" 3; stop_all ;;
    status) status ;;
    *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
