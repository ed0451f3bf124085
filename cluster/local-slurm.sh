#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try cluster/mdd-sweep.sbatch without a
# cluster (tests/test_slurm.py starts it): munge, slurmctld and slurmd as root, no systemd,
# no cgroups. Debian's slurm-wlm and munge must be installed (scripts/system-deps.sh).
# Usage: cluster/local-slurm.sh start|stop. Idempotent; exits non-zero if sinfo never
# shows the node idle.
set -euo pipefail
conf=/etc/slurm/slurm.conf
node=$(hostname -s)
marker="# written by mdd cluster/local-slurm.sh"

start() {
  mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
  chown munge:munge /run/munge 2>/dev/null || true
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
  # Never overwrite a cluster's own configuration: only a missing file or our own.
  if [ -e "$conf" ] && ! head -n 1 "$conf" | grep -q "$marker"; then
    echo "$conf exists and is not mdd's: this machine has its own SLURM set-up" >&2
    return 1
  fi
  # The node's size as slurmd sees it (CPUs, memory): one node, one partition.
  read -r size < <(slurmd -C | head -n 1 | grep -o 'CPUs=.*RealMemory=[0-9]*' | sed 's/NodeName=[^ ]* //')
  cat > "$conf" <<CONF
$marker
ClusterName=mdd-local
SlurmctldHost=$node
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
NodeName=$node $size State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 60); do
    if sinfo -h -N -o '%t' 2>/dev/null | grep -Eq '^(idle|mix|alloc)'; then
      sinfo
      return 0
    fi
    scontrol update nodename="$node" state=resume 2>/dev/null || true
    sleep 1
  done
  echo "the local SLURM node never became idle; see /var/log/slurm/" >&2
  sinfo >&2 || true
  return 1
}

stop() {
  pkill -x slurmd || true
  pkill -x slurmctld || true
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
