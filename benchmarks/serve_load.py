"""Load test of `difforge serve` on loopback: concurrent clients, throughput, latency, 503s.

Starts the real server (uvicorn, `difforge serve MODEL`) three times and drives it with
concurrent HTTP clients for a fixed time each, while a separate client polls /healthz:

  batched    C clients, the default dynamic batching (--max-batch 32)
  unbatched  the same load with --max-batch 1 (each request alone on the device)
  overload   3C impatient clients against --queue-size 4: the excess must get 503 +
             Retry-After, never another error, and health checks must still be answered

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py runs/trial1

Writes benchmarks/serve_load.json and benchmarks/serve_load.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from serve_common import HOST, difforge_exe, log_tail, start_server, stop_server, wait_ready  # noqa: E402


def batch_stats(metrics_text: str) -> dict:
    """Sampler runs and mean images per run from the server's Prometheus text."""
    def value(name):
        m = re.search(rf"^{name} ([0-9.e+]+)$", metrics_text, re.M)
        return float(m.group(1)) if m else 0.0

    runs, images = value("difforge_batch_images_count"), value("difforge_batch_images_sum")
    return {"sampler_runs": int(runs), "images": int(images), "mean_batch": round(images / runs, 2) if runs else 0}


def run_phase(model: str, port: int, clients: int, seconds: float, body: dict, server_args: list[str],
              patience: float | None) -> dict:
    import httpx

    url = f"http://{HOST}:{port}"
    log = Path(tempfile.mkdtemp(prefix="serve-load-")) / "server.log"  # read on failure; a pipe would fill up
    server = start_server([difforge_exe(), "serve", model, "--port", str(port), *server_args], log)
    try:
        wait_ready(url, proc=server, log=log)
        stop = threading.Event()
        results: list[tuple[int, float, float]] = []  # (status, start, latency)
        health: list[tuple[int, float]] = []
        retry_after: set[str] = set()
        lock = threading.Lock()
        t0 = time.monotonic()

        def client(k: int) -> None:
            rng = random.Random(k)
            with httpx.Client(base_url=url, timeout=300) as c:
                while not stop.is_set():
                    start = time.monotonic()
                    r = c.post("/v1/generate", json={**body, "class": rng.randrange(10), "seed": rng.randrange(10**6)})
                    with lock:
                        results.append((r.status_code, start - t0, time.monotonic() - start))
                        if r.status_code == 503:
                            retry_after.add(r.headers.get("retry-after", ""))
                    if r.status_code == 503 and patience:
                        time.sleep(patience)

        def prober() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                while not stop.is_set():
                    start = time.monotonic()
                    try:
                        status = c.get("/healthz").status_code
                    except httpx.HTTPError:
                        status = 0
                    health.append((status, time.monotonic() - start))
                    time.sleep(0.05)

        threads = ([threading.Thread(target=client, args=(k,)) for k in range(clients)]
                   + [threading.Thread(target=prober)])
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        metrics = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    except BaseException:
        print(f"server log ({log}):\n{log_tail(log)}", file=sys.stderr)
        raise
    finally:
        stop_server(server)
    ok = [lat for s, _, lat in results if s == 200]
    statuses: dict[str, int] = {}
    for s, _, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    h = np.array([lat for _, lat in health])
    return {
        "clients": clients, "seconds": round(wall, 1), "server_args": server_args, "requests": len(results),
        "statuses": statuses, "images_per_s": round(len(ok) * body.get("n", 1) / wall, 2),
        "latency_s": {"p50": round(float(np.percentile(ok, 50)), 3), "p99": round(float(np.percentile(ok, 99)), 3),
                      "max": round(max(ok), 3)} if ok else None,
        "retry_after": sorted(retry_after),
        "health": {"checks": len(health), "failed": sum(1 for s, _ in health if s != 200),
                   "p50_ms": round(float(np.percentile(h, 50)) * 1000, 1),
                   "p99_ms": round(float(np.percentile(h, 99)) * 1000, 1), "max_ms": round(float(h.max()) * 1000, 1)},
        "batches": batch_stats(metrics),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="runs/trial1")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--sampler", default="dpmpp-2m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--port", type=int, default=8790)
    ap.add_argument("--out", default=str(HERE / "serve_load"))
    args = ap.parse_args()

    body = {"n": 1, "sampler": args.sampler, "steps": args.steps, "cfg": 3.0}
    phases = {
        "batched": run_phase(args.model, args.port, args.clients, args.seconds, body, [], None),
        "unbatched": run_phase(args.model, args.port + 1, args.clients, args.seconds, body,
                               ["--max-batch", "1"], None),
        "overload": run_phase(args.model, args.port + 2, 3 * args.clients, args.seconds, body,
                              ["--queue-size", "4"], 0.2),
    }
    errors = {name: {s: c for s, c in p["statuses"].items() if s not in ("200", "503")} for name, p in phases.items()}
    report = {
        "model": args.model, "request": body,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, shared with other jobs (contention); "
                   f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "phases": phases,
        "batching_speedup": round(phases["batched"]["images_per_s"]
                                  / max(phases["unbatched"]["images_per_s"], 1e-9), 2),
        "unexpected_errors": errors,
    }
    Path(args.out + ".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Load test of `difforge serve` ({args.model})", "",
             f"Request: `{json.dumps(body)}` with a random class and seed. Machine: {report['machine']}.", "",
             "| phase | clients | server | requests | statuses | images/s | p50 s | p99 s | mean batch "
             "| health p99 ms (max) | failed health |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in phases.items():
        lat = p["latency_s"] or {"p50": float("nan"), "p99": float("nan")}
        lines.append(f"| {name} | {p['clients']} | {' '.join(p['server_args']) or 'defaults'} | {p['requests']} | "
                     f"{', '.join(f'{k}: {v}' for k, v in sorted(p['statuses'].items()))} | {p['images_per_s']} | "
                     f"{lat['p50']} | {lat['p99']} | {p['batches']['mean_batch']} | "
                     f"{p['health']['p99_ms']} ({p['health']['max_ms']}) | "
                     f"{p['health']['failed']} / {p['health']['checks']} |")
    lines += ["", "Batching speed-up (batched / unbatched images per second; the phases ran one after the other "
              "under the same client load): "
              f"**{report['batching_speedup']}x**.", "",
              f"Statuses other than 200 and the deliberate 503: {errors}."]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
