"""The serving benchmarks' shared helpers (benchmarks/serve_common.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_benchmarked_server_logs_to_a_file_and_never_stalls_on_a_full_pipe(tmp_path):
    common = load("serve_common")
    noisy = "import sys; sys.stderr.write('x' * 300_000 + '\\n'); sys.stderr.flush(); print('done')"  # > 64 KiB
    proc = common.start_server([sys.executable, "-c", noisy], tmp_path / "server.log")
    assert proc.wait(30) == 0
    log = (tmp_path / "server.log").read_text()
    assert log.count("x") == 300_000 and log.endswith("done\n")
    assert common.log_tail(tmp_path / "server.log", 1) == "done"
    for script in ("serve_load.py", "serve_soak.py"):  # both start their servers this way
        text = (BENCH / script).read_text()
        assert "start_server(" in text and "subprocess.PIPE" not in text, script


def test_the_soak_records_the_machine():
    common = load("serve_common")
    m = common.machine()
    assert m["cores"] >= 1 and len(m["load_average"]) == 3 and m["cpu"] and "omp_num_threads" in m
    stats = common.process_stats(__import__("os").getpid())
    assert stats["rss_mib"] > 1 and stats["threads"] >= 1
