# Vigil per-run supervisor. Runs under /bin/sh in its own session, holding the run's lock on fd 9
# for exactly its own lifetime; it outlives the scheduler, reaps the job and records its end.
# Usage: sh shim.sh RUN_DIR WORKDIR ARGV...
d=$1
w=$2
shift 2
echo $$ >"$d/shim"
if [ -n "$w" ]; then
    cd "$w" || { echo "vigil: cannot enter workdir $w" >>"$d/log"; echo "exit=127 end" >"$d/exit"; exit 0; }
fi
# setsid gives the job its own process group (pgid = job pid), so a kill reaches every descendant
# and never this shim. It execs in place: the job's pid is $!.
setsid "$@" >>"$d/log" 2>&1 </dev/null 9>&- &
pid=$!
echo "$pid" >"$d/started"
wait "$pid"
code=$?
times >"$d/times"
# One short write of a self-checking record: a reader ignores anything without the trailing "end".
echo "exit=$code end" >"$d/exit"
