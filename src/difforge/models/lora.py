"""LoRA adapters on a difforge network (Hu et al. 2021), through `peft`.

A LoRA layer adds a low-rank update to a frozen layer: W x + (alpha / r) B A x, with A
(r x in, random) and B (out x r, zero at the start), so an adapted network at
initialisation computes exactly what its base computes. For a convolution A is a
convolution with the layer's kernel to r channels and B a 1x1 convolution back.

Which layers get adapters (`target_modules`): every `nn.Linear` and every `nn.Conv2d`
with a kernel larger than 1x1 inside the network's down, middle and up stages: the
residual blocks' two 3x3 convolutions and their time-embedding projection (`emb`,
diffusers' `time_emb_proj`), the attention projections (qkv / q / kv / proj, diffusers'
to_q / to_k / to_v / to_out), the attention blocks' feed-forward layers and the
resampling convolutions. Not adapted: the input and output convolutions, the time and
label embedding, a text encoder trained inside the UNet, normalisations and the 1x1
skip convolutions (those layers are few parameters, or map to and from pixels, where a
low-rank update buys little).

peft is optional (`pip install 'difforge[lora]'`) and imported only when adapters are made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

ADAPTER = "default"  # peft's name for the (only) adapter
LORA_KEY = ".lora_"  # every adapter tensor's state-dict key holds this
# top-level parts of a network that keep no adapter (difforge's UNet; diffusers' inside `unet.`)
NOT_ADAPTED = {"embed", "text_encoder", "pooled_proj", "time_embedding", "time_proj", "class_embedding",
               "in_conv", "out_conv", "conv_in", "conv_out", "out_norm", "conv_norm_out"}


def peft_missing() -> str | None:
    """None when peft is importable, else the one-line install hint."""
    try:
        import peft  # noqa: F401
    except ImportError:
        return "LoRA needs peft: pip install 'difforge[lora]'"
    return None


@dataclass(frozen=True)
class LoraSpec:
    """An adapter's shape: rank r, alpha (the update is scaled by alpha / r), the layers it
    adapts (full module names; recorded so that a later change of the choice does not
    change a trained adapter), and `modules`, layers trained in full beside the adapters
    (a label embedding re-initialised for a new number of classes)."""

    rank: int
    alpha: float
    targets: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if int(self.rank) < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not float(self.alpha) > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        object.__setattr__(self, "rank", int(self.rank))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "targets", tuple(str(t) for t in self.targets))
        object.__setattr__(self, "modules", tuple(str(t) for t in self.modules))

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets), "modules": list(self.modules)}

    @classmethod
    def from_dict(cls, d: Mapping) -> LoraSpec:
        return cls(d["rank"], d["alpha"], tuple(d.get("targets") or ()), tuple(d.get("modules") or ()))

    def holds(self, key: str) -> bool:
        """Whether state-dict entry `key` is part of the adapter (what a LoRA model saves)."""
        return LORA_KEY in key or any(key.startswith(m + ".") for m in self.modules)


def target_modules(net: nn.Module) -> list[str]:
    """The names of the layers of `net` that get adapters (module docstring)."""
    names = []
    for name, module in net.named_modules():
        parts = name.split(".")
        if parts[0] == "unet" and len(parts) > 1:  # DiffusersUNet wraps diffusers' UNet2DModel
            parts = parts[1:]
        if len(parts) < 2 or parts[0] in NOT_ADAPTED:
            continue
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1):
            names.append(name)
    return names


def add_adapters(net: nn.Module, spec: LoraSpec) -> nn.Module:
    """Freeze `net` and add LoRA adapters (B = 0: the output is unchanged) to the layers
    `spec.targets` names, in place; returns `net`. Only the adapters (and `spec.modules`)
    require grad."""
    missing = peft_missing()
    if missing:
        raise ImportError(missing)
    from peft import LoraConfig, inject_adapter_in_model

    known = dict(net.named_modules())
    absent = [t for t in (*spec.targets, *spec.modules) if t not in known]
    if absent or not spec.targets:
        raise ValueError(f"the network has no layer {absent[0]!r} to adapt" if absent else "no layers to adapt")
    net.requires_grad_(False)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.targets), lora_dropout=0.0,
                        bias="none", init_lora_weights=True)
    inject_adapter_in_model(config, net, adapter_name=ADAPTER)
    for name, p in net.named_parameters():
        p.requires_grad_(spec.holds(name))
    return net


def adapter_state(net: nn.Module, spec: LoraSpec) -> dict[str, torch.Tensor]:
    """What a LoRA model saves: its adapter tensors (and `spec.modules`' weights)."""
    return {k: v for k, v in net.state_dict().items() if spec.holds(k)}


def load_adapter_state(net: nn.Module, spec: LoraSpec, state: Mapping[str, torch.Tensor]) -> None:
    """Load `adapter_state` output into a `net` adapted by `spec`: exactly those tensors."""
    expected = set(adapter_state(net, spec))
    if set(state) != expected:
        extra, lacking = sorted(set(state) - expected), sorted(expected - set(state))
        what = f"has {extra[0]!r}, which this adapter lacks" if extra else f"lacks {lacking[0]!r}"
        raise ValueError(f"the adapter weights do not fit this model: the file {what}")
    net.load_state_dict(dict(state), strict=False)


def merge_adapters(net: nn.Module) -> nn.Module:
    """Fold every adapter into its layer (W + alpha / r B A) and put the plain layer back,
    in place: the network is then the base architecture with merged weights."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [(name, m) for name, m in net.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in adapted:
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, module.get_base_layer())
    net.requires_grad_(True)
    return net
