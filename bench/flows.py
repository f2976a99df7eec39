"""A fan-out/fan-in flow through `vigil up` on this machine (issue 13). Not a test.

One root job, N-2 parallel steps after it (`command = "true"`), and one join after all of them:
1,000 steps by default. Each round starts the root with `vigil run` on an idle scheduler, waits for
the join to end, and reports from the ledger:

- `root_to_join_s`: the root's start to the join's start (`started_at`): the time the whole fan-out
  took to be launched, run, ingested and judged, join included;
- `fan_out_s`: the root's end to the last parallel step's start;
- `sched_cpu_ms_per_step`: the scheduler process's CPU (user + system, psutil) over the round,
  divided by the steps (the launcher and shims, which do the forking, are not included; their CPU
  is reported apart as `launcher_cpu_ms_per_step` when a launcher process is found).

Every step must have exactly one run in the flow (`duplicates` and `missing` say otherwise).
The last line of output is one JSON object with every figure. Run: `python bench/flows.py`
(1,000 steps, 3 rounds); `--quick` runs 100 steps once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
from _cluster import machine, vigil_argv
from throughput import Vigil, find_launcher, launcher_cpu


def flow_jobs(steps: int) -> dict[str, str]:
    width = steps - 2
    names = [f"fan/s{n:04d}" for n in range(width)]
    jobs = {"fan/root": 'command = "true"\n'}
    for name in names:
        jobs[name] = 'after = ["fan/root"]\ncommand = "true"\noverlap = "queue"\n'
    jobs["fan/join"] = "after = [" + ", ".join(f'"{name}"' for name in names) + ']\ncommand = "true"\n'
    return jobs


def ts(text: object) -> float:
    return datetime.fromisoformat(str(text)).timestamp()


def cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def one_round(v: Vigil, steps: int, timeout: float) -> dict[str, float | int]:
    assert v.proc is not None
    sched = psutil.Process(v.proc.pid)
    launcher = find_launcher(sched)
    cpu0, launcher0 = cpu_s(sched), launcher_cpu(launcher)
    out = subprocess.run(
        [*vigil_argv(), "run", "fan/root", "--state", str(v.state)], capture_output=True, text=True, check=True
    ).stdout
    root = int(out.split()[2])
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = v.query("SELECT state FROM runs WHERE flow_id = ? AND job = 'fan/join'", (root,))
        if rows and rows[0][0] not in ("pending", "launching", "running"):
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"the join of flow {root} did not end within {timeout}s; see {v.dir / 'vigil.log'}")
    cpu1, launcher1 = cpu_s(sched), launcher_cpu(launcher)
    rows = v.query("SELECT job, state, started_at, ended_at FROM runs WHERE flow_id = ?", (root,))
    by_job: dict[str, list[tuple[object, ...]]] = {}
    for row in rows:
        by_job.setdefault(str(row[0]), []).append(row)
    root_row, join_row = by_job["fan/root"][0], by_job["fan/join"][0]
    parallel = [r for job, found in by_job.items() if job not in ("fan/root", "fan/join") for r in found]
    figures: dict[str, float | int] = {
        "root_to_join_s": ts(join_row[2]) - ts(root_row[2]),
        "fan_out_s": max(ts(r[2]) for r in parallel if r[2]) - ts(root_row[3]),
        "sched_cpu_ms_per_step": (cpu1 - cpu0) * 1000 / steps,
        "duplicates": sum(len(found) - 1 for found in by_job.values()),
        "missing": steps - len(by_job),
        "not_succeeded": sum(1 for r in rows if r[1] != "succeeded"),
    }
    if launcher is not None:
        figures["launcher_cpu_ms_per_step"] = (launcher1 - launcher0) * 1000 / steps
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 steps, one round (a smoke run)")
    parser.add_argument("--steps", type=int, help="steps in the flow, root and join included (default 1000)")
    parser.add_argument("--rounds", type=int, help="flows run one after another (default 3)")
    args = parser.parse_args()
    steps = args.steps or (100 if args.quick else 1000)
    rounds = args.rounds or (1 if args.quick else 3)
    if steps < 3:
        parser.error("--steps must be at least 3 (a root, one parallel step, a join)")
    print(f"machine: {json.dumps(machine())}")
    print(f"flow: 1 root, {steps - 2} parallel steps, 1 join; {rounds} round(s)")
    results: list[dict[str, float | int]] = []
    with tempfile.TemporaryDirectory(prefix="vigil-bench-flows-") as tmp:
        v = Vigil(Path(tmp), "flows", flow_jobs(steps))
        v.start()
        try:
            loaded = v.wait_loaded()
            print(f"loaded {steps} jobs in {loaded:.2f}s")
            time.sleep(1.0)  # let the first catalog write and scan settle
            for number in range(rounds):
                figures = one_round(v, steps, timeout=max(60.0, steps * 0.5))
                results.append(figures)
                print(
                    f"round {number + 1}: root start → join start {figures['root_to_join_s']:.2f}s, "
                    f"fan-out {figures['fan_out_s']:.2f}s, scheduler CPU {figures['sched_cpu_ms_per_step']:.2f} ms/step"
                    + (
                        f", launcher CPU {figures['launcher_cpu_ms_per_step']:.2f} ms/step"
                        if "launcher_cpu_ms_per_step" in figures
                        else ""
                    )
                    + f"; duplicates {figures['duplicates']}, missing {figures['missing']}"
                )
                time.sleep(0.5)
        finally:
            v.stop()
    summary: dict[str, float | int] = {"steps": steps, "rounds": rounds}
    for key in results[0]:
        values = [r[key] for r in results if key in r]
        summary[f"{key}_median"] = statistics.median(values)
        summary[f"{key}_max"] = max(values)
    print(json.dumps(summary))
    return 0 if all(r["duplicates"] == 0 and r["missing"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
