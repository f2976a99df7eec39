# Vigil per-run supervisor. Runs under /bin/sh in its own session, holding the run's lock on fd 9
# for exactly its own lifetime; it outlives the scheduler, reaps the job and records its end.
# Usage: sh shim.sh RUN_DIR WORKDIR UMASK SETSID ENV ARGV...
# It runs with a fixed environment and calls every tool by absolute path (SETSID, ENV: found by the
# executor), so nothing of the job's environment can break or load into it. The job's environment
# comes on fd 8 as shell text and is applied only in the job's own process (the --job part below).
if [ "$1" = --job ]; then
    # The job's process, between setsid and the job's exec, started by env -i with no environment.
    # The text on fd 8 exports the job's variables and sets a trap that reports a failed exec.
    d=$2
    m=$3
    shift 3
    # This process becomes the job (same pid, same start time): its start time (field 22 of
    # /proc/self/stat; comm, before it, may hold ") "), recorded with the pid by the shim, is the
    # identity checked before anyone signals the job's group (pids are reused).
    jobstart() {
        [ $# -ge 20 ] && shift 19 && case $1 in '' | *[!0-9]*) ;; *) echo "$1" >"$d/jobstart" ;; esac
    }
    if read -r stat </proc/self/stat; then
        set -f
        jobstart ${stat##*) }
        set +f
    fi
    command . /dev/fd/8 || { echo environment >"$d/start-error"; exit 127; }
    exec 8<&-
    umask "$m" # the job gets the operator's umask back; everything of the run's stays owner-only
    exec "$@"
fi
d=$1
w=$2
m=$3
setsid=$4
env=$5
shift 5
umask 077 # the run's files are owner-only; only the job's own process gets UMASK (above)
echo $$ >"$d/shim"
if [ -n "$w" ]; then
    cd "$w" 2>/dev/null || {
        printf 'workdir %s' "$w" >"$d/start-error"
        echo "vigil: could not start: cannot enter workdir $w" >>"$d/log"
        echo "notstarted end" 1<>"$d/exit"
        exit 0
    }
fi
# setsid gives the job its own process group (pgid = job pid), so a kill reaches every descendant
# and never this shim. It execs in place (as do env and the --job part): the job's pid is $!.
"$setsid" "$env" -i /bin/sh "$0" --job "$d" "$m" "$@" >>"$d/log" 2>&1 </dev/null 9>&- &
pid=$!
exec 8<&-
echo "$pid" >"$d/started"
wait "$pid"
code=$?
times >"$d/times"
# One short write of a self-checking record, in place over the space the executor reserved (1<>:
# no truncation, so no new block is needed on a full disk); a reader ignores anything without "end".
if [ -e "$d/start-error" ]; then
    echo "notstarted end" 1<>"$d/exit"
else
    echo "exit=$code end" 1<>"$d/exit"
fi
