"""Request bodies, read by hand so that every route takes exactly what it documents:
JSON with `Content-Type: application/json` (a body without that header is refused, so a
page elsewhere cannot send one as a plain form), and for the image routes also
multipart/form-data with the image files. Parsing and base64 decoding run off the event
loop."""

from __future__ import annotations

import asyncio
import json

from fastapi import Request
from pydantic import ValidationError

from difforge.io.decode import FORMAT_NAMES
from difforge.serve.codec import BadInput, b64decode
from difforge.serve.limits import HTTPError, one_line

JSON = "application/json"
MULTIPART = "multipart/form-data"


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _json_object(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPError(422, f"body is not valid JSON: {one_line(e)}") from None
    except RecursionError:
        raise HTTPError(422, "body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise HTTPError(422, "body must be a JSON object")
    return body


def _validate(model, body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise HTTPError(422, one_line(e.errors())) from None
    except RecursionError:
        raise HTTPError(422, "body is nested too deeply") from None


async def parse(request: Request, model, file_fields: tuple[str, ...] = ()):
    """(the validated `model`, {file field: bytes}) from a JSON body (images as base64) or,
    when the route takes files, multipart/form-data. Raises HTTPError (415, 422)."""
    ctype = _content_type(request)
    accepted = f"{JSON} or {MULTIPART}" if file_fields else JSON
    if ctype == MULTIPART and file_fields:
        fields, uploads = await _form(request, file_fields)
        req = await asyncio.to_thread(_validate, model, fields)
    elif ctype == JSON:
        raw = await request.body()
        req = await asyncio.to_thread(lambda: _validate(model, _json_object(raw)))
        uploads = {}
    elif not ctype:
        raise HTTPError(415, f"no Content-Type: send {accepted}")
    else:
        raise HTTPError(415, f"unsupported content type {ctype[:100]!r}; send {accepted}")
    if file_fields:
        uploads = await asyncio.to_thread(_files, req, uploads, file_fields)
    return req, uploads


async def _form(request: Request, file_fields: tuple[str, ...]) -> tuple[dict, dict]:
    from starlette.datastructures import UploadFile

    try:
        form = await request.form(max_files=len(file_fields), max_fields=32)
    except Exception as e:  # noqa: BLE001 - malformed multipart
        raise HTTPError(422, f"unreadable multipart body: {one_line(e)}") from None
    fields, uploads = {}, {}
    for k, v in form.multi_items():
        if isinstance(v, UploadFile):
            if k not in file_fields:
                raise HTTPError(422, f"unexpected file field {k[:100]!r}; expected {list(file_fields)}")
            uploads[k] = await v.read()
        else:
            fields[k] = v
    return fields, uploads


def _files(req, uploads: dict, file_fields: tuple[str, ...]) -> dict:
    for name in file_fields:
        text = getattr(req, name)
        if name in uploads and text is not None:
            raise HTTPError(422, f"{name}: given both as a file and as base64")
        if name not in uploads:
            if text is None:
                raise HTTPError(422, f"{name}: missing")
            try:
                uploads[name] = b64decode(text, name)
            except BadInput as e:
                raise HTTPError(422, str(e)) from None
    return uploads


def body_doc(model, file_fields: tuple[str, ...] = ()) -> dict:
    """OpenAPI request body of a route parsed here: JSON, and multipart with files."""
    schema = model.model_json_schema()
    content = {JSON: {"schema": schema}}
    if file_fields:
        form = json.loads(json.dumps(schema))
        for f in file_fields:
            form["properties"][f] = {"type": "string", "format": "binary",
                                     "description": f"{f} file ({FORMAT_NAMES})"}
        content[MULTIPART] = {"schema": form}
    return {"requestBody": {"required": True, "content": content}}
