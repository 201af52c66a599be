#!/bin/bash
# goldfinchd under mpirun, through the real client on a real socket:
#  1. 1 process and 3 ranks answer the same question about the same ingested tree alike;
#  2. a rank killed (SIGKILL) mid-ingest: the client gets an error naming the rank, the
#     daemon exits non-zero for the resource manager; restarted, the contexts committed
#     before are there and answer as before, and the interrupted ingest resumes to the end.
# usage: ranks_daemon.sh BUILD_DIR SOURCE_DIR VOCAB WORKDIR
set -euo pipefail
B=$1 src=$2 vocab=$3 work=$4
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Under ASan: what Open MPI allocates in MPI_Init and keeps is not ours (suppressed by library).
export LSAN_OPTIONS="suppressions=$(cd "$(dirname "$0")" && pwd)/mpi_lsan.supp:fast_unwind_on_malloc=0"
export OMPI_MCA_mca_base_component_disable_dlclose=1
export OMPI_MCA_btl=self,vader OMPI_MCA_mpi_yield_when_idle=1
rm -rf "$work" && mkdir -p "$work" && cd "$work"
"$B/tools/gf-convert" --random --layers 6 --embd 128 --vocab 65536 --seed 3 \
	--vocab-file "$vocab" m.gguf >/dev/null
daemon_pid=
cleanup() { if [ -n "$daemon_pid" ]; then kill -9 "$daemon_pid" 2>/dev/null || true; fi; pkill -9 -f "$work/m.gguf" 2>/dev/null || true; }
trap cleanup EXIT

# rank_pid N: the pid of rank N of the running job.
rank_pid() {
	for p in $(pgrep -f "goldfinchd --model $work/m.gguf"); do
		# grep -z reads the NUL-separated entries itself: no pipe, whose writer pipefail
		# would count as failed when grep -q exits at the match before it is done.
		if grep -qxz "OMPI_COMM_WORLD_RANK=$1" "/proc/$p/environ" 2>/dev/null; then
			echo "$p"; return 0
		fi
	done
	return 1
}
start() { # start NAME NRANKS
	local sock=$work/$1.sock
	rm -f "$sock"
	local args=(--model "$work/m.gguf" --listen "unix:$sock" --threads 1 --checkpoint-tokens 4096)
	if [ "$2" = 1 ]; then
		"$B/daemon/goldfinchd" "${args[@]}" --cache-dir "$work/$1" >"$work/$1.log" 2>&1 &
	else
		# --enable-recovery: a dead rank does not make mpirun kill the others at once, so
		# rank 0 can tell its clients which rank died before it stops (daemon/README.md).
		mpirun --enable-recovery --oversubscribe -n "$2" "$B/daemon/goldfinchd" "${args[@]}" --cache-dir "$work/$1/%r" \
			>"$work/$1.log" 2>&1 &
	fi
	daemon_pid=$!
	for _ in $(seq 300); do [ -S "$sock" ] && break; sleep 0.1; done
	[ -S "$sock" ] || { echo "FAIL: $1 did not start"; cat "$work/$1.log"; exit 1; }
	export GOLDFINCH_SERVER=unix:$sock
}
stop() { # clean stop: SIGTERM to rank 0 (mpirun itself would kill the ranks outright)
	local r0
	r0=$(rank_pid 0 || echo "$daemon_pid")
	kill -TERM "$r0"
	wait "$daemon_pid"
}
ask() { "$B/client/gf" ask "$1" "Which function makes the plan? Answer:" --max-tokens 24 --temperature 0; }

start one 1
"$B/client/gf" ingest --name tree "$src/partition" "$src/protocol" >/dev/null
ask tree >answer1
stop
start three 3
"$B/client/gf" ingest --name tree "$src/partition" "$src/protocol" >/dev/null
ask tree >answer3
"$B/client/gf" contexts
stop || { echo "FAIL: 3 ranks did not stop cleanly; their log:"; cat "$work/three.log"; exit 1; }
cmp answer1 answer3 || { echo "FAIL: 3 ranks answered differently from 1 process"; exit 1; }
echo "1 process and 3 ranks give the same answer"
# Every rank's store finds its copy of the context by the name given on rank 0.
for r in 0 1 2; do
	"$B/tools/gf-cache" --dir "$work/three/$r" verify tree >verify.out 2>&1 ||
		{ cat verify.out; echo "FAIL: gf-cache verify tree in rank $r's store"; exit 1; }
	grep -q '^ok ' verify.out || { cat verify.out; echo "FAIL: rank $r: $(cat verify.out)"; exit 1; }
done
echo "gf-cache verify finds the context by its name in every rank's store"

# A long input, so that the kill lands mid-ingest after a checkpoint or two.
cat "$src"/daemon/*.c "$src"/model/*.c >big.txt
start kill 2
"$B/client/gf" ingest --name tree "$src/partition" "$src/protocol" >/dev/null
("$B/client/gf" ingest --name big big.txt >ingest.out 2>&1; echo "rc=$?" >>ingest.out) &
client=$!
for _ in $(seq 200); do
	"$B/client/gf" contexts 2>/dev/null | grep -q '^#2 .* no ' && break
	sleep 0.05
done
sleep 0.5
r1=$(rank_pid 1)
kill -9 "$r1"
wait "$client" || true
rc=0; wait "$daemon_pid" || rc=$?
daemon_pid=
cat ingest.out
grep -q "rank 1 (pid $r1" ingest.out || { echo "FAIL: the client's error does not name rank 1"; exit 1; }
# Rank 0's own status (with --enable-recovery, mpirun itself may still exit 0).
grep -q 'goldfinchd: exit 1$' "$work/kill.log" || { echo "FAIL: rank 0 did not exit 1 after losing a rank"; exit 1; }
echo "killed rank 1 (pid $r1): client told, rank 0 exit 1 (mpirun $rc)"

start kill 2
"$B/client/gf" contexts | tee contexts.out
grep -q '^#1 .*tree .* yes ' contexts.out || { echo "FAIL: the sealed context is gone after the restart"; exit 1; }
ask tree >answer_restart
cmp answer1 answer_restart || { echo "FAIL: the context answers differently after the restart"; exit 1; }
# The kill may land between a rank's commit and rank 0's (the two-phase window): then the
# ingest cannot resume, says so, and is started again (daemon/README.md "Several ranks").
if ! "$B/client/gf" ingest --name big --resume big.txt >resume.out 2>&1; then
	cat resume.out
	grep -q 'the ingest cannot resume (start it again)' resume.out ||
		{ echo "FAIL: the resume failed without saying why"; exit 1; }
	"$B/client/gf" drop big
	"$B/client/gf" ingest --name big big.txt
fi
"$B/client/gf" contexts >contexts2.out
grep -q '^#2 .*big .* yes ' contexts2.out || { echo "FAIL: the resumed ingest did not seal"; exit 1; }
stop || { echo "FAIL: 2 ranks did not stop cleanly after the restart; their log:"; cat "$work/kill.log"; exit 1; }
echo "after the restart: the sealed context answers as before; the interrupted ingest resumed and sealed"
