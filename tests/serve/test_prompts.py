"""Text prompts in the HTTP API: a tiny text-to-image run trained for two steps (conftest),
served; prompts batch like labels, and bad prompts are one-line 422s that cost no device time."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from difforge.defaults import DEFAULT_CFG_TEXT

RED, BLUE = "a red square", "a blue square"
CFG = 30  # the model trained two steps: its prompts change its images visibly at strong guidance only


def images_of(out: dict) -> torch.Tensor:
    """Base64 RGB PNGs -> uint8 (N, 3, H, W), as Pipeline.generate returns them."""
    arrays = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in out["images"]]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def generate(client, **body) -> dict:
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_prompt_request_returns_the_pipelines_images(text_client, text_pipe):
    out = generate(text_client, prompt=RED, n=2, sampler="ddim", steps=4, seed=3)
    assert out["prompts"] == [RED, RED] and out["labels"] == [None, None] and out["seeds"] == [3, 4]
    assert (out["channels"], out["cfg"]) == (3, DEFAULT_CFG_TEXT)  # a text model guides by default
    expected, _ = text_pipe.generate(prompts=[RED, RED], sampler="ddim", steps=4, seed=3)
    assert torch.equal(images_of(out), expected)  # an independent call of the library


def test_a_list_of_different_prompts_gives_each_image_what_it_gets_alone(text_client):
    prompts = [RED, BLUE, "a big red square, top left"]  # three token lengths, padded in the batch
    out = generate(text_client, prompts=prompts, steps=4, seed=10, cfg=CFG)
    assert out["prompts"] == prompts and out["seeds"] == [10, 11, 12]
    together = images_of(out)
    for i, p in enumerate(prompts):
        alone = images_of(generate(text_client, prompt=p, steps=4, seed=10 + i, cfg=CFG))
        assert torch.equal(together[i], alone[0])
    other = images_of(generate(text_client, prompt=BLUE, steps=4, seed=10, cfg=CFG))
    assert not torch.equal(together[0], other[0])  # the prompt matters: the check above could fail


def test_merged_requests_with_different_prompts_equal_each_alone(text_pipe):
    """Requests queued together share one batch on the device; the prompts of each stay its own."""
    from difforge.serve import ServeConfig
    from difforge.serve.engine import Engine, Job
    from difforge.serve.metrics import ServeMetrics

    engine = Engine(text_pipe, ServeConfig(max_batch=8, batch_window_s=0.2))
    engine.metrics = ServeMetrics()
    params = {"sampler": "ddim", "steps": 3, "cfg": float(CFG)}
    negative = {**params, "negative_prompt": BLUE}
    key = tuple(sorted(params.items()))
    jobs = [Job("generate", params, [10, 11], prompts=[RED, BLUE], key=key),
            Job("generate", params, [50], prompts=["a small blue square, low"], key=key),
            Job("generate", params, [7, 8], prompts=None, key=key),  # the empty prompt
            Job("generate", negative, [1], prompts=[RED], key=tuple(sorted(negative.items())))]
    for j in jobs:
        engine.submit(j)
    engine.start(warmup=False)
    results = [j.future.result(timeout=60) for j in jobs]
    engine.stop()
    assert engine.metrics.sampler_runs.labels(kind="generate")._value.get() == 2  # three merged, the negative alone
    assert engine.metrics.batch_size._sum.get() == 6
    for j, got in zip(jobs, results):
        solo, _ = text_pipe.generate(prompts=j.prompts or [""] * j.n, seeds=j.seeds, **j.params)
        assert torch.equal(got, solo)  # whatever it was batched with
    swapped, _ = text_pipe.generate(prompts=[BLUE, RED], seeds=[10, 11], **params)
    assert not torch.equal(results[0], swapped)  # the prompts matter


def test_no_prompt_and_the_empty_prompt_are_the_unconditional_samples(text_client, text_pipe):
    none, empty = generate(text_client, n=2, steps=3, seed=5), generate(text_client, prompt="", n=2, steps=3, seed=5)
    assert none["prompts"] == ["", ""] and none["images"] == empty["images"]
    expected, _ = text_pipe.generate(n=2, steps=3, seed=5)  # Pipeline.generate without prompts, default sampler
    assert torch.equal(images_of(none), expected)


def test_a_negative_prompt_replaces_the_empty_prompt_in_guidance(text_client, text_pipe):
    out = generate(text_client, prompt=RED, negative_prompt=BLUE, steps=3, seed=2, cfg=CFG)
    expected, _ = text_pipe.generate(prompts=[RED], negative_prompt=BLUE, steps=3, seed=2, cfg=CFG)
    assert torch.equal(images_of(out), expected)
    plain = generate(text_client, prompt=RED, steps=3, seed=2, cfg=CFG)
    assert plain["images"] != out["images"]
    assert generate(text_client, prompt=RED, negative_prompt="", steps=3, seed=2, cfg=CFG)["images"] == plain["images"]


@pytest.mark.parametrize("body, needle", [
    ({"prompt": "x" * 201}, "prompt: 201 characters, over this server's maximum of 200"),
    ({"prompts": [RED, "y" * 250]}, "prompts[1]: 250 characters, over this server's maximum of 200"),
    ({"negative_prompt": "z" * 201}, "negative_prompt: 201 characters, over this server's maximum of 200"),
    ({"prompt": "x" * 40}, "prompt: prompt 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' is 42 tokens (UTF-8 bytes + "
                           "BOS/EOS), over the limit of 32; shorten it"),  # the model's max_tokens is 32
    ({"prompt": "é" * 20}, "is 42 tokens"),  # 20 characters, 40 UTF-8 bytes
    ({"prompt": RED, "negative_prompt": "n" * 31}, "negative_prompt: prompt"),
    ({"class": 1}, "class: this is a text-to-image model: it takes no class; give `prompt` or `prompts`"),
    ({"labels": [0, 1]}, "labels: this is a text-to-image model: it takes no class; give `prompts`"),
    ({"prompt": RED, "prompts": [BLUE]}, "give `prompt` or `prompts`, not both"),
    ({"prompts": []}, "prompts: empty list"),
    ({"prompts": [RED, BLUE], "n": 3}, "n = 3 but 2 prompts were given"),
    ({"prompts": [RED] * 9}, "prompts: 9 prompts, over this server's maximum of 8 images per request"),
    ({"prompt": RED, "n": 10**12}, "n = 1000000000000 is over this server's maximum of 8"),
    ({"prompt": 7}, "prompt: Input should be a valid string"),
    ({"prompt": ["a", "b"]}, "prompt: Input should be a valid string"),
    ({"prompts": [RED, None]}, "prompts.1: Input should be a valid string"),
    ({"prompts": RED}, "prompts: Input should be a valid list"),
])
def test_bad_prompts_are_a_clear_422(text_client, body, needle):
    r = text_client.post("/v1/generate", json={"steps": 2, **body})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert needle in detail and "\n" not in detail


@pytest.mark.parametrize("raw, needle", [
    (b'{"prompt": "a \\ud800 square"}', "prompt: not valid Unicode text (a lone surrogate"),
    (b'{"prompts": ["a red square", "\\udfff"]}', "prompts[1]: not valid Unicode text"),
    (b'{"negative_prompt": "\\ud83d"}', "negative_prompt: not valid Unicode text"),
    (b'{"prompt": "a \xff square"}', "body is not valid JSON: 'utf-8' codec can't decode byte 0xff"),
])
def test_text_that_is_not_unicode_is_a_clear_422(text_client, raw, needle):
    r = text_client.post("/v1/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and needle in r.json()["detail"], r.text


def test_prompts_to_a_model_without_text_are_a_clear_422(client, tmp_path, serve_helpers):
    for field, value in (("prompt", RED), ("prompts", [RED]), ("negative_prompt", BLUE)):
        r = client.post("/v1/generate", json={field: value, "steps": 2})
        assert r.status_code == 422 and r.json()["detail"] == (
            f"{field}: this model is class-conditional, not text-to-image: it takes no prompt; give `class` or "
            f"`labels`")
    from difforge.pipeline import load_pipeline

    d = serve_helpers["make_model_dir"](tmp_path / "u", num_classes=None)
    with serve_helpers["make_client"](load_pipeline(d), d) as c:
        r = c.post("/v1/generate", json={"prompt": "", "steps": 2})
        assert r.status_code == 422
        assert r.json()["detail"] == "prompt: this model is unconditional, not text-to-image: it takes no prompt"


def test_edits_of_a_text_model_run_with_the_empty_prompt(text_client):
    image = np.zeros((8, 8, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    body = {"image": base64.b64encode(buf.getvalue()).decode(), "steps": 3, "seed": 0}
    r = text_client.post("/v1/restore", json=body)
    assert r.status_code == 200 and r.json()["cfg"] is None and r.json()["prompts"] is None
    for extra, needle in (({"prompt": RED}, "prompt: unknown field"), ({"cfg": 2}, "guidance does not apply"),
                          ({"class": 0}, "class: this is a text-to-image model: it takes no class")):
        r = text_client.post("/v1/restore", json={**body, **extra})
        assert r.status_code == 422 and needle in r.json()["detail"], r.text


def test_model_info_says_whether_the_model_takes_text(text_client, client):
    m = text_client.get("/v1/model").json()
    assert m["takes_text"] is True and sorted(m["prompts"]) == [BLUE, RED]  # the training captions
    assert m["text"] == {"encoder": "scratch", "max_tokens": 32}
    assert m["num_classes"] is None and m["default_cfg"] == DEFAULT_CFG_TEXT and m["limits"]["max_prompt_chars"] == 200
    m = client.get("/v1/model").json()
    assert m["takes_text"] is False and m["prompts"] is None and m["text"] is None


def test_the_character_limit_is_the_servers_setting(text_pipe, text_model_dir, serve_helpers):
    with serve_helpers["make_client"](text_pipe, text_model_dir, max_prompt_chars=12) as c:
        assert c.post("/v1/generate", json={"prompt": RED, "steps": 2}).status_code == 200  # 12 characters
        r = c.post("/v1/generate", json={"prompt": BLUE, "steps": 2})
        assert r.status_code == 422 and r.json()["detail"] == "prompt: 13 characters, over this server's maximum of 12"
        assert c.get("/v1/model").json()["limits"]["max_prompt_chars"] == 12


def test_the_cli_passes_the_character_limit_on(model_dir, capsys):
    from difforge.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", str(model_dir), "--max-prompt-chars", "0"])
    assert e.value.code == 1 and "max_prompt_chars must be >= 1, got 0" in capsys.readouterr().err


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(codec=None, exclude_categories=()), max_size=60) | st.text(max_size=250),
       st.none() | st.text(max_size=40))
def test_any_text_is_an_image_or_one_line_422(text_client, prompt, negative):
    body = {"prompt": prompt, "steps": 1, "seed": 0, **({"negative_prompt": negative} if negative is not None else {})}
    raw = json.dumps(body).encode()  # ASCII with \\u escapes: lone surrogates travel too
    r = text_client.post("/v1/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        detail = r.json()["detail"]
        assert detail.startswith(("prompt: ", "negative_prompt: ")) and "\n" not in detail
    else:
        assert r.json()["prompts"] == [prompt]
