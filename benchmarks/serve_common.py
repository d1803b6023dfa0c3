"""What the serving benchmarks share: start `difforge serve` on loopback with its log in a
file (a pipe nobody reads fills up and stalls the server), wait for it, describe the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"  # the benchmarks only ever talk to this machine's loopback address


def difforge_exe() -> str:
    return str(Path(sys.executable).with_name("difforge"))


def start_server(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """Run `cmd` with stdout and stderr appended to `log` (read it with `log_tail`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)


def log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(url: str, timeout: float = 120, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log_tail(log) if log else ''}")
        try:
            if urllib.request.urlopen(url + "/readyz", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not become ready:\n{log_tail(log) if log else ''}")


def stop_server(proc: subprocess.Popen, timeout: float = 30) -> int:
    """Ctrl-C (a drained shutdown), then kill if it does not exit."""
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def machine() -> dict:
    """CPU model, cores, threads the server may use, load average, versions."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"cpu": model, "cores": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform()}


def process_stats(pid: int) -> dict:
    """Resident memory (MiB) and thread count of a process, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            out["rss_mib"] = round(int(line.split()[1]) / 1024, 1)
        elif line.startswith("Threads:"):
            out["threads"] = int(line.split()[1])
    return out
