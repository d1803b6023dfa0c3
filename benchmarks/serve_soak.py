"""Soak test of `difforge serve`: minutes of mixed valid, invalid and abusive traffic on loopback.

Starts the real server (`difforge serve`, on 127.0.0.1 only) with a tiny model and, for
`--minutes`, runs at once:

  valid       3 clients: generate (JSON, PNG grid, event stream), inpaint (JSON), restore
              (multipart); each must be served (200) or refused with 503
  invalid     malformed JSON, deep nesting, wrong types, unknown fields, no content type,
              foreign Host and Origin, refused image formats, odd methods: 4xx JSON, never 5xx
  oversized   bodies over --max-body, announced and chunked: 413
  slow        slow headers, slow bodies, silent connections: cut off by --read-timeout
  disconnect  valid long requests whose client goes away mid-way
  burst       every 45 s, 16 requests at once against a queue of 8: 200 or 503
  health      /healthz every 0.5 s (must always answer 200), /readyz and /metrics every 5 s

and samples the server's resident memory (RSS) and threads every 5 s. Every loop stops at
the deadline by itself. Records the machine (CPU, cores, threads, load average) with the
results.

    OMP_NUM_THREADS=1 python benchmarks/serve_soak.py                 # 10 minutes
    OMP_NUM_THREADS=1 python benchmarks/serve_soak.py --minutes 1 --out /tmp/soak

Without MODEL, trains a tiny model on scikit-learn's digits first (30 steps, seconds).
Writes benchmarks/serve_soak.json and benchmarks/serve_soak.md.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from serve_common import HOST, difforge_exe, log_tail, machine, process_stats, start_server, stop_server, wait_ready  # noqa: E402

LIMITS = {"--max-n": "4", "--max-steps": "60", "--queue-size": "8", "--timeout": "30", "--max-body": "262144",
          "--max-connections": "40", "--read-timeout": "3"}
MAX_BODY = int(LIMITS["--max-body"])


class Soak:
    def __init__(self, port: int, seconds: float, size: int, channels: int):
        self.port, self.deadline = port, time.monotonic() + seconds
        self.t0 = time.monotonic()
        self.size, self.channels = size, channels
        self.lock = threading.Lock()
        self.statuses: dict[str, Counter] = {}
        self.violations: list[str] = []
        self.latency: dict[str, list[float]] = {}
        self.notes: Counter = Counter()

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def record(self, actor: str, status: int | str, ok: bool, what: str, seconds: float | None = None) -> None:
        with self.lock:
            self.statuses.setdefault(actor, Counter())[str(status)] += 1
            if seconds is not None:
                self.latency.setdefault(actor, []).append(seconds)
            if not ok and len(self.violations) < 200:
                self.violations.append(f"{actor}: {what} -> {status}")

    # ------------------------------------------------------------ HTTP on loopback
    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 60) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        except (OSError, http.client.HTTPException):
            return 0, {}, b""
        finally:
            conn.close()

    def png(self, value: int = 120, size: int | None = None, fmt: str = "PNG") -> bytes:
        from PIL import Image

        s = size or self.size
        buf = io.BytesIO()
        Image.new("L" if self.channels == 1 else "RGB", (s, s), value if self.channels == 1 else (value,) * 3).save(
            buf, format=fmt)
        return buf.getvalue()

    def mask(self) -> bytes:
        from PIL import Image

        a = np.zeros((self.size, self.size), np.uint8)
        a[:, : self.size // 2] = 255
        buf = io.BytesIO()
        Image.fromarray(a, "L").save(buf, format="PNG")
        return buf.getvalue()

    def valid_request(self, rng: random.Random) -> tuple[str, str, bytes, dict]:
        j = {"Content-Type": "application/json"}
        kind = rng.choice(["json", "png", "sse", "inpaint", "restore"])
        gen = {"n": rng.randint(1, 4), "steps": rng.randint(4, 12), "sampler": rng.choice(["ddim", "dpmpp-2m"]),
               "seed": rng.randrange(10**6), "class": rng.randrange(10)}
        if kind == "json":
            return kind, "/v1/generate", json.dumps(gen).encode(), j
        if kind == "png":
            return kind, "/v1/generate", json.dumps(gen).encode(), {**j, "Accept": "image/png"}
        if kind == "sse":
            return kind, "/v1/generate", json.dumps(gen).encode(), {**j, "Accept": "text/event-stream"}
        if kind == "inpaint":
            body = {"image": base64.b64encode(self.png(rng.randrange(256))).decode(),
                    "mask": base64.b64encode(self.mask()).decode(), "steps": rng.randint(4, 10),
                    "method": rng.choice(["blend", "repaint"]), "jump_length": 2, "resample": 2,
                    "n": rng.randint(1, 2)}
            return kind, "/v1/inpaint", json.dumps(body).encode(), j
        boundary = "soakboundary"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="strength"\r\n\r\n0.4\r\n'.encode(),
                 f'--{boundary}\r\nContent-Disposition: form-data; name="steps"\r\n\r\n'
                 f'{rng.randint(4, 12)}\r\n'.encode(),
                 f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                 f'Content-Type: image/png\r\n\r\n'.encode() + self.png(rng.randrange(256)) + b"\r\n",
                 f"--{boundary}--\r\n".encode()]
        return kind, "/v1/restore", b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    # ------------------------------------------------------------ actors
    def valid(self, k: int) -> None:
        rng = random.Random(k)
        for _ in range(100_000):
            if not self.running():
                return
            kind, path, body, headers = self.valid_request(rng)
            start = time.monotonic()
            status, h, data = self.request("POST", path, body, headers)
            ok = status in (200, 503)
            if status == 200 and kind == "sse":
                ok = b"event: result" in data
            self.record("valid", status, ok, f"{kind} {data[:120]!r}", time.monotonic() - start)
            if status == 503:
                time.sleep(float(h.get("retry-after", "1")) * rng.random())

    def invalid(self) -> None:
        img = base64.b64encode(self.png()).decode()
        eps = base64.b64encode(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n").decode()
        j = {"Content-Type": "application/json"}
        cases = [
            ("POST", "/v1/generate", b"{not json", j),
            ("POST", "/v1/generate", b"[" * 30_000 + b"]" * 30_000, j),
            ("POST", "/v1/generate", b'{"steps": "many"}', j),
            ("POST", "/v1/generate", b'{"n": 1000}', j),
            ("POST", "/v1/generate", b'{"colour": "red"}', j),
            ("POST", "/v1/generate", b'{"steps": 2}', {}),
            ("POST", "/v1/generate", b'{"steps": 2}', {"Content-Type": "text/plain"}),
            ("POST", "/v1/generate", b'{"steps": 2}', {**j, "Origin": "https://elsewhere.example"}),
            ("GET", "/v1/model", None, {"Host": "rebound.example:8000"}),
            ("POST", "/v1/restore", json.dumps({"image": eps, "strength": 0.5}).encode(), j),
            ("POST", "/v1/restore", json.dumps({"image": "!!!", "strength": 0.5}).encode(), j),
            ("POST", "/v1/inpaint", json.dumps({"image": img, "mask": img, "steps": 4}).encode(), j),  # empty mask
            ("POST", "/v1/inpaint", json.dumps({"image": base64.b64encode(self.png(size=self.size * 9)).decode(),
                                                "mask": img}).encode(), j),
            ("FROBNICATE" * 20, "/v1/generate", None, {}),
            ("GET", "/no/such/route/" + "x" * 200, None, {}),
        ]
        rng = random.Random(7)
        for _ in range(100_000):
            if not self.running():
                return
            method, path, body, headers = rng.choice(cases)
            status, h, data = self.request(method, path, body, headers, timeout=30)
            try:
                is_json = h.get("content-type") == "application/json" and "detail" in json.loads(data)
            except ValueError:
                is_json = False
            self.record("invalid", status, 400 <= status < 500 and is_json,
                        f"{method[:12]} {path[:40]} {data[:100]!r}")
            time.sleep(0.05)

    def oversized(self) -> None:
        rng = random.Random(11)
        for _ in range(100_000):
            if not self.running():
                return
            kind = rng.choice(["announced", "chunked"])
            status: int | str = "no answer"
            try:
                s = socket.create_connection((HOST, self.port), timeout=10)
            except OSError:
                self.record("oversized", "connect failed", False, kind)
                continue
            with s:
                head = b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                try:
                    if kind == "announced":
                        s.sendall(head + f"Content-Length: {MAX_BODY * 4}\r\n\r\n".encode() + b"{" * 1024)
                    else:
                        s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
                        chunk = b"{" * 65536
                        for _ in range(MAX_BODY // len(chunk) + 2):
                            s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                except OSError:
                    pass  # the server answered and closed while the rest was still being sent
                try:
                    reply = s.recv(4096)
                    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else "no answer"
                except OSError:
                    status = "reset after the limit"
            self.record("oversized", status, status in (413, "reset after the limit"), kind)
            time.sleep(0.3)

    def slow(self) -> None:
        """Up to 6 slow or silent connections at a time; each must be closed by the server."""
        rng = random.Random(13)
        read_timeout = float(LIMITS["--read-timeout"])
        for _ in range(100_000):
            if not self.running():
                return
            socks = []
            for i in range(6):
                try:
                    s = socket.create_connection((HOST, self.port), timeout=read_timeout + 5)
                except OSError:
                    self.record("slow", 0, False, "connect failed")
                    continue
                kind = ["silent", "headers", "body"][i % 3]
                if kind == "headers":
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHo")
                elif kind == "body":
                    s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 500\r\n\r\n{\"n\"")
                socks.append((kind, s, time.monotonic()))
            for kind, s, start in socks:
                try:
                    while True:  # trickle a byte now and then until the server closes the connection
                        if kind != "silent":
                            s.sendall(b"x")
                        if s.recv(4096) == b"" or not self.running():
                            break
                except socket.timeout:
                    pass
                except OSError:
                    pass
                held = time.monotonic() - start
                s.close()
                in_time = held < read_timeout + 3
                self.record("slow", "closed by the server" if in_time else "held too long", in_time,
                            f"{kind} held {held:.1f} s", held)
            time.sleep(rng.uniform(0.5, 2))

    def disconnect(self) -> None:
        rng = random.Random(17)
        for _ in range(100_000):
            if not self.running():
                return
            body = json.dumps({"n": 4, "steps": 60, "sampler": "ddim", "seed": rng.randrange(1000)}).encode()
            try:
                s = socket.create_connection((HOST, self.port), timeout=10)
                s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                time.sleep(rng.uniform(0.05, 1.0))
                s.close()
                self.record("disconnect", 499, True, "closed")
            except OSError:
                self.record("disconnect", 0, False, "connect failed")
            time.sleep(rng.uniform(0.5, 2))

    def burst(self) -> None:
        rng = random.Random(19)
        for _ in range(1000):
            end = time.monotonic() + 45
            while self.running() and time.monotonic() < end:
                time.sleep(0.5)
            if not self.running():
                return
            reqs = [self.valid_request(rng) for _ in range(16)]

            def one(req):
                kind, path, body, headers = req
                start = time.monotonic()
                status, _, data = self.request("POST", path, body, headers)
                self.record("burst", status, status in (200, 503), f"{kind} {data[:100]!r}", time.monotonic() - start)

            threads = [threading.Thread(target=one, args=(r,)) for r in reqs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    def health(self) -> None:
        last_ready = 0.0
        for _ in range(1_000_000):
            if not self.running():
                return
            start = time.monotonic()
            status, _, _ = self.request("GET", "/healthz", timeout=2)
            self.record("health", status, status == 200, "healthz", time.monotonic() - start)
            if time.monotonic() - last_ready > 5:
                last_ready = time.monotonic()
                status, _, _ = self.request("GET", "/readyz", timeout=2)
                self.record("readyz", status, status == 200, "readyz")
            time.sleep(0.5)


def tiny_model(out: Path) -> Path:
    """A tiny class-conditional model, trained 30 steps on scikit-learn's digits (8x8)."""
    subprocess.run([difforge_exe(), "train", "--dataset", "digits", "--model", "tiny", "--max-steps", "30",
                    "--out", str(out), "--sample-every", "0", "--checkpoint-every", "0", "--device", "cpu"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def series_count(metrics: bytes) -> int:
    return sum(1 for line in metrics.decode(errors="replace").splitlines()
               if line.startswith("difforge_requests_total{"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="run or model directory [default: a tiny model trained first]")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--port", type=int, default=8797)
    ap.add_argument("--out", default=str(HERE / "serve_soak"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve-soak-"))
    model = args.model or str(tiny_model(work / "model"))
    log = work / "server.log"
    before = machine()
    server = start_server([difforge_exe(), "serve", model, "--host", HOST, "--port", str(args.port), "--device", "cpu",
                           *[x for kv in LIMITS.items() for x in kv]], log)
    url = f"http://{HOST}:{args.port}"
    samples: list[dict] = []
    try:
        wait_ready(url, proc=server, log=log)
        conn = http.client.HTTPConnection(HOST, args.port, timeout=10)
        conn.request("GET", "/v1/model")
        info = json.loads(conn.getresponse().read())
        soak = Soak(args.port, args.minutes * 60, info["image_size"], info["channels"])
        metrics_sizes = []
        actors = [threading.Thread(target=soak.valid, args=(k,)) for k in range(3)] + [
            threading.Thread(target=f) for f in (soak.invalid, soak.oversized, soak.slow, soak.disconnect,
                                                  soak.burst, soak.health)]
        for t in actors:
            t.start()
        for _ in range(100_000):  # sample the server every 5 s
            if not soak.running():
                break
            stats = process_stats(server.pid)
            status, _, body = soak.request("GET", "/metrics", timeout=5)
            metrics_sizes.append(series_count(body) if status == 200 else None)
            samples.append({"t_s": round(time.monotonic() - soak.t0, 1), **stats, "metrics_series": metrics_sizes[-1]})
            time.sleep(5)
        for t in actors:
            t.join(120)
        status, _, body = soak.request("GET", "/metrics", timeout=10)
    except BaseException:
        print(f"server log ({log}):\n{log_tail(log)}", file=sys.stderr)
        stop_server(server)
        raise
    code = stop_server(server)
    after = machine()
    report = summarise(args, soak, samples, before, after, code, model, log)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(report) + "\n")
    print(markdown(report))


def summarise(args, soak: Soak, samples: list[dict], before: dict, after: dict, code: int, model: str, log: Path):
    rss = [(s["t_s"], s["rss_mib"]) for s in samples if "rss_mib" in s]
    warm = [r for t, r in rss if t >= 60] or [r for _, r in rss]
    half = [(t, r) for t, r in rss if t >= rss[-1][0] / 2] if rss else []
    slope = float(np.polyfit([t for t, _ in half], [r for _, r in half], 1)[0] * 60) if len(half) > 2 else 0.0
    health = soak.latency.get("health", [0.0])
    statuses = {actor: dict(sorted(c.items())) for actor, c in sorted(soak.statuses.items())}
    five_xx = {a: sum(v for k, v in c.items() if k.startswith("5") and k != "503") for a, c in statuses.items()}
    result = {
        "rss_mib": {"start": rss[0][1] if rss else None, "after_first_minute": warm[0] if warm else None,
                    "end": rss[-1][1] if rss else None, "max": max(r for _, r in rss) if rss else None,
                    "slope_second_half_mib_per_min": round(slope, 2)},
        "health": {"checks": statuses.get("health", {}).get("200", 0) + sum(
            v for k, v in statuses.get("health", {}).items() if k != "200"),
            "failed": sum(v for k, v in statuses.get("health", {}).items() if k != "200"),
            "p50_ms": round(float(np.percentile(health, 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(health, 99)) * 1000, 1), "max_ms": round(max(health) * 1000, 1)},
        "valid": {"served": statuses.get("valid", {}).get("200", 0) + statuses.get("burst", {}).get("200", 0),
                  "refused_503": statuses.get("valid", {}).get("503", 0) + statuses.get("burst", {}).get("503", 0)},
        "unexpected_5xx": {a: n for a, n in five_xx.items() if n},
        "violations": soak.violations,
        "metrics_series": {"first": samples[0].get("metrics_series") if samples else None,
                           "last": samples[-1].get("metrics_series") if samples else None},
        "server_exit_code": code,
    }
    result["passed"] = bool(not soak.violations and not result["unexpected_5xx"] and result["health"]["failed"] == 0
                            and abs(slope) < 1.0 and code == 0)
    return {"minutes": args.minutes, "model": "tiny (digits, 30 steps)" if model.startswith(tempfile.gettempdir())
            else model, "server_limits": LIMITS, "machine_at_start": before, "machine_at_end": after,
            "server_threads": samples[-1].get("threads") if samples else None, "statuses": statuses,
            "result": result, "samples": samples}


def markdown(r: dict) -> str:
    m, res = r["machine_at_start"], r["result"]
    lines = [f"# Soak test of `difforge serve` ({r['minutes']:g} minutes, loopback)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, OMP_NUM_THREADS={m['omp_num_threads']}, server threads "
             f"{r['server_threads']}; load average {m['load_average']} at the start, "
             f"{r['machine_at_end']['load_average']} at the end (1, 5, 15 min). Python {m['python']}, torch "
             f"{m['torch']}. Model: {r['model']}. Server limits: "
             + " ".join(f"`{k} {v}`" for k, v in r["server_limits"].items()) + ".", "",
             f"**{'Passed' if res['passed'] else 'FAILED'}**: resident memory {res['rss_mib']['start']} MiB at the "
             f"start, {res['rss_mib']['after_first_minute']} after the first minute, {res['rss_mib']['end']} at the "
             f"end (max {res['rss_mib']['max']}; trend over the second half "
             f"{res['rss_mib']['slope_second_half_mib_per_min']:+} MiB/min); /healthz answered "
             f"{res['health']['checks'] - res['health']['failed']} of {res['health']['checks']} polls (p50 "
             f"{res['health']['p50_ms']} ms, p99 {res['health']['p99_ms']} ms, max {res['health']['max_ms']} ms); "
             f"valid requests: {res['valid']['served']} served, {res['valid']['refused_503']} refused with 503, "
             f"none otherwise; request series in /metrics: {res['metrics_series']['first']} after 5 s, "
             f"{res['metrics_series']['last']} at the end; server exit code {res['server_exit_code']} "
             f"(drained on Ctrl-C).", "",
             "| traffic | statuses |", "|---|---|"]
    for actor, c in r["statuses"].items():
        lines.append(f"| {actor} | {', '.join(f'{k}: {v}' for k, v in c.items())} |")
    lines += ["", "slow: connections of slow or silent clients, each closed by the server within the read timeout; "
              "disconnect 499: the client went away on purpose; oversized 'reset after the limit': the server "
              "answered 413 and closed while the client was still sending.",
              f"Violations: {res['violations'] or 'none'}. Unexpected 5xx: {res['unexpected_5xx'] or 'none'}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
