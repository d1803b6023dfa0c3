"""`difforge serve` as a user runs it: a real uvicorn process on a loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_until_interrupted(model_dir):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIFFORGE_TOKEN": "token-from-env"}
    proc = subprocess.Popen([sys.executable, "-m", "difforge", "serve", str(model_dir), "--port", str(port),
                             "--device", "cpu", "--max-n", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                    assert json.load(r)["ready"] is True
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.1)
        req = urllib.request.Request(url + "/v1/generate", data=json.dumps({"n": 2, "steps": 2, "seed": 4}).encode(),
                                     headers={"content-type": "application/json",
                                              "authorization": "Bearer token-from-env"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.load(r)["seeds"] == [4, 5]
        try:  # the token comes from DIFFORGE_TOKEN; --max-n from the command line
            urllib.request.urlopen(urllib.request.Request(url + "/v1/generate", data=b'{"n": 3}',
                                                          headers={"content-type": "application/json",
                                                                   "authorization": "Bearer token-from-env"}))
            raise AssertionError("n = 3 was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 422
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"serving {model_dir} on http://127.0.0.1:{port}/" in out and "token required" in out
