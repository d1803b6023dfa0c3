"""The web page in real headless Chromium: open it, generate an image and watch it appear
from streamed intermediate images, draw a mask with the mouse, inpaint, download; type a
prompt for a text-to-image model and get its image."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                "(apt-get install chromium chromium-driver; `make browser` does it)")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--disable-dev-shm-usage", "--window-size=1100,760")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving(pipe, model_dir, **limits):
    """`difforge serve`'s server (its headers and limits) with the tiny model on a loopback port, in a thread."""
    from difforge.serve import ServeConfig, create_app
    from difforge.serve.net import make_server

    port = free_port()
    config = ServeConfig(max_steps=100, **limits)
    srv = make_server(create_app(pipe, model_dir, config), "127.0.0.1", port, config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(300):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def server(pipe, model_dir):
    yield from serving(pipe, model_dir)


@pytest.fixture(scope="module")
def locked_server(pipe, model_dir):
    yield from serving(pipe, model_dir, token="page-token-123")


@pytest.fixture(scope="module")
def text_server(text_pipe, text_model_dir):
    yield from serving(text_pipe, text_model_dir)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_state(driver, states, timeout=60.0) -> str:
    """Wait until <body data-state> is one of `states`; fail with the page's status line."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = driver.execute_script("return document.body.dataset.state")
        if state in states:
            return state
        time.sleep(0.05)
    status = driver.execute_script("return document.getElementById('status').textContent")
    raise AssertionError(f"page stuck in state {state!r}: {status}")


PIXELS = """
const c = document.getElementById(arguments[0]);
return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
"""


def test_page_generates_then_inpaints(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d = browser
    d.get(server + "/")
    wait_state(d, {"idle"})
    assert "tiny" in d.find_element(By.ID, "model-name").text
    assert d.find_element(By.ID, "image").get_attribute("width") == "8"  # the model's size, from /v1/model
    Select(d.find_element(By.ID, "klass")).select_by_value("2")
    Select(d.find_element(By.ID, "sampler")).select_by_value("ddim")
    for field, value in (("steps", "6"), ("seed", "5"), ("cfg", "2")):
        el = d.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)
    blank = d.execute_script(PIXELS, "image")
    d.find_element(By.ID, "generate").click()
    assert wait_state(d, {"done", "error"}) == "done", d.find_element(By.ID, "status").text
    frames = int(d.find_element(By.ID, "image").get_attribute("data-frames"))
    assert frames >= 2  # intermediate images were streamed and drawn
    generated = d.execute_script(PIXELS, "image")
    assert generated != blank and len(set(generated[0::4])) > 1  # an image appeared, not a flat canvas
    assert "seed 5" in d.find_element(By.ID, "seed-used").text
    link = d.find_element(By.ID, "download")
    assert link.is_displayed() and link.get_attribute("href").startswith("data:image/png;base64,")

    # draw a mask over the left half with the mouse
    mask = d.find_element(By.ID, "mask")
    w = mask.size["width"]
    ActionChains(d).move_to_element_with_offset(mask, -w // 2 + 10, -w // 2 + 10).click_and_hold() \
        .move_by_offset(w // 3, 0).move_by_offset(0, w // 2).move_by_offset(-w // 3, 0).release().perform()
    painted = int(mask.get_attribute("data-pixels"))
    assert painted > 0
    inpaint = d.find_element(By.ID, "inpaint")
    assert inpaint.is_enabled()
    inpaint.click()
    assert wait_state(d, {"done", "error"}) == "done", d.find_element(By.ID, "status").text
    after = d.execute_script(PIXELS, "image")
    m = d.execute_script(PIXELS, "mask")
    masked = [i for i in range(0, len(m), 4) if m[i + 3] >= 128]
    kept = [i for i in range(0, len(m), 4) if m[i + 3] == 0]
    assert masked and kept
    assert any(after[i] != generated[i] for i in masked)  # the masked part was filled anew
    assert all(after[i] == generated[i] for i in kept)  # the rest kept exactly
    assert not [e for e in d.get_log("browser") if "Content Security Policy" in e.get("message", "")]
    d.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 0


def test_page_generates_from_a_typed_prompt(text_server, browser, text_pipe):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d = browser
    d.get(text_server + "/")
    wait_state(d, {"idle"})
    assert not d.find_element(By.ID, "klass").is_displayed()  # a prompt instead of the class selector
    prompt, negative = d.find_element(By.ID, "prompt"), d.find_element(By.ID, "negative")
    assert prompt.is_displayed() and negative.is_displayed()
    assert prompt.get_attribute("value") == text_pipe.default_prompts()[0]  # prefilled with the model's example
    assert prompt.get_attribute("maxlength") == "200"
    assert d.find_element(By.ID, "cfg").is_enabled()
    Select(d.find_element(By.ID, "sampler")).select_by_value("ddim")
    prompt.clear()
    prompt.send_keys("a blue square")
    negative.send_keys("a red square")
    for field, value in (("steps", "4"), ("seed", "3"), ("cfg", "30")):  # strong guidance: the prompts show
        el = d.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)
    d.find_element(By.ID, "generate").click()
    assert wait_state(d, {"done", "error"}) == "done", d.find_element(By.ID, "status").text
    assert 'prompt "a blue square"' in d.find_element(By.ID, "seed-used").text
    shown = d.execute_script(PIXELS, "image")
    rgb = [v for i, v in enumerate(shown) if i % 4 != 3]
    options = {"sampler": "ddim", "steps": 4, "seed": 3, "cfg": 30}
    expected, _ = text_pipe.generate(prompts=["a blue square"], negative_prompt="a red square", **options)
    assert rgb == expected[0].permute(1, 2, 0).reshape(-1).tolist()  # both typed prompts were sent, the image drawn
    for prompts, negative in ((["a red square"], "a red square"), (["a blue square"], None)):
        other, _ = text_pipe.generate(prompts=prompts, negative_prompt=negative, **options)
        assert rgb != other[0].permute(1, 2, 0).reshape(-1).tolist()  # either prompt changes the image


def test_api_reference_works_offline_under_its_content_security_policy(server, browser):
    """/docs serves Swagger UI's scripts itself (the machine running the tests has no CDN)."""
    from selenium.webdriver.common.by import By

    d = browser
    d.get(server + "/docs")
    end = time.monotonic() + 30
    while time.monotonic() < end and len(d.find_elements(By.CSS_SELECTOR, ".opblock")) < 7:
        time.sleep(0.1)
    paths = {e.text for e in d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/generate", "/v1/inpaint", "/v1/restore", "/v1/model", "/healthz", "/readyz", "/metrics"} <= paths
    blocked = [e for e in d.get_log("browser") if "Content Security Policy" in e.get("message", "")]
    assert blocked == []


def test_page_asks_for_the_token_and_sends_it(locked_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.get(locked_server + "/")
    wait_state(d, {"locked"})
    assert d.find_element(By.ID, "token-row").is_displayed()
    token = d.find_element(By.ID, "token")
    token.send_keys("page-token-123")
    token.send_keys(Keys.TAB)  # the page reloads the model with the token
    wait_state(d, {"idle"})
    steps = d.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("3")
    d.find_element(By.ID, "generate").click()
    assert wait_state(d, {"done", "error"}) == "done", d.find_element(By.ID, "status").text
