#!/usr/bin/env bash
# Stops what local-cluster.sh up started (by pid file); --purge also wipes job state, logs and the accounting DB.
set -uo pipefail
stop() {  # stop <pidfile> <name>
  local pf=$1 name=$2 pid
  [ -s "$pf" ] || return 0
  pid=$(cat "$pf")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "local-cluster: $name ($pid) ignored TERM, sending KILL" >&2; kill -KILL "$pid"
    fi
  fi
  rm -f "$pf"
  echo "local-cluster: stopped $name"
}
# cancel leftover jobs first so slurmd reaps their steps
if [ -s /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; then
  scancel --user=root 2>/dev/null || true
  for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
fi
stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
stop /run/slurmdbd.pid slurmdbd
if [ "${1:-}" = "--purge" ] && [ -s /run/mysqld/mysqld.pid ] && kill -0 "$(cat /run/mysqld/mysqld.pid)" 2>/dev/null; then
  mariadb -e 'DROP DATABASE IF EXISTS slurm_acct_db' && echo "local-cluster: dropped slurm_acct_db"
fi
stop /run/mysqld/mysqld.pid mariadbd
stop /run/munge/munged.pid munged
if [ "${1:-}" = "--purge" ]; then
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/* /var/log/slurm/*
  echo "local-cluster: purged state and logs"
fi
exit 0
