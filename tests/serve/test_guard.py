"""What a hostile page or client can send before any work is done: Host and Origin checks,
the JSON content type, the token before the body, bounded metrics, security headers,
errors without internals."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

SIZE = 8
OK_HOST = "http://127.0.0.1:8000"


def png(arr, mode="L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


# ---------------------------------------------------------------- 1. bounded metrics
def test_metric_labels_stay_bounded_whatever_the_methods_and_paths(pipe, model_dir, serve_helpers):
    with serve_helpers["make_client"](pipe, model_dir) as c:
        c.get("/healthz")
        before = len(series(c.get("/metrics").text, "difforge_requests_total"))
        for i in range(40):  # any method token and any path, each answered 404 / 405
            assert c.request(f"X{i}" * 50, "/v1/generate").status_code == 405
            assert c.get(f"/nowhere/{i}").status_code == 404
            assert c.request(f"M{i}", f"/p{i}").status_code in (404, 405)
        text = c.get("/metrics").text
    rows = series(text, "difforge_requests_total")
    methods = set(re.findall(r'method="([^"]*)"', "\n".join(rows)))
    routes = set(re.findall(r'route="([^"]*)"', "\n".join(rows)))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}
    assert "other" in methods and routes <= {"/healthz", "/metrics", "/v1/generate", "other"}
    assert len(rows) <= before + 4  # 120 odd requests added a handful of series, not 120
    assert 'difforge_requests_total{method="other",route="/v1/generate",status="405"} 40.0' in text
    assert len(series(text, "difforge_request_seconds_count")) <= 4


# ---------------------------------------------------------------- 3. cross-site and DNS rebinding
@pytest.mark.parametrize("host, ok", [("127.0.0.1:8000", True), ("localhost:8000", True), ("[::1]:8000", True),
                                      ("LOCALHOST.", True), ("attacker.example:8000", False),
                                      ("127.0.0.1.nip.io:8000", False)])
def test_only_the_bound_host_names_are_answered(client, host, ok):
    r = client.get("/v1/model", headers={"Host": host})
    if ok:
        assert r.status_code == 200
    else:
        assert r.status_code == 400 and r.json()["detail"].startswith(f"Host '{host.split(':')[0]}' is not a name")
        assert client.get("/healthz", headers={"Host": host}).status_code == 400  # nothing is answered


def test_allowed_hosts_are_configurable(pipe, model_dir, serve_helpers):
    with serve_helpers["make_client"](pipe, model_dir, allowed_hosts=("models.lan",)) as c:
        assert c.get("/healthz", headers={"Host": "models.lan:8000"}).status_code == 200
        assert c.get("/healthz").status_code == 400  # 127.0.0.1 is not in this list


def test_bind_decides_the_default_host_names():
    from difforge.serve.config import hosts_for_bind

    assert hosts_for_bind("127.0.0.1") == ("localhost", "127.0.0.1", "::1")
    assert hosts_for_bind("192.168.1.5", ("gpu-box",)) == ("localhost", "127.0.0.1", "::1", "192.168.1.5", "gpu-box")
    assert hosts_for_bind("0.0.0.0") is None  # any: the token guards it
    assert hosts_for_bind("::", ("gpu-box",)) == ("localhost", "127.0.0.1", "::1", "gpu-box")


def test_a_body_without_the_json_content_type_is_refused(client):
    for route in ("/v1/generate", "/v1/inpaint", "/v1/restore"):
        # what a page elsewhere can send without a CORS preflight: no type, or text/plain
        r = client.post(route, content=b'{"steps": 2}')
        assert r.status_code == 415 and r.json()["detail"].startswith("no Content-Type: send application/json"), route
        r = client.post(route, content=b'{"steps": 2}', headers={"content-type": "text/plain"})
        assert r.status_code == 415 and "unsupported content type 'text/plain'" in r.json()["detail"]
    r = client.post("/v1/generate", files={"steps": (None, "2")})  # multipart: only the image routes take it
    assert r.status_code == 415


def test_state_changing_requests_from_another_origin_are_refused(client):
    image, mask = png(np.full((SIZE, SIZE), 90)), png(np.pad(np.full((SIZE, 4), 255), ((0, 0), (0, 4))))
    files = {"image": ("a.png", image, "image/png"), "mask": ("m.png", mask, "image/png")}
    for origin in ("https://attacker.example", "null", "http://127.0.0.1:9999"):
        r = client.post("/v1/inpaint", files=files, data={"steps": "2", "method": "blend"}, headers={"Origin": origin})
        assert r.status_code == 403 and "cross-origin request refused" in r.json()["detail"], origin
        r = client.post("/v1/generate", json={"steps": 2}, headers={"Origin": origin})
        assert r.status_code == 403
    same = client.post("/v1/inpaint", files=files, data={"steps": "2", "method": "blend"}, headers={"Origin": OK_HOST})
    assert same.status_code == 200, same.text  # the page itself
    assert client.get("/v1/model", headers={"Origin": "https://attacker.example"}).status_code == 200  # reads: CORS


# ---------------------------------------------------------------- 8. token, schema, headers, errors
class Receives:
    """ASGI wrapper counting how often the app asked for the request body."""

    def __init__(self, app):
        self.app, self.calls = app, 0

    async def __call__(self, scope, receive, send):
        async def counted():
            if scope["type"] == "http":
                self.calls += 1
            return await receive()

        await self.app(scope, counted, send)


def test_the_token_is_checked_before_the_body_is_read(pipe, model_dir):
    from fastapi.testclient import TestClient

    from difforge.serve import ServeConfig, create_app

    wrapped = Receives(create_app(pipe, model_dir, ServeConfig(token="s3cret-token")))
    with TestClient(wrapped, base_url=OK_HOST) as c:
        body = b"{" + b'"x": [' * 100_000  # a large, malformed body
        r = c.post("/v1/generate", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 401 and wrapped.calls == 0
        r = c.post("/v1/generate", json={"steps": 1}, headers={"Authorization": "Bearer s3cret-token"})
        assert r.status_code == 200 and wrapped.calls >= 1


def test_a_token_with_surrounding_whitespace_matches(pipe, model_dir, serve_helpers):
    with serve_helpers["make_client"](pipe, model_dir, token="  s3cret-token\n") as c:  # as read from a file
        assert c.get("/v1/model", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert c.get("/v1/model", headers={"Authorization": "Bearer s3cret-token-2"}).status_code == 401
    from difforge.serve import ServeConfig

    with pytest.raises(ValueError, match="printable ASCII without spaces"):
        ServeConfig(token="two words token")


def test_openapi_documents_the_bearer_scheme(pipe, model_dir, serve_helpers):
    with serve_helpers["make_client"](pipe, model_dir, token="s3cret-token") as c:
        spec = c.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "The server's token (--token-file or DIFFORGE_TOKEN)."}
    for path, method in (("/v1/generate", "post"), ("/v1/inpaint", "post"), ("/v1/model", "get"), ("/metrics", "get")):
        assert spec["paths"][path][method]["security"] == [{"HTTPBearer": []}], path
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_every_answer_carries_the_security_headers(client):
    for path in ("/", "/v1/model", "/nowhere", "/static/app.js", "/docs"):
        r = client.get(path)
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    page = client.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in page and "unsafe-inline" not in page.split("style-src")[0]
    assert client.post("/v1/generate", json={"n": 0}).headers["x-content-type-options"] == "nosniff"


def test_docs_answer_404_without_the_viewer_package(pipe, model_dir, serve_helpers, monkeypatch):
    import difforge.serve.app as app

    monkeypatch.setattr(app, "swagger_assets", lambda: None)
    with serve_helpers["make_client"](pipe, model_dir) as c:
        r = c.get("/docs")
        assert r.status_code == 404 and "the schema is at /openapi.json" in r.json()["detail"]
        assert c.get("/openapi.json").status_code == 200


def test_failures_do_not_show_their_internals(pipe, model_dir, serve_helpers, monkeypatch):
    with serve_helpers["make_client"](pipe, model_dir) as c:
        def broken(*args, **kwargs):
            raise RuntimeError("secret detail at /srv/models/private.py line 12")

        assert c.app.state.engine.ready.wait(60)  # warmed up with the real pipeline
        monkeypatch.setattr(c.app.state.engine.pipe, "generate", broken)
        r = c.post("/v1/generate", json={"steps": 2})
        assert r.status_code == 500 and r.json() == {"detail": "generation failed; see the server log"}, r.text
        assert "secret" not in r.text


@pytest.mark.parametrize("route", ["/v1/generate", "/v1/inpaint", "/v1/restore"])
def test_deeply_nested_json_is_a_json_422(client, route):
    r = client.post(route, content=b"[" * 20_000 + b"]" * 20_000, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    assert r.json()["detail"] == "body is not valid JSON: nested too deeply"
    r = client.post(route, content=b'{"labels": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"


def test_over_limit_chunked_bodies_are_413_and_counted(pipe, model_dir, serve_helpers):
    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(20):
            yield b"x" * 8192

    with serve_helpers["make_client"](pipe, model_dir, max_body_bytes=64 * 1024) as c:
        r1 = c.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
        image = ("a.png", b"\x89PNG" + b"x" * 100_000, "image/png")
        r2 = c.post("/v1/restore", files={"image": image}, data={"strength": "0.5"})
        r3 = c.post("/v1/generate", content=b"{}" + b" " * 70_000, headers={"content-type": "application/json"})
        text = c.get("/metrics").text
    for r in (r1, r2, r3):
        assert r.status_code == 413 and "over this server's limit of 65536 bytes" in r.json()["detail"]
    assert 'difforge_requests_total{method="POST",route="/v1/generate",status="413"} 2.0' in text
    assert 'difforge_requests_total{method="POST",route="/v1/restore",status="413"} 1.0' in text


def test_a_fully_opaque_rgba_mask_is_read_by_its_brightness(client):
    from difforge.serve.codec import decode_mask

    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: black = keep ...
    rgba[:, :3, :3] = 255  # ... and a white band = fill
    mask = decode_mask(png(rgba, "RGBA"), SIZE)
    assert mask.sum() == 3 * SIZE and mask[0, 0, :, :3].all()
    image = np.arange(SIZE * SIZE).reshape(SIZE, SIZE) * 3 % 256
    r = client.post("/v1/inpaint", files={"image": ("a.png", png(image), "image/png"),
                                          "mask": ("m.png", png(rgba, "RGBA"), "image/png")},
                    data={"steps": "2", "method": "blend", "seed": "1"})
    assert r.status_code == 200, r.text
    import base64

    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))
    assert np.array_equal(out[:, 3:], image[:, 3:])  # the black part was kept, not regenerated


def test_cli_refuses_a_token_on_the_command_line_and_reads_a_token_file(tmp_path, model_dir, capsys, monkeypatch):
    import difforge.serve as serve
    from cli_runner import run

    assert run(["serve", str(model_dir), "--token", "s3cret-token"]) == 1
    err = capsys.readouterr().err
    assert "--token shows the token to every user of this machine (ps)" in err
    assert "--token-file FILE or DIFFORGE_TOKEN" in err and len(err.strip().splitlines()) == 1

    seen = {}
    monkeypatch.setattr(serve, "serve", lambda path, **kw: seen.update(kw))
    monkeypatch.delenv("DIFFORGE_TOKEN", raising=False)
    (tmp_path / "token").write_text("from-a-file-123\n")
    assert run(["serve", str(model_dir), "--host", "0.0.0.0", "--token-file", str(tmp_path / "token"),
                "--allowed-host", "gpu-box"]) == 0
    assert seen["config"].token == "from-a-file-123" and seen["config"].allowed_hosts[-1] == "gpu-box"
    monkeypatch.setenv("DIFFORGE_TOKEN", "from-the-environment")
    assert run(["serve", str(model_dir), "--token-file", str(tmp_path / "token")]) == 1
    assert "not both" in capsys.readouterr().err
