#!/usr/bin/env bash
# A one-node Slurm cluster on this machine for the Slurm executor's test (cli/tests/slurm.rs):
# Debian's munge, slurmctld and slurmd, configured for localhost and started without systemd.
# Idempotent: a second call with the cluster up returns at once. Needs root (or sudo).
#   scripts/setup-slurm.sh          install, configure, start; wait until the node is idle
#   scripts/setup-slurm.sh --stop   stop the daemons this script started
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
CONF=/etc/slurm/slurm.conf
STATE=/var/lib/cggm-slurm

if [ "${1:-}" = "--stop" ]; then
  for daemon in slurmd slurmctld munged; do
    if [ -f "$STATE/$daemon.pid" ]; then $SUDO kill "$(cat "$STATE/$daemon.pid")" 2>/dev/null || true; fi
  done
  exit 0
fi

node_idle() { sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi

$SUDO mkdir -p "$STATE" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
# munge: a key, and directories owned by its user (munged refuses loose permissions).
if [ ! -s /etc/munge/munge.key ]; then
  $SUDO mkdir -p /etc/munge
  $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
if id munge >/dev/null 2>&1; then
  $SUDO chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
fi
$SUDO chmod 700 /etc/munge; $SUDO chmod 400 /etc/munge/munge.key; $SUDO chmod 755 /run/munge

# slurm.conf for this node: its name, CPUs and memory as slurmd sees them.
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
[ "$MEM_MB" -gt 512 ] || MEM_MB=512
WANT=$(cat <<CONF
# Written by scripts/setup-slurm.sh: a one-node cluster on this machine, for tests.
ClusterName=cggm-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
)
# Up already with this configuration: nothing to do.
if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$WANT" ] && node_idle; then exit 0; fi
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$WANT" ]; then
  echo "$WANT" | $SUDO tee "$CONF" >/dev/null
  # A changed configuration: restart whatever runs.
  for daemon in slurmd slurmctld; do
    if [ -f "$STATE/$daemon.pid" ]; then $SUDO kill "$(cat "$STATE/$daemon.pid")" 2>/dev/null || true; fi
  done
  sleep 1
fi
# Debian's cgroup.conf is not needed with proctrack/linuxproc and task/none.

running() { [ -f "$1" ] && $SUDO kill -0 "$(cat "$1")" 2>/dev/null; }
if ! pgrep -x munged >/dev/null; then
  if id munge >/dev/null 2>&1; then
    $SUDO -u munge true 2>/dev/null || true
    if [ -n "$SUDO" ]; then $SUDO -u munge munged; else su -s /bin/sh munge -c munged 2>/dev/null || munged --force; fi
  else
    munged --force
  fi
fi
running "$STATE/slurmctld.pid" || $SUDO slurmctld
running "$STATE/slurmd.pid" || $SUDO slurmd

# Wait (with a deadline) for the node to be idle.
for _ in $(seq 1 60); do
  if node_idle; then exit 0; fi
  # A node that registered DOWN (e.g. after a restart) is brought back.
  if sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(down|drained|drain)'; then
    $SUDO scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true
  fi
  sleep 1
done
echo "setup-slurm: the node did not become idle within 60 s; sinfo says:" >&2
sinfo -N -l >&2 || true
echo "logs: /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log" >&2
exit 1
