#!/usr/bin/env bash
# cluster/dev-slurm.sh start|stop|status [--nodes 2] - a REAL single-node SLURM on this machine,
# for the tests and for trying the slurm backend (`--backend slurm --profile local-slurm`);
# with --nodes 2, a second, two-node cluster beside it (below).
#
# Debian 12 packages (Slurm 22.05, MUNGE, MariaDB), no systemd: every daemon is started by hand
# and writes a pid file; `stop` ends each one by the pid in its own file, never by name.
# Accounting runs through slurmdbd on a local MariaDB (socket only, --skip-networking): submitit
# reads job states through `sacct`, and without it a cancelled job is never "done".
# Needs root (CI and this development machine run as root). Idempotent: `start` on a running
# cluster is a no-op (~0.5 s); a changed slurm.conf restarts slurmctld and slurmd.
#
# Settings (environment):
#   BILMA_SLURM_CPUS            CPUs of the node (default: nproc; more oversubscribes)
#   BILMA_SLURM_PARTITION       partition name (default debug, as in profiles/local-slurm.yaml)
#   BILMA_SLURM_CRED_EXPIRE     seconds; a requeued job waits this + 1 s (default 10; SLURM's 120)
#   BILMA_SLURM_MAX_ARRAY_SIZE  MaxArraySize (default 64: small, so that grids larger than it
#                               are split into several arrays on this cluster too)
#   BILMA_SLURM_TIMEOUT         seconds for each wait step (default 90)
#   stop --purge                also drops the accounting DB and Slurm's state (job ids restart)
#
# --nodes 2: a SEPARATE cluster for multi-node jobs (srun across nodes, DDP over two nodes),
# beside the single-node one and independent of it: ClusterName bilmatwo, its own slurm.conf
# (/etc/slurm-two), state, logs, pid files and ports (slurmctld 7817; slurmd n1 7821, n2 7822).
# Both nodes are slurmd processes of this machine at 127.0.0.1 (`slurmd -N n1`, `slurmd -N n2`);
# their names resolve nowhere, as on clusters whose node names are not DNS names. No
# accounting (sacct): nothing run on it waits on job states through sacct. It shares munged (one
# key) with the single-node cluster: `stop --nodes 2` leaves munged running, plain `stop` ends
# it. Client commands (sinfo, sbatch, the slurm backend) reach it through SLURM_CONF:
#   SLURM_CONF=/etc/slurm-two/slurm.conf sinfo -N     (n1 and n2 idle)
set -uo pipefail

CPUS=${BILMA_SLURM_CPUS:-$(nproc)}
PARTITION=${BILMA_SLURM_PARTITION:-debug}
CRED_EXPIRE=${BILMA_SLURM_CRED_EXPIRE:-10}
MAX_ARRAY=${BILMA_SLURM_MAX_ARRAY_SIZE:-64}
TIMEOUT=${BILMA_SLURM_TIMEOUT:-90}
HOST=$(hostname -s)
DBPASS=bilma-dev-local # MariaDB has no TCP port (--skip-networking): local socket only
LOGDIR=/var/log/slurm
# the two-node cluster (--nodes 2)
TWO_CONF_DIR=/etc/slurm-two
TWO_CONF=$TWO_CONF_DIR/slurm.conf
TWO_SPOOL=/var/spool/slurm-two
TWO_LOGDIR=/var/log/slurm-two
TWO_RUN=/run/slurm-two
TWO_NODES=(n1 n2)
T_START=$SECONDS
# the logs `die` shows
DIE_LOGS=("$LOGDIR"/slurmctld.log "$LOGDIR"/slurmd.log "$LOGDIR"/slurmdbd.log
  /var/log/munge/munged.log /var/log/mysql/error.log)

