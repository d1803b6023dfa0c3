"""Checking requests against the model and the server's limits, and turning them into jobs.

Everything is checked before a job is queued, so a bad request costs no device time and
gets one line naming the problem (422).
"""

from __future__ import annotations

import secrets

import torch

from difforge.io.space import from_uint8
from difforge.serve.codec import BadInput, b64decode, decode_image, decode_mask
from difforge.serve.engine import Job
from difforge.serve.limits import HTTPError, one_line


class Validator:
    def __init__(self, pipe, config):
        self.pipe, self.config = pipe, config

    def _fail(self, message: str) -> HTTPError:
        return HTTPError(422, message)

    def _count(self, n: int) -> None:
        if n > self.config.max_n:
            raise self._fail(f"n = {n} is over this server's maximum of {self.config.max_n} images per request")

    def _common(self, req, n: int, default_steps: int | None = None, grid: str | None = None,
                prompted: bool = False):
        """Sampler, steps, guidance and seeds of any request; raises HTTPError(422). `prompted`:
        the request carries prompts for a text-to-image model (guidance applies to them).

        Returns (params for the pipeline or task, seeds, labels, the number of sampler steps)."""
        from difforge.sampling import SAMPLERS, sampler_options

        pipe, cfg = self.pipe, self.config
        self._count(n)
        if pipe.takes_text and req.klass is not None:
            raise self._fail("class: this is a text-to-image model: it takes no class"
                             + ("; give `prompt` or `prompts`" if prompted else ""))
        if req.sampler not in SAMPLERS:
            raise self._fail(f"unknown sampler {req.sampler!r}; expected one of {sorted(SAMPLERS)}")
        if req.steps is not None and req.steps > cfg.max_steps:  # before any grid is built
            raise self._fail(f"steps = {req.steps} is over this server's maximum of {cfg.max_steps}")
        asked = req.steps if req.steps is not None else default_steps
        try:  # the grid the sampler will run on: unknown grids, step counts the schedule cannot give
            steps = len(pipe.sigmas(req.sampler, asked, grid)) - 1
        except ValueError as e:
            raise self._fail(str(e).splitlines()[0]) from None
        if steps > cfg.max_steps:
            raise self._fail(f"steps = {steps} (the default for {req.sampler}) is over this server's maximum of "
                             f"{cfg.max_steps}; give steps")
        guided = bool(pipe.num_classes) or prompted  # a text model edits (inpaint, restore) with the empty prompt
        if not guided and req.cfg is not None and req.cfg != 1.0:
            if pipe.takes_text:
                raise self._fail("cfg: inpaint and restore run a text-to-image model with the empty prompt (they take "
                                 "no prompt), so guidance does not apply")
            raise self._fail("cfg needs a class-conditional model; this one is unconditional")
        options = {}
        if req.eta is not None:
            if "eta" not in sampler_options(req.sampler):
                raise self._fail(f"eta does not apply to sampler {req.sampler!r}")
            options["eta"] = req.eta
        label = None
        if req.klass is not None:
            try:
                label = pipe.parse_class(req.klass)
            except ValueError as e:
                raise self._fail(f"class: {e}") from None
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        guidance = (req.cfg if req.cfg is not None else pipe.default_cfg) if guided else None
        if pipe.num_classes and guidance not in (None, 1.0) and pipe.card.conditioning.null_label is None:
            raise self._fail("cfg: this model learned no null class, so it takes no guidance; use cfg 1")
        params = {"sampler": req.sampler, "steps": asked, "cfg": guidance, **options}
        if grid is not None:
            params["grid"] = grid
        labels = [label] * n if label is not None else None
        return params, list(range(seed, seed + n)), labels, steps

    def _meta(self, params: dict, seeds: list[int], labels: list[int] | None, steps: int,
              prompts: list[str] | None = None) -> dict:
        return {"seeds": seeds, "labels": labels or [None] * len(seeds), "sampler": params["sampler"],
                "steps": steps, "cfg": params["cfg"], "prompts": prompts}

    def _prompt_text(self, name: str, texts: list[str]) -> None:
        """Each prompt within this server's character limit, valid Unicode, and within the
        model's token limit (its text conditioner encodes them here, on the CPU, so that a
        prompt it refuses never reaches a batch shared with other requests)."""
        limit = self.config.max_prompt_chars
        for i, text in enumerate(texts):
            where = name if name != "prompts" else f"prompts[{i}]"
            if len(text) > limit:
                raise self._fail(f"{where}: {len(text)} characters, over this server's maximum of {limit}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise self._fail(f"{where}: not valid Unicode text (a lone surrogate, such as \\ud800)") from None
        try:
            self.pipe.card.conditioning.conditioner()(list(dict.fromkeys(texts)))
        except (ValueError, TypeError) as e:
            raise self._fail(f"{name}: {one_line(e)}") from None

    def _prompts(self, req) -> list[str] | None:
        """The per-image prompts of a generate request (None for a model that takes no text);
        the request's text fields checked against the model and the limits."""
        given = [f for f in ("prompt", "prompts", "negative_prompt") if getattr(req, f) is not None]
        if not self.pipe.takes_text:
            if given:
                kind = "class-conditional" if self.pipe.num_classes else "unconditional"
                raise self._fail(f"{given[0]}: this model is {kind}, not text-to-image: it takes no prompt"
                                 + ("; give `class` or `labels`" if self.pipe.num_classes else ""))
            return None
        if req.labels is not None:
            raise self._fail("labels: this is a text-to-image model: it takes no class; give `prompts`")
        if req.prompt is not None and req.prompts is not None:
            raise self._fail("give `prompt` or `prompts`, not both")
        if req.prompts is not None:
            if not req.prompts:
                raise self._fail("prompts: empty list")
            if len(req.prompts) > self.config.max_n:
                raise self._fail(f"prompts: {len(req.prompts)} prompts, over this server's maximum of "
                                 f"{self.config.max_n} images per request")
            if req.n is not None and req.n != len(req.prompts):
                raise self._fail(f"n = {req.n} but {len(req.prompts)} prompts were given")
            self._prompt_text("prompts", req.prompts)
            prompts = list(req.prompts)
        else:
            prompt = req.prompt if req.prompt is not None else ""  # none: the empty prompt, as Pipeline.generate
            self._prompt_text("prompt", [prompt])
            self._count(req.n or 1)
            prompts = [prompt] * (req.n or 1)
        if req.negative_prompt:
            self._prompt_text("negative_prompt", [req.negative_prompt])
        return prompts

    def generate(self, req) -> tuple[Job, dict]:
        pipe = self.pipe
        prompts = self._prompts(req)
        if req.labels is not None and req.klass is not None:
            raise self._fail("give `class` or `labels`, not both")
        if req.labels is not None:
            if not req.labels:
                raise self._fail("labels: empty list")
            if req.n is not None and req.n != len(req.labels):
                raise self._fail(f"n = {req.n} but {len(req.labels)} labels were given")
        n = len(prompts) if prompts is not None else len(req.labels) if req.labels is not None else (req.n or 1)
        params, seeds, labels, steps = self._common(req, n, grid=req.grid, prompted=prompts is not None)
        if req.negative_prompt:  # part of the batch key: the guidance of a whole batch steers from one
            params["negative_prompt"] = req.negative_prompt
        if req.labels is not None:
            try:
                labels = [pipe.parse_class(k) for k in req.labels]
            except ValueError as e:
                raise self._fail(f"labels: {e}") from None
        if labels is None and pipe.num_classes and pipe.card.conditioning.null_label is None:
            raise self._fail("this model learned no null class, so it cannot sample without one: give `class` or "
                             "`labels`")
        key = ("generate",) + tuple(sorted((k, v) for k, v in params.items()))
        inputs = self._given(req)
        if inputs:  # frames given: runs alone (its clip and mask are not part of the batch key)
            key = None
        job = Job("generate", params, seeds, labels, prompts=prompts, inputs=inputs, key=key)
        return job, self._meta(params, seeds, labels, steps, prompts)

    def _given(self, req) -> dict:
        """A video request's given frames as {"given": float (1, C, T, S, S), "mask": (T,)}, or {}."""
        if req.given is None and req.given_frames is None:
            return {}
        pipe = self.pipe
        field = "given" if req.given is not None else "given_frames"
        if not pipe.takes_clips:
            raise self._fail(f"{field}: this is an image model: only video models take given frames")
        from difforge.models.frames import parse_given

        frames = req.given_frames or []
        if not frames:
            raise self._fail("given_frames: give one base64 image per given frame")
        t, c, size = pipe.card.frames, pipe.card.channels, pipe.card.native_size
        try:
            mask = parse_given(req.given if req.given is not None else f"first:{len(frames)}", t)
        except ValueError as e:
            raise self._fail(str(e).replace("--given ", "given ", 1)) from None
        if int(mask.sum()) != len(frames):
            raise self._fail(f"given_frames: {len(frames)} image(s) for the {int(mask.sum())} given frame(s)")
        clip = torch.zeros(1, c, t, size, size)
        for i, (k, text) in enumerate(zip(mask.nonzero().flatten().tolist(), frames)):
            name = f"given_frames[{i}]"
            try:
                img = decode_image(b64decode(text, name), name, c, size)
            except BadInput as e:
                raise self._fail(str(e)) from None
            clip[0, :, k] = from_uint8(img)[0]
        return {"given": clip, "mask": mask}

    def _image_task(self, route: str) -> None:
        if self.pipe.takes_clips:
            raise self._fail(f"{route} works on images; this is a video model: use /v1/generate (with `given` "
                             "frames to predict, interpolate or infill)")

    def _image(self, uploads: dict, name: str = "image") -> torch.Tensor:
        """The uploaded image as float (1, C, S, S) in [-1, 1] at the model's native size."""
        try:
            img = decode_image(uploads[name], name, self.pipe.card.channels, self.pipe.card.native_size)
        except BadInput as e:
            raise self._fail(str(e)) from None
        return from_uint8(img)

    def inpaint(self, req, uploads: dict) -> tuple[Job, dict]:
        from difforge.tasks import METHODS, repaint_path
        from difforge.tasks.inpaint import DEFAULT_STEPS

        self._image_task("inpaint")
        if req.method not in METHODS:
            raise self._fail(f"unknown inpainting method {req.method!r}; expected one of {sorted(METHODS)}")
        params, seeds, labels, steps = self._common(req, req.n, DEFAULT_STEPS)
        params.update({k: v for k, v in (("jump_length", req.jump_length), ("resample", req.resample))
                       if v is not None})
        if req.method == "repaint":  # its jumps back up are walked down again: count every step it takes
            moves = repaint_path(steps, params.get("jump_length", 5), params.get("resample", 5))
            taken = sum(1 for a, b in moves if b == a + 1)
            if taken > self.config.max_steps:
                raise self._fail(f"RePaint takes {taken} steps with steps = {steps}, jump_length = "
                                 f"{params.get('jump_length', 5)} and resample = {params.get('resample', 5)}: over "
                                 f"this server's maximum of {self.config.max_steps}; lower steps or resample")
        image = self._image(uploads)
        try:
            mask = decode_mask(uploads["mask"], image.shape[-1], "mask")
        except BadInput as e:
            raise self._fail(str(e)) from None
        if not mask.any():
            raise self._fail("mask is empty: paint (white) the region to fill")
        params["method"] = req.method
        n = req.n
        job = Job("inpaint", params, seeds, labels,
                  inputs={"args": (image.expand(n, -1, -1, -1).clone(), mask.expand(n, -1, -1, -1).clone())})
        return job, self._meta(params, seeds, labels, steps)

    def restore(self, req, uploads: dict) -> tuple[Job, dict]:
        self._image_task("restore")
        if req.eta is not None:
            raise self._fail("eta does not apply to restore")
        params, seeds, labels, steps = self._common(req, req.n)
        image = self._image(uploads)
        n = req.n
        job = Job("restore", params, seeds, labels,
                  inputs={"args": (image.expand(n, -1, -1, -1).clone(), req.strength)})
        return job, self._meta(params, seeds, labels, steps)
