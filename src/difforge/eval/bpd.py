"""Bits per dimension of a trained model on real 8-bit test images (`evaluate --bpd`).

Protocol: the first N images of the reference split, mapped to model space exactly as in
training (`to_model_input`: k / 127.5 - 1, padded with -1 to the model's size). A
class-conditional model is scored through its null label, so the number is log p(x), not
log p(x | y), and compares with unconditional models. Two estimators (`eval.likelihood`):
- "vlb": the DDPM variational bound (Ho et al. 2020, Eq. 5) with the discretized decoder:
  an upper bound on -log2 P(image) per dimension; reported for both reverse variances
  (beta_t and beta~_t), each a valid bound.
- "ode": the probability-flow ODE log-density of the uniformly dequantized image
  (Song et al. 2021), minus log2 of the bin width: also an upper bound on the discrete NLL
  in expectation over the dequantization noise; Hutchinson trace, RK4 in log sigma.
Dimensions: `bpd` divides by the model's input dimensions C * S * S. When the images were
padded (28 -> 32 for Fashion-MNIST), `bpd_native` divides the same total by the native
C * h * w: still an upper bound for the native image, since the padding's discrete
probability is at most 1 (it is usually the number to compare with published ones).
"""

from __future__ import annotations

import math
import time

import torch

from difforge.eval.likelihood import BIN, bits_per_dim, ddpm_vlb, dequantize, pf_ode_log_likelihood


def test_set_bits_per_dim(
    pipe,
    images: torch.Tensor,
    *,
    ode: bool = False,
    timesteps: int | None = None,
    ode_steps: int = 32,
    seed: int = 0,
    batch_size: int = 50,
    log=None,
    progress: bool = False,
) -> dict:
    """Bits/dim of uint8 `images` (N, C, h, w) under a loaded `Pipeline` (module docstring).
    `timesteps`: VLB timesteps (None: all T - 1, exact sum); `ode`: also the PF-ODE.
    `progress`: a bar (stderr) counting the images of each estimator; else one `log` line
    per batch."""
    from tqdm.auto import tqdm

    from difforge.data import to_model_input

    model = pipe.model.to(pipe.device)
    size, native = pipe.card.image_size, pipe.card.native_size
    if size < native:
        raise ValueError(f"bits/dim needs the model to see the 8-bit pixels unchanged; this one resizes "
                         f"{native} to {size}")
    # The VLB needs a discrete eps model (DDPM); every framework has the PF-ODE, through its denoiser.
    has_vlb = model.process.discrete is not None and model.prediction == "eps"
    ode = ode or not has_vlb
    dims_model = images.shape[1] * size * size
    dims_native = images[0].numel()
    n = len(images)
    out: dict = {"n": n, "dims": dims_model, "dims_native": dims_native,
                 "conditioning": "null label: log p(x)" if pipe.num_classes else
                 "empty prompt: log p(x)" if pipe.takes_text else "unconditional"}
    nats = {"large": [], "small": []}
    ode_nats, nfe = [], 0
    t0 = time.perf_counter()

    def bar(what: str):
        return tqdm(total=n, desc=f"bits/dim ({what})", unit="img", dynamic_ncols=True, disable=not progress)

    def done(b, what: str, start: int, size: int) -> None:
        b.update(size)
        if log and not progress:
            log(f"bits/dim ({what}): {min(start + batch_size, n)}/{n} images")

    vlb_bar = bar("VLB") if has_vlb else None
    for start in range(0, n if has_vlb else 0, batch_size):
        x = to_model_input(images[start : start + batch_size], size).to(pipe.device)
        cond = pipe.card.conditioning.null(len(x), pipe.device)  # the null label: log p(x)
        g = torch.Generator().manual_seed(seed + start)  # depends on the batch start only
        vlb = ddpm_vlb(model, x, cond, generator=g, timesteps=timesteps)
        for v in nats:
            nats[v].append(vlb.nats(v).cpu())
        done(vlb_bar, "VLB", start, len(x))
    if vlb_bar is not None:
        vlb_bar.close()
    vlb_seconds = time.perf_counter() - t0

    def both(total: torch.Tensor) -> dict:
        per_model = bits_per_dim(total, dims_model)
        per_native = bits_per_dim(total, dims_native)
        return {"bpd": float(per_model.mean()), "bpd_sem": float(per_model.std() / math.sqrt(n)) if n > 1 else None,
                "bpd_native": float(per_native.mean())}

    if has_vlb:
        out["vlb"] = {v: both(torch.cat(nats[v])) for v in nats}
        out["vlb"]["timesteps"] = "all" if timesteps is None else timesteps
        out["vlb"]["seconds"] = round(vlb_seconds, 1)
    if ode:
        t0 = time.perf_counter()
        ode_bar = bar("ODE")
        for start in range(0, n, batch_size):
            x = to_model_input(images[start : start + batch_size], size).to(pipe.device)
            cond = pipe.card.conditioning.null(len(x), pipe.device)  # the null label: log p(x)
            g = torch.Generator().manual_seed(seed + start)
            y = dequantize(x, g)
            r = pf_ode_log_likelihood(model, y, cond=cond, trace="rademacher", generator=g, steps=ode_steps)
            # -log P(k) <= -log p(y) - dims * log(BIN), for the whole model-size image
            ode_nats.append((-r.log_prob - dims_model * math.log(BIN)).cpu())
            nfe = r.nfe
            done(ode_bar, "ODE", start, len(x))
        ode_bar.close()
        out["ode"] = {**both(torch.cat(ode_nats)), "solver": f"rk4, {ode_steps} steps in log sigma", "nfe": nfe,
                      "trace": "Hutchinson, Rademacher probe", "seconds": round(time.perf_counter() - t0, 1)}
    return out
