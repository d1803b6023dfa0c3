"""Request and response bodies of the HTTP API (pydantic models; they make the OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from difforge.defaults import DEFAULT_SAMPLER

ClassValue = int | str


class SamplingOptions(BaseModel):
    """Sampler settings shared by every route."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    klass: ClassValue | None = Field(None, alias="class", description="Class index or name for every image; "
                                     "none: unconditional (the model's null label).")
    sampler: str = Field(DEFAULT_SAMPLER, description="ddpm, ddim, euler, euler-a, heun, dpmpp-2m, dpmpp-3m "
                                             "(see GET /v1/model).")
    steps: int | None = Field(None, ge=1, description="Sampler steps. Default: the sampler's own (GET /v1/model).")
    cfg: float | None = Field(None, ge=0, le=100, description="Classifier-free guidance scale (1: none). "
                         "Default: the model's default_cfg (GET /v1/model).")
    seed: int | None = Field(None, ge=0, le=2**53, description="Image i uses seed + i. Default: a random seed, "
                             "returned in the response.")
    eta: float | None = Field(None, ge=0, le=10, description="Fresh noise per step (ddim, euler-a).")


class GenerateRequest(SamplingOptions):
    """POST /v1/generate."""

    n: int | None = Field(None, ge=1, description="Number of images (default 1, or len(labels), or len(prompts)).")
    labels: list[ClassValue] | None = Field(None, description="One class per image (index or name); "
                                            "instead of `class`.")
    prompt: str | None = Field(None, description="Text-to-image models (GET /v1/model: `takes_text`): the prompt "
                               "of every image; \"\" or none is the empty prompt (unconditional samples).")
    prompts: list[str] | None = Field(None, description="One prompt per image, instead of `prompt`.")
    negative_prompt: str | None = Field(None, description="Text-to-image models: what guidance steers away from, in "
                                        "place of the empty prompt.")
    grid: str | None = Field(None, description="Noise levels the steps visit: leading, trailing, linspace, karras, "
                             "log-snr. Default: the sampler's own.")
    given: str | None = Field(None, description="Video models (GET /v1/model: `takes_clips`): which frames of every "
                              "clip are given: first:K, last:K, every:K or frames:I,J,...; their pictures in "
                              "`given_frames`.")
    given_frames: list[str] | None = Field(None, description="Video models: base64 images at the model's native "
                                           "size, one per given frame in order (with `given`; alone: the first "
                                           "frames).")


class InpaintRequest(SamplingOptions):
    """POST /v1/inpaint: `image` and `mask` are base64 images (or files in multipart/form-data)."""

    image: str | None = Field(None, description="Base64 image (PNG, JPEG, BMP, GIF, WebP or TIFF) at the model's "
                              "native size.")
    mask: str | None = Field(None, description="Base64 image of the same size: white = fill, black = keep (with "
                             "transparent pixels: opaque = fill).")
    n: int = Field(1, ge=1, description="Variations, seeds seed .. seed + n - 1.")
    method: str = Field("repaint", description="repaint (Lugmayr et al. 2022: resampling jumps) or blend "
                        "(replace the known pixels after every step).")
    sampler: str = Field("ddpm", description="Sampler of the descent; RePaint's own is ddpm.")
    steps: int | None = Field(None, ge=1, description="Steps of the descent (default 50); RePaint's jumps add more.")
    jump_length: int | None = Field(None, ge=1, le=100, description="RePaint: levels jumped back up (default 5).")
    resample: int | None = Field(None, ge=1, le=20, description="RePaint: passes over each jump (default 5).")


class RestoreRequest(SamplingOptions):
    """POST /v1/restore (SDEdit): `image` is a base64 image (or a file in multipart/form-data)."""

    image: str | None = Field(None, description="Base64 image (PNG, JPEG, BMP, GIF, WebP or TIFF) at the model's "
                              "native size.")
    strength: float = Field(0.5, gt=0, le=1, description="How far to noise the image before denoising it: "
                            "0 keeps it, 1 starts from pure noise.")
    n: int = Field(1, ge=1, description="Variations, seeds seed .. seed + n - 1.")


class ImagesResponse(BaseModel):
    """Images as base64 PNGs, with what reproduces each one."""

    images: list[str] = Field(description="Base64 PNGs at the model's native size (a video model: one per clip, its "
                              "frames in a row).")
    videos: list[str] | None = Field(None, description="Video models: one base64 looping GIF per clip (None for "
                                     "image models).")
    frames: int | None = Field(None, description="Video models: frames per clip.")
    fps: int | None = Field(None, description="Video models: frames per second of the GIFs.")
    seeds: list[int] = Field(description="Seed of each image: the same request with this seed and n = 1 "
                                         "gives it again.")
    labels: list[int | None] = Field(description="Class of each image (None: unconditional).")
    prompts: list[str] | None = Field(None, description="Prompt of each image (text-to-image models; None for "
                                      "others).")
    width: int
    height: int
    channels: int
    sampler: str
    steps: int = Field(description="Sampler steps taken.")
    cfg: float | None
    seconds: float = Field(description="Time from arrival to answer.")


class ErrorResponse(BaseModel):
    detail: str