log() { echo "[dev-slurm $(date +%T)] $*" >&2; }
die() {
  log "ERROR: $*"
  for f in "${DIE_LOGS[@]}"; do
    [[ -f $f ]] && { echo "----- tail $f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}

# alive PIDFILE COMM: the pid in PIDFILE is a live (not zombie) process named COMM
alive() {
  local f=$1 comm=$2 pid st
  [[ -s $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || return 1
  [[ $(<"/proc/$pid/comm") == "$comm" ]] || return 1
  st=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
  [[ $st != Z ]]
}

# wait_until DESCRIPTION CMD...: retry CMD until it succeeds, at most TIMEOUT seconds
wait_until() {
  local what=$1 t0=$SECONDS
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - t0 < TIMEOUT)) || die "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.2
  done
}

# stop_pid PIDFILE COMM: SIGTERM, up to 30 s (slurmctld saves state, mariadbd flushes), SIGKILL
stop_pid() {
  local f=$1 comm=$2 pid i
  alive "$f" "$comm" || return 0
  pid=$(<"$f")
  log "stopping $comm (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    alive "$f" "$comm" || return 0
    sleep 0.2
  done
  log "$comm (pid $pid) ignored SIGTERM for 30 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

install_packages() {
  local p missing=() added_policy=0 t0=$SECONDS
  for p in munge slurmctld slurmd slurm-client slurmdbd mariadb-server; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing: ${missing[*]}"
  # A policy-rc.d that denies every start: apt's maintainer scripts would otherwise start
  # munge and mariadb with their defaults (no systemd here); this script starts them itself.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq || die "apt-get update failed"
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
  ((added_policy)) && rm -f /usr/sbin/policy-rc.d
  log "packages installed in $((SECONDS - t0)) s"
}

# slurm_conf CLUSTER OWN EXTRA: the slurm.conf lines both clusters share, up to accounting and
# nodes; OWN: the cluster's own ports, state, pid and log files (lines); EXTRA: one more line
# (may be empty) where the single-node cluster has always had its overrides.
slurm_conf() {
  cat <<EOF
ClusterName=$1
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=${CRED_EXPIRE}
$2
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
$3
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
KillWait=30
MinJobAge=3600
MaxArraySize=${MAX_ARRAY}
EOF
}

write_config() { # sets CONF_CHANGED
  local mem overrides="" conf
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo) # under the real memory
  ((CPUS > $(nproc))) && overrides="SlurmdParameters=config_overrides"
  install -d -m 0755 /etc/slurm "$LOGDIR" /var/spool/slurmctld /var/spool/slurmd
  # KillWait=30 (as on most clusters): after scancel or the time limit, a trial has 30 s
  # between SIGTERM and SIGKILL to finish its step and save ckpt/last.pt.
  conf=$(
    echo "# Generated by cluster/dev-slurm.sh: single-node SLURM for development and CI. Do not edit."
    slurm_conf bilmadev "SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOGDIR}/slurmctld.log
SlurmdLogFile=${LOGDIR}/slurmd.log" "$overrides"
    cat <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${mem} State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  )
  CONF_CHANGED=0
  if [[ ! -f /etc/slurm/slurm.conf || "$(cat /etc/slurm/slurm.conf)" != "$conf" ]]; then
    printf '%s\n' "$conf" >/etc/slurm/slurm.conf && chmod 644 /etc/slurm/slurm.conf
    CONF_CHANGED=1
  fi
  cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=${LOGDIR}/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=${DBPASS}
StorageLoc=slurm_acct_db
EOF
  chmod 600 /etc/slurm/slurmdbd.conf # slurmdbd refuses a group- or world-readable file
}

node_ready() {
  local st
  st=$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null) || return 1
  case $st in
    idle | mixed | allocated | completing) return 0 ;;
    drained | draining) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null; return 1 ;;
    *) return 1 ;;
  esac
}

start_munge() {
  # munge: runs as user munge; /run is a tmpfs, so its directory is recreated every time
  [[ -s /etc/munge/munge.key ]] || mungekey --create --force --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  if ! alive /run/munge/munged.pid munged; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged || die "munged did not start"
  fi
  wait_until "munged" bash -c 'munge -n | unmunge'
}

start() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
  install_packages
  write_config
  start_munge
  # MariaDB (log where user mysql can write) + slurmdbd
  install -d -o mysql -g mysql -m 0755 /run/mysqld /var/log/mysql
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    log "initialising MariaDB's data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null ||
      die "mariadb-install-db failed"
  fi
  if ! alive /run/mysqld/mysqld.pid mariadbd; then
    log "starting mariadbd (socket only)"
    setsid -f /usr/sbin/mariadbd --user=mysql --skip-networking \
      --pid-file=/run/mysqld/mysqld.pid --socket=/run/mysqld/mysqld.sock \
      --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
      --log-error=/var/log/mysql/error.log </dev/null >/dev/null 2>&1
  fi
  wait_until "mariadbd" mariadb -e 'SELECT 1'
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DBPASS}';
      ALTER USER 'slurm'@'localhost' IDENTIFIED BY '${DBPASS}';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" ||
    die "could not create MariaDB user slurm"
  if ! alive /run/slurmdbd.pid slurmdbd; then
    log "starting slurmdbd"
    /usr/sbin/slurmdbd || die "slurmdbd did not start"
  fi
  wait_until "slurmdbd" sacctmgr -n show cluster
  # slurmctld + slurmd
  if ((CONF_CHANGED)) && { alive /run/slurmctld.pid slurmctld || alive /run/slurmd.pid slurmd; }; then
    log "slurm.conf changed: restarting slurmctld and slurmd"
    stop_pid /run/slurmd.pid slurmd
    stop_pid /run/slurmctld.pid slurmctld
  fi
  if ! alive /run/slurmctld.pid slurmctld; then
    log "starting slurmctld"
    /usr/sbin/slurmctld || die "slurmctld did not start"
  fi
  wait_until "slurmctld" scontrol ping
  if ! alive /run/slurmd.pid slurmd; then
    log "starting slurmd"
    /usr/sbin/slurmd -N "$HOST" || die "slurmd did not start"
  fi
  wait_until "node $HOST to become idle" node_ready
  log "cluster up in $((SECONDS - T_START)) s: $(sinfo -h -N -o '%N %P %T cpus=%c mem=%mMB')"
}

