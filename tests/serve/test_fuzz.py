"""Property-based fuzzing of every route in the OpenAPI schema (hypothesis, offline, about
20 s): bodies drawn from each route's JSON schema, multipart forms with real, broken and
foreign image files, any JSON, any bytes under any content type, other methods and
Accept headers. Whatever is sent: no 5xx, no traceback, every error one line of JSON."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

SIZE = 8
SETTINGS = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def fuzz_client(pipe, model_dir, serve_helpers):
    # small limits: valid requests sample a few tiny images; the queue and timeouts are exercised too
    with serve_helpers["make_client"](pipe, model_dir, max_n=2, max_steps=3, max_body_bytes=32 * 1024,
                                      timeout_s=20, queue_size=4) as c:
        yield c


def operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [(path, method.upper(), op) for path, item in sorted(spec["paths"].items())
            for method, op in sorted(item.items())]


def from_schema(schema: dict) -> st.SearchStrategy:
    """Values of a JSON schema as pydantic writes them for these routes (objects, anyOf,
    integer/number with bounds, string, array, null), mostly valid, sometimes a bound off
    by one, and objects with a field left out or an unknown one added."""
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    kind = schema.get("type")
    lo, hi = schema.get("minimum", schema.get("exclusiveMinimum")), schema.get("maximum")
    if kind == "integer":
        return st.integers(None if lo is None else lo - 1, None if hi is None else hi + 1)
    if kind == "number":
        return st.floats(None if lo is None else lo - 1, None if hi is None else hi + 1, allow_nan=False)
    if kind == "string":
        return st.text(max_size=30) | st.sampled_from(["ddim", "ddpm", "euler", "dpmpp-2m", "karras", "blend",
                                                        "repaint", "zero", "two"])
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})), max_size=4)
    if kind == "null":
        return st.none()
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return st.fixed_dictionaries({}, optional={k: from_schema(v) for k, v in props.items()}) | \
            st.fixed_dictionaries({"unknown": st.integers()})
    return any_json()


def image_files() -> st.SearchStrategy[bytes]:
    """Valid images of the right and wrong size, in accepted and refused formats, and broken ones."""
    def encode(size, fmt, mode):
        buf = io.BytesIO()
        Image.new(mode, (size, size), 128).save(buf, format=fmt)
        return buf.getvalue()

    valid = st.builds(encode, st.sampled_from([SIZE, SIZE, 3, 40]), st.sampled_from(["PNG", "JPEG", "GIF", "BMP",
                                                                                      "TIFF", "WEBP", "ICO", "TGA"]),
                      st.sampled_from(["L", "RGB"]))
    broken = st.tuples(valid, st.integers(0, 200), st.binary(min_size=1, max_size=8)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]):])
    return st.one_of(valid, broken, st.binary(max_size=300),
                     st.just(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"))


def any_json() -> st.SearchStrategy:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    def nested(inner):
        return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)

    return st.recursive(scalars, nested, max_leaves=12)


@st.composite
def requests(draw, ops):
    path, method, op = draw(st.sampled_from(ops))
    headers = {"Accept": draw(st.sampled_from(["application/json", "image/png", "text/event-stream", "*/*",
                                               "text/html;q=0.9", "\u00e9/\u00e9"]).filter(str.isascii))}
    if draw(st.integers(0, 9)) == 0:  # another method on this path
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FROB"]))
    kw: dict = {}
    content = (op.get("requestBody") or {}).get("content", {})
    if method == "POST":
        kind = draw(st.sampled_from(["schema", "schema", "schema", "multipart", "json", "bytes", "big"]))
        if kind == "schema" and "application/json" in content:
            body = draw(from_schema(content["application/json"]["schema"]))
            if isinstance(body, dict) and draw(st.booleans()):  # pull numbers towards the valid range
                body.update({k: draw(st.integers(1, 3)) for k in ("n", "steps") if k in body})
            for f in ("image", "mask"):
                if isinstance(body, dict) and f in body and draw(st.booleans()):
                    import base64

                    body[f] = base64.b64encode(draw(image_files())).decode()
            kw["content"] = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif kind == "multipart" and "multipart/form-data" in content:
            props = content["multipart/form-data"]["schema"]["properties"]
            files = {k: ("f", draw(image_files()), "image/png") for k, p in props.items()
                     if p.get("format") == "binary" and draw(st.integers(0, 5))}
            fields = {k: str(draw(st.sampled_from([1, 2, 0.5, "ddim", "blend", "x", -1]))) for k in props
                      if k not in files and draw(st.integers(0, 3)) == 0}
            kw.update(files=files or None, data=fields)
        elif kind == "json":
            kw["content"] = json.dumps(draw(any_json())).encode()
            headers["Content-Type"] = "application/json"
        elif kind == "big":  # around the 32 KiB body limit
            kw["content"] = b'{"image": "' + b"A" * draw(st.integers(32_000, 34_000)) + b'"}'
            headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain"]))
        else:
            kw["content"] = draw(st.binary(max_size=200))
            headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain", "multipart/form-data",
                                                            "multipart/form-data; boundary=x", "image/png", ""]))
    return method, path, headers, kw


def test_no_input_gets_a_5xx_a_traceback_or_a_non_json_error(fuzz_client):
    assert fuzz_client.app.state.engine.ready.wait(120)  # a server still warming up answers /readyz with 503
    spec = fuzz_client.get("/openapi.json").json()
    ops = operations(spec)
    assert {p for p, _, _ in ops} >= {"/v1/generate", "/v1/inpaint", "/v1/restore", "/v1/model", "/healthz",
                                      "/readyz", "/metrics"}
    seen = set()

    @SETTINGS
    @given(requests(ops))
    def check(req):
        method, path, headers, kw = req
        r = fuzz_client.request(method, path, headers={k: v for k, v in headers.items() if v}, **kw)
        seen.add(r.status_code)
        assert r.status_code < 500, (method, path, r.status_code, r.text[:300])
        assert "Traceback" not in r.text and 'File "' not in r.text
        if r.status_code >= 400:
            assert r.headers["content-type"] == "application/json", r.headers
            detail = r.json()["detail"]
            assert isinstance(detail, str) and detail and "\n" not in detail
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            for block in r.text.strip().split("\n\n"):
                if block.startswith("event: error"):
                    data = json.loads(block.split("data: ", 1)[1])
                    assert data["status"] < 500 and "\n" not in data["detail"]

    check()
    assert 200 in seen and {413, 415, 422} <= seen  # the fuzzer reached valid work and each kind of refusal
