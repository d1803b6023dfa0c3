"""Screenshot of the web page of `difforge serve` (docs/serving.png), taken in headless Chromium.

Starts `difforge serve MODEL` on a loopback port, generates an image on the page (class,
sampler, steps, CFG, seed), draws a mask with the mouse, inpaints it, and saves the page.

    python benchmarks/serve_screenshot.py runs/trial1 --out docs/serving.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--window-size=1000,720", "--hide-scrollbars")


def wait_state(driver, states, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if driver.execute_script("return document.body.dataset.state") in states:
            return
        time.sleep(0.1)
    raise RuntimeError(driver.execute_script("return document.getElementById('status').textContent"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--out", default="docs/serving.png")
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--klass", default="7", help="class index to generate")
    ap.add_argument("--seed", default="3")
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    exe = Path(sys.executable).with_name("difforge")
    server = subprocess.Popen([str(exe), "serve", args.model, "--port", str(args.port)])
    url = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(url + "/readyz", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium")
        for flag in FLAGS:
            opts.add_argument(flag)
        with tempfile.TemporaryDirectory() as profile:
            opts.add_argument(f"--user-data-dir={profile}")
            d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
            try:
                d.get(url + "/")
                wait_state(d, {"idle"})
                Select(d.find_element(By.ID, "klass")).select_by_value(args.klass)
                Select(d.find_element(By.ID, "sampler")).select_by_value("dpmpp-2m")
                seed = d.find_element(By.ID, "seed")
                seed.clear()
                seed.send_keys(args.seed)
                d.find_element(By.ID, "generate").click()
                wait_state(d, {"done"})
                mask = d.find_element(By.ID, "mask")
                w = mask.size["width"]
                ActionChains(d).move_to_element_with_offset(mask, -w // 2 + 20, -w // 6).click_and_hold() \
                    .move_by_offset(w // 4, 0).move_by_offset(0, w // 5).move_by_offset(-w // 4, 0).release().perform()
                d.find_element(By.ID, "inpaint").click()
                wait_state(d, {"done"})
                d.save_screenshot(args.out)
            finally:
                d.quit()
    finally:
        server.terminate()
        server.wait(10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