# cancel_jobs: cancel every job of the cluster SLURM_CONF names and wait until they have left
# the queue. Before slurmd stops: the
# slurmstepds of a job still running then outlive it, and its processes with them.
cancel_jobs() {
  local jobs i
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
  [[ -n $jobs ]] || return 0
  log "cancelling jobs: $(tr '\n' ' ' <<<"$jobs")"
  # shellcheck disable=SC2086  # one argument per job id
  scancel $jobs 2>/dev/null || true
  # KillWait (30 s) from SIGTERM to SIGKILL, then the job completes: up to 45 s
  for ((i = 0; i < 225; i++)); do
    [[ -z $(squeue -h -o %A 2>/dev/null) ]] && return 0
    sleep 0.2
  done
  log "jobs still in the queue after 45 s: $(squeue -h -o '%A %T' 2>/dev/null | paste -sd ' ')"
}

stop() {
  local purge=${1:-}
  alive /run/slurmctld.pid slurmctld && cancel_jobs
  stop_pid /run/slurmd.pid slurmd
  stop_pid /run/slurmctld.pid slurmctld
  stop_pid /run/slurmdbd.pid slurmdbd
  if [[ $purge == --purge ]] && alive /run/mysqld/mysqld.pid mariadbd; then
    # through SQL: deleting InnoDB files by hand leaves its data dictionary inconsistent
    mariadb -e 'DROP DATABASE IF EXISTS slurm_acct_db' || log "could not drop slurm_acct_db"
  fi
  stop_pid /run/mysqld/mysqld.pid mariadbd
  stop_pid /run/munge/munged.pid munged
  if [[ $purge == --purge ]]; then
    log "purging Slurm state, logs and generated configs (job ids restart at 1)"
    rm -rf /var/spool/slurmctld /var/spool/slurmd "$LOGDIR" \
      /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf
  fi
  log "stopped"
}

status() {
  local d ok=0
  for d in "munged /run/munge/munged.pid" "mariadbd /run/mysqld/mysqld.pid" \
    "slurmdbd /run/slurmdbd.pid" "slurmctld /run/slurmctld.pid" "slurmd /run/slurmd.pid"; do
    set -- $d
    if alive "$2" "$1"; then echo "$1: running (pid $(<"$2"))"; else echo "$1: stopped"; ok=1; fi
  done
  if ((ok == 0)); then
    sinfo -h -N -o 'node %N: %T, partition %P, cpus %c' 2>/dev/null || ok=1
    echo "MaxArraySize: $(scontrol show config 2>/dev/null | awk '/^MaxArraySize/ {print $3}')"
  fi
  return $ok
}

# ----------------------------------------------------------------------------- --nodes 2

write_two_config() { # sets CONF_CHANGED
  local mem conf node port=7821
  # each node claims under half the memory: together no more than the machine has
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.45)}' /proc/meminfo)
  install -d -m 0755 "$TWO_CONF_DIR" "$TWO_LOGDIR" "$TWO_SPOOL/ctld" "$TWO_RUN"
  for node in "${TWO_NODES[@]}"; do install -d -m 0755 "$TWO_SPOOL/$node"; done
  conf=$(
    echo "# Generated by cluster/dev-slurm.sh start --nodes 2: a two-node SLURM (two slurmd of this"
    echo "# machine) beside the single-node one, for multi-node tests. Do not edit."
    slurm_conf bilmatwo "SlurmctldPort=7817
StateSaveLocation=${TWO_SPOOL}/ctld
SlurmdSpoolDir=${TWO_SPOOL}/%n
SlurmctldPidFile=${TWO_RUN}/slurmctld.pid
SlurmdPidFile=${TWO_RUN}/slurmd-%n.pid
SlurmctldLogFile=${TWO_LOGDIR}/slurmctld.log
SlurmdLogFile=${TWO_LOGDIR}/slurmd-%n.log" SlurmdParameters=config_overrides
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    for node in "${TWO_NODES[@]}"; do
      echo "NodeName=${node} NodeAddr=127.0.0.1 Port=$((port++)) CPUs=${CPUS} RealMemory=${mem} State=UNKNOWN"
    done
    echo "PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  )
  CONF_CHANGED=0
  if [[ ! -f $TWO_CONF || "$(cat "$TWO_CONF")" != "$conf" ]]; then
    printf '%s\n' "$conf" >"$TWO_CONF" && chmod 644 "$TWO_CONF"
    CONF_CHANGED=1
  fi
}

