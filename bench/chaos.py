"""Chaos soak: many SIGKILLs at random moments across three `vigil up` instances.

Jobs fire every second (some short, some longer than the gap between kills); after every kill a
fresh instance is started so three are always running. At the end the ledger must show no
duplicate fire, no lost fire, an intact database and no orphaned job process.

    python bench/chaos.py [--kills 200] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import time

from _cluster import Cluster, machine, now

JOBS = {
    "tick": 'every = "1s"\ncatchup = "all"\ncommand = "true"\n',
    "work": 'every = "1s"\ncatchup = "all"\ncommand = "sleep 0.4"\n',
    "slow": 'every = "2s"\noverlap = "allow"\ncatchup = "latest"\ncommand = "sleep 1.5; exit 3"\n',
}
SETTINGS = '[scheduler]\nheartbeat_interval = "100ms"\nheartbeat_timeout = "1s"\n'


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-pause", type=float, default=0.8, help="longest wait between kills (s)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    cluster = Cluster(JOBS, SETTINGS)
    kills = 0
    stalls = 0
    try:
        for _ in range(3):
            cluster.start()
        cluster.wait(lambda: cluster.active_pid(), 20)
        t_start = now()
        while kills < args.kills:
            time.sleep(rng.uniform(0.02, args.max_pause))
            pid = cluster.active_pid()
            if pid is None:
                continue
            os.kill(pid, signal.SIGKILL)
            kills += 1
            for proc in cluster.procs:
                if proc.pid == pid:
                    proc.wait()
            cluster.start()
            try:
                cluster.wait(lambda p=pid: cluster.active_pid() not in (None, p), 10)
            except TimeoutError:
                stalls += 1
        time.sleep(3.0)
        t_end = now() - 2.5
        dup_tick, lost_tick = cluster.ledger_counts("tick", 1.0, t_start, t_end)
        dup_work, lost_work = cluster.ledger_counts("work", 1.0, t_start, t_end)
        conn = cluster.db()
        unknown = conn.execute("SELECT COUNT(*) FROM runs WHERE state = 'unknown'").fetchone()[0]
        ran = conn.execute("SELECT COUNT(*) FROM runs WHERE state NOT IN ('missed','skipped')").fetchone()[0]
        wrong_exit = conn.execute(
            "SELECT COUNT(*) FROM runs WHERE job = 'slow' AND state = 'failed' AND exit_code <> 3"
        ).fetchone()[0]
        integrity = cluster.integrity()
        orphans = cluster.orphans()
    finally:
        cluster.close()
    duration = t_end - t_start
    print(f"machine: {machine()}")
    print(f"{kills} SIGKILLs of the active over {duration:.0f} s with 3 instances; {stalls} takeovers slower than 10 s")
    print(
        f"duplicates {dup_tick + dup_work}, lost fires {lost_tick + lost_work}, runs launched {ran}, "
        f"unknown outcomes {unknown}, wrong exit codes {wrong_exit}, integrity {integrity}, orphans {orphans}"
    )
    print(
        json.dumps(
            {
                "kills": kills,
                "duration_s": round(duration, 1),
                "stalls": stalls,
                "duplicates": dup_tick + dup_work,
                "lost": lost_tick + lost_work,
                "runs_launched": ran,
                "unknown": unknown,
                "wrong_exit_codes": wrong_exit,
                "integrity_ok": integrity == "ok",
                "orphans": orphans,
            }
        )
    )


if __name__ == "__main__":
    main()
