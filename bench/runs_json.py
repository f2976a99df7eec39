"""`vigil runs --json` wall time on a large ledger (default 1,000,000 runs). Not a test.

Each round starts the `vigil` console script of this interpreter as an operator would, on a generated
state (bench/out/, cached by size), and times it to exit. `--compare DIR` also times the code in DIR
(another checkout: its `engine` is put first on PYTHONPATH) in the same rounds, alternating which
goes first, so the two columns see the same machine load.

    python bench/runs_json.py [--runs 1000000] [--rounds 7] [--compare /path/to/other/checkout]

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _cluster import machine, vigil_argv
from _state import generate

OUT = Path(__file__).resolve().parent / "out"
JOBS = 1_000


def timed(state: Path, code: Path | None, extra: list[str]) -> float:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    started = time.perf_counter()
    subprocess.run(
        [*vigil_argv(), "runs", "--json", "--state", str(state), *extra], env=env, check=True, stdout=subprocess.DEVNULL
    )
    return (time.perf_counter() - started) * 1000


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compare", type=Path, help="another checkout to time in the same rounds")
    args = parser.parse_args()
    paths = generate(OUT / f"runs-json-{JOBS}-{args.runs}", JOBS, args.runs)
    cases = {"default": [], "job": ["--job", "group07/job00007"], "failed": ["--status", "failed"]}
    codes: dict[str, Path | None] = {"this": None}
    if args.compare is not None:
        codes["compare"] = args.compare.resolve()
    for code in codes.values():
        timed(paths.root, code, [])  # warm the page cache and the bytecode
    times: dict[str, dict[str, list[float]]] = {name: {case: [] for case in cases} for name in codes}
    for round_no in range(args.rounds):
        order = list(codes) if round_no % 2 == 0 else list(reversed(codes))
        for case, extra in cases.items():
            for name in order:
                times[name][case].append(timed(paths.root, codes[name], extra))
    result: dict[str, object] = {"machine": machine(), "runs": args.runs, "rounds": args.rounds}
    for name in codes:
        for case in cases:
            figures = summary(times[name][case])
            print(f"{name:8} {case:8} median {figures['median']:7.1f} ms  range {figures['min']}–{figures['max']} ms")
            result[f"{name}_{case}_ms"] = figures
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