two_pidfile() { echo "$TWO_RUN/slurmd-$1.pid"; }

two_nodes_ready() {
  local node st n=0
  while read -r node st; do
    case $st in
      idle | mixed | allocated | completing) ((n += 1)) ;;
      drained | draining) scontrol update NodeName="$node" State=RESUME 2>/dev/null ;;
    esac
  done < <(sinfo -h -N -o '%N %T' 2>/dev/null)
  ((n == ${#TWO_NODES[@]}))
}

start_two() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
  DIE_LOGS=("$TWO_LOGDIR"/slurmctld.log "$TWO_LOGDIR"/slurmd-n1.log "$TWO_LOGDIR"/slurmd-n2.log
    /var/log/munge/munged.log)
  install_packages
  write_two_config
  start_munge
  local node
  if ((CONF_CHANGED)); then
    for node in "${TWO_NODES[@]}"; do
      if alive "$(two_pidfile "$node")" slurmd || alive "$TWO_RUN/slurmctld.pid" slurmctld; then
        log "$TWO_CONF changed: restarting the two-node cluster"
        stop_two_daemons
        break
      fi
    done
  fi
  if ! alive "$TWO_RUN/slurmctld.pid" slurmctld; then
    log "starting slurmctld (bilmatwo, port 7817)"
    /usr/sbin/slurmctld -f "$TWO_CONF" || die "slurmctld (bilmatwo) did not start"
  fi
  wait_until "slurmctld (bilmatwo)" scontrol ping
  for node in "${TWO_NODES[@]}"; do
    if ! alive "$(two_pidfile "$node")" slurmd; then
      log "starting slurmd $node"
      /usr/sbin/slurmd -f "$TWO_CONF" -N "$node" || die "slurmd $node did not start"
    fi
  done
  wait_until "nodes ${TWO_NODES[*]} to become idle" two_nodes_ready
  log "two-node cluster up in $((SECONDS - T_START)) s: $(sinfo -h -N -o '%N %P %T cpus=%c' | paste -sd ';')"
  log "use it with: export SLURM_CONF=$TWO_CONF"
}

stop_two_daemons() {
  local node
  for node in "${TWO_NODES[@]}"; do stop_pid "$(two_pidfile "$node")" slurmd; done
  stop_pid "$TWO_RUN/slurmctld.pid" slurmctld
}

stop_two() {
  local purge=${1:-}
  alive "$TWO_RUN/slurmctld.pid" slurmctld && cancel_jobs
  stop_two_daemons
  if [[ $purge == --purge ]]; then
    log "purging the two-node cluster's state, logs and config"
    rm -rf "$TWO_SPOOL" "$TWO_LOGDIR" "$TWO_CONF_DIR" "$TWO_RUN"
  fi
  log "two-node cluster stopped (munged is left to the single-node cluster's stop)"
}

status_two() {
  local d ok=0
  for d in "munged /run/munge/munged.pid" "slurmctld $TWO_RUN/slurmctld.pid" \
    "slurmd $(two_pidfile n1) n1" "slurmd $(two_pidfile n2) n2"; do
    set -- $d
    if alive "$2" "$1"; then
      echo "$1${3:+ $3}: running (pid $(<"$2"))"
    else
      echo "$1${3:+ $3}: stopped"
      ok=1
    fi
  done
  if ((ok == 0)); then
    sinfo -h -N -o 'node %N: %T, partition %P, cpus %c' 2>/dev/null || ok=1
    echo "SLURM_CONF=$TWO_CONF"
  fi
  return $ok
}

usage() {
  echo "usage: $0 start|stop [--purge]|status [--nodes 1|2]" >&2
  exit 2
}

cmd=${1:-}
(($#)) && shift
NODES=1
PURGE=""
while (($#)); do
  case $1 in
    --nodes)
      [[ ${2:-} == [12] ]] || usage
      NODES=$2
      shift 2
      ;;
    --purge)
      [[ $cmd == stop ]] || usage
      PURGE=--purge
      shift
      ;;
    *) usage ;;
  esac
done
# The cluster every client command of this script (sinfo, squeue, scontrol) talks to, whatever
# the caller's SLURM_CONF says.
if ((NODES == 2)); then export SLURM_CONF=$TWO_CONF; else export SLURM_CONF=/etc/slurm/slurm.conf; fi
case $cmd:$NODES in
  start:1) start ;;
  stop:1) stop "$PURGE" ;;
  status:1) status ;;
  start:2) start_two ;;
  stop:2) stop_two "$PURGE" ;;
  status:2) status_two ;;
  *) usage ;;
esac
