# Vigil per-run supervisor. Runs under /bin/sh in its own session, holding the run's lock on fd 9
# for exactly its own lifetime; it outlives the scheduler, reaps the job and records its end.
# Usage: sh shim.sh RUN_DIR WORKDIR UMASK ARGV...
d=$1
w=$2
m=$3
shift 3
umask 077 # the run's files are owner-only; the job gets the operator's umask (UMASK) back below
echo $$ >"$d/shim"
if [ -n "$w" ]; then
    cd "$w" || { echo "vigil: cannot enter workdir $w" >>"$d/log"; echo "exit=127 end" >"$d/exit"; exit 0; }
fi
: >>"$d/log"
umask "$m"
# setsid gives the job its own process group (pgid = job pid), so a kill reaches every descendant
# and never this shim. It execs in place: the job's pid is $!.
setsid "$@" >>"$d/log" 2>&1 </dev/null 9>&- &
pid=$!
umask 077
echo "$pid" >"$d/started"
wait "$pid"
code=$?
times >"$d/times"
# One short write of a self-checking record: a reader ignores anything without the trailing "end".
echo "exit=$code end" >"$d/exit"
