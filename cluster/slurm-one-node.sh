#!/bin/sh
# slurm-one-node.sh — a real one-node SLURM cluster on this machine, from Debian's packages,
# for tests and for trying cluster/ without a cluster (cluster/README.md, "Trying it here").
#
#   slurm-one-node.sh install      install slurmctld slurmd slurm-client munge if missing
#   slurm-one-node.sh up DIR       configure the cluster in DIR and start munged (unless one
#                                  runs), slurmctld and slurmd; wait for the node to be idle
#   slurm-one-node.sh down DIR     cancel every job, stop what `up` started, clean up
#   . DIR/env                      SLURM_CONF for sbatch, squeue, scancel ... (after up)
#
# Needs root (the daemons run as root; nothing is written under /etc/slurm: SLURM_CONF
# points at DIR). Exit status: 0 done, 1 failed, 77 SLURM cannot be installed or run here
# (not root, no apt-get, the install failed), so that a test can skip.
# `down` is idempotent and never fails: call it from a trap.
#
# Environment: GF_SLURM_PORT (6917: slurmctld; slurmd uses the next port; away from the
# usual 6817 so that a site's own SLURM is not disturbed), GF_SLURM_KILLWAIT (15 seconds
# between SIGTERM and SIGKILL when a job ends), GF_SLURM_CGROUP=1 (proctrack/cgroup and
# task/cgroup instead of the cgroup-free default, which suits containers).
# Facts this follows (measured on Debian 12): ../../shared/notes/slurm-on-one-node.md.
set -u
PACKAGES="slurmctld slurmd slurm-client munge"
PORT=${GF_SLURM_PORT:-6917}
KILLWAIT=${GF_SLURM_KILLWAIT:-15}

say() { echo "slurm-one-node: $*" >&2; }

installed() {
	for p in $PACKAGES; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
	done
	return 0
}

cmd_install() {
	if [ "$(id -u)" != 0 ]; then
		say "needs root to install and run SLURM"
		return 77
	fi
	installed && return 0
	if ! command -v apt-get >/dev/null; then
		say "SLURM is not installed and there is no apt-get to install it"
		return 77
	fi
	# The packages' scripts would start the daemons with the system's configuration: a
	# policy-rc.d that refuses keeps them stopped (the image may have one already).
	policy=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d &&
			policy=/usr/sbin/policy-rc.d
	fi
	say "installing $PACKAGES"
	rc=0
	apt-get update -qq >/dev/null 2>&1 || rc=$?
	[ $rc = 0 ] && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		-o DPkg::Lock::Timeout=120 $PACKAGES >/dev/null 2>&1 || rc=$?; }
	[ -n "$policy" ] && rm -f "$policy"
	if [ $rc != 0 ] || ! installed; then
		say "cannot install $PACKAGES (apt-get exit $rc)"
		return 77
	fi
	return 0
}

# Waits until `kill -0 PID` fails, at most $2 tenths of a second; 0 if it ended.
wait_gone() {
	i=0
	while kill -0 "$1" 2>/dev/null; do
		[ $i -ge "$2" ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
	return 0
}

cmd_up() {
	dir=$1
	cmd_install || return $?
	mkdir -p "$dir" || return 1
	dir=$(cd "$dir" && pwd)
	node=$(hostname -s)
	cpus=$(nproc)
	mem_mb=$(awk '/^MemTotal:/ { print int($2 / 1024) - 512 }' /proc/meminfo)
	mkdir -p "$dir/state" "$dir/spool" "$dir/log" || return 1
	if [ "${GF_SLURM_CGROUP:-0}" = 1 ]; then
		proctrack=proctrack/cgroup
		task=task/cgroup,task/affinity
	else
		proctrack=proctrack/linuxproc
		task=task/none
	fi
	# One key per line (slurm.conf refuses two on a line). The addresses are given as
	# 127.0.0.1: a host name that does not resolve would make every daemon loop in
	# getaddrinfo.
	cat >"$dir/slurm.conf" <<EOF
ClusterName=gfone
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=pmix
ProctrackType=$proctrack
TaskPlugin=$task
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
KillWait=$KILLWAIT
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
	printf 'CgroupPlugin=autodetect\nConstrainCores=yes\n' >"$dir/cgroup.conf"
	printf 'export SLURM_CONF=%s/slurm.conf\n' "$dir" >"$dir/env"
	export SLURM_CONF="$dir/slurm.conf"

	# munged: the system's if one answers, else ours (stopped again by down).
	if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
		install -d -o munge -g munge -m 0755 /run/munge || return 1
		runuser -u munge -- /usr/sbin/munged || { say "munged did not start"; return 1; }
		cp /run/munge/munged.pid "$dir/munged.pid" 2>/dev/null
		i=0
		until munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; do
			[ $i -ge 50 ] && { say "munged does not answer"; return 1; }
			sleep 0.1
			i=$((i + 1))
		done
	fi
	/usr/sbin/slurmctld -c -f "$SLURM_CONF" || { say "slurmctld did not start: $dir/log/slurmctld.log"; return 1; }
	/usr/sbin/slurmd -f "$SLURM_CONF" || { say "slurmd did not start: $dir/log/slurmd.log"; return 1; }
	i=0
	while :; do
		state=$(sinfo -h -n "$node" -o %t 2>/dev/null)
		[ "$state" = idle ] && break
		if [ $i -ge 300 ]; then
			say "node $node is \"$state\", not idle, after 30 s; the end of the logs:"
			tail -5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2
			return 1
		fi
		sleep 0.1
		i=$((i + 1))
	done
	say "up: node $node idle ($cpus CPUs, ${mem_mb} MB), SLURM_CONF=$SLURM_CONF"
	return 0
}

cmd_down() {
	dir=$1
	[ -f "$dir/slurm.conf" ] || return 0
	export SLURM_CONF="$dir/slurm.conf"
	# Jobs first, while slurmd can still end them: SIGTERM, then SIGKILL after KillWait.
	if [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
		jobs=$(squeue -h -o %i 2>/dev/null)
		if [ -n "$jobs" ]; then
			scancel $jobs 2>/dev/null
			i=0
			while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ $i -lt $(((KILLWAIT + 15) * 10)) ]; do
				sleep 0.1
				i=$((i + 1))
			done
		fi
	fi
	for d in slurmd slurmctld munged; do
		[ -f "$dir/$d.pid" ] || continue
		pid=$(cat "$dir/$d.pid")
		if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && ! wait_gone "$pid" 100; then
			say "$d (pid $pid) still running after 10 s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null
		fi
		rm -f "$dir/$d.pid"
		[ $d = munged ] && rm -rf /run/munge
	done
	# What slurmd leaves in cgroup mode: empty directories only (rmdir refuses others).
	for c in /sys/fs/cgroup/*/slurm_"$(hostname -s)" /sys/fs/cgroup/slurm_"$(hostname -s)"; do
		[ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
	done
	rm -f "$dir/slurm.conf" "$dir/cgroup.conf" "$dir/env"
	return 0
}

case "${1:-}" in
install) cmd_install ;;
up) [ $# = 2 ] || { say "usage: $0 up DIR"; exit 2; }; cmd_up "$2" ;;
down) [ $# = 2 ] || { say "usage: $0 down DIR"; exit 2; }; cmd_down "$2" ;;
*) say "usage: $0 install | up DIR | down DIR"; exit 2 ;;
esac
