"""Notification delivery on this machine (issue 11). Not a test.

1. latency     50 jobs that fail (`exit 1`), periods 1000..1049 ms (about 49 failures/s, spread), each
               job notifying a `json://` channel whose receiver (an HTTP server in this process) records
               when each event arrives. Latency = arrival minus the run's `ended_at` in the ledger (the
               job's real end, from its exit record: so it includes the scheduler noticing the end).
               The rate limit is raised out of the way so every event is delivered.
2. throughput  300 failing jobs (periods 1000..1299 ms, about 270 fires/s offered) with notifications
               off, then with 3 `json://` channels on at their default rate limit (20 per 5 min: the
               storm becomes 20 events and a summary per channel): runs/s that reached a terminal state
               (ledger `ended_at` in the window), and how many rows were sent / suppressed.

The last line of output is one JSON object with every figure.
Run: `python bench/notify.py` (about 1½ minutes); `--quick` shortens the windows.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _cluster import iso, machine, pct
from throughput import Vigil

_ID = re.compile(r"id (\S+)\s*$", re.M)


class Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.count = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                now = time.time()
                receiver.count += 1
                match = _ID.search(body.get("message", ""))
                if match:
                    receiver.arrivals.setdefault(match.group(1), now)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"json://127.0.0.1:{self.port}/{path}"


def failing_jobs(n: int, notify: list[str] | None) -> dict[str, str]:
    line = f"notify = {json.dumps(notify)}\n" if notify else ""
    return {f"f/{k:03d}": f'command = "exit 1"\nevery = "{1000 + k}ms"\n{line}' for k in range(n)}


def latency_phase(root: Path, window: float) -> dict[str, Any]:
    receiver = Receiver()
    jobs = failing_jobs(50, ["hook"])
    jobs_vigil = f'[notify.hook]\nurl = "{receiver.url("events")}"\nrate_limit = 100000\n'
    v = Vigil(root, "latency", jobs)
    (v.jobs_dir / "vigil.toml").write_text(jobs_vigil)
    v.start()
    try:
        v.wait_loaded()
        time.sleep(2.0)
        t0 = iso(datetime.fromtimestamp(time.time()).astimezone())
        time.sleep(window)
        t1 = iso(datetime.fromtimestamp(time.time()).astimezone())
        time.sleep(3.0)  # let the last events arrive
        rows = v.query(
            "SELECT id, ended_at FROM runs WHERE state = 'failed' AND ended_at > ? AND ended_at <= ?", (t0, t1)
        )
    finally:
        v.stop()
        receiver.server.shutdown()
    latencies = []
    lost = 0
    for run_id, ended_at in rows:
        arrived = receiver.arrivals.get(f"failed:run:{run_id}")
        if arrived is None:
            lost += 1
            continue
        latencies.append((arrived - datetime.fromisoformat(str(ended_at)).timestamp()) * 1000)
    return {
        "latency_failures_per_s": round(len(rows) / window, 1),
        "latency_events": len(latencies),
        "latency_not_arrived": lost,
        "notify_latency_p50_ms": round(pct(latencies, 50), 1) if latencies else None,
        "notify_latency_p99_ms": round(pct(latencies, 99), 1) if latencies else None,
        "notify_latency_max_ms": round(max(latencies), 1) if latencies else None,
    }


def throughput_phase(root: Path, window: float, channels: bool) -> dict[str, Any]:
    receiver = Receiver() if channels else None
    names = ["a", "b", "c"] if channels else None
    v = Vigil(root, f"throughput-{'on' if channels else 'off'}", failing_jobs(300, names))
    if receiver is not None:
        (v.jobs_dir / "vigil.toml").write_text(
            "".join(f'[notify.{name}]\nurl = "{receiver.url(name)}"\n' for name in ("a", "b", "c"))
        )
    v.start()
    try:
        v.wait_loaded()
        time.sleep(2.0)
        t0 = iso(datetime.fromtimestamp(time.time()).astimezone())
        time.sleep(window)
        t1 = iso(datetime.fromtimestamp(time.time()).astimezone())
        (ended,) = v.query("SELECT COUNT(*) FROM runs WHERE ended_at > ? AND ended_at <= ?", (t0, t1))[0]
        states = dict(v.query("SELECT state, COUNT(*) FROM notifications GROUP BY state")) if channels else {}
        rss = v.rss_mb()
    finally:
        v.stop()
        if receiver is not None:
            receiver.server.shutdown()
    key = "on" if channels else "off"
    out: dict[str, Any] = {f"runs_per_s_channels_{key}": round(int(ended) / window, 1), f"rss_mb_channels_{key}": rss}
    if channels:
        out |= {f"outbox_{state}": n for state, n in states.items()}
        out["receiver_posts"] = receiver.count if receiver else 0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 s windows")
    args = parser.parse_args()
    window = 5.0 if args.quick else 20.0
    figures: dict[str, Any] = {"machine": machine()}
    print(f"machine: {figures['machine']}")
    with tempfile.TemporaryDirectory(prefix="vigil-bench-notify-") as tmp:
        root = Path(tmp)
        print("latency: 50 failing jobs, one json:// channel")
        figures |= latency_phase(root, window)
        print(
            f"  {figures['latency_failures_per_s']} failures/s; run end -> receiver p50 "
            f"{figures['notify_latency_p50_ms']} ms, p99 {figures['notify_latency_p99_ms']} ms "
            f"(max {figures['notify_latency_max_ms']} ms; {figures['latency_not_arrived']} not arrived)"
        )
        for channels in (False, True):
            print(f"throughput: 300 failing jobs, channels {'on (3 json://)' if channels else 'off'}")
            part = throughput_phase(root, window, channels)
            figures |= part
            print(f"  {part}")
    off, on = figures["runs_per_s_channels_off"], figures["runs_per_s_channels_on"]
    figures["channels_on_ratio"] = round(on / off, 3) if off else None
    print(f"runs/s with 3 channels on / off: {figures['channels_on_ratio']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
