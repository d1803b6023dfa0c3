"""difforge's quick-start recipe against the recipe a diffusers user would write, side by side.

Part `quality` (the default): the same data (Fashion-MNIST's training split, as
`difforge.data.load_dataset(DataConfig())` gives it), the same wall-clock training budget
(--minutes), the same network calls per image when sampling, scored the same way
(`sampler_sweep.Scorer`: class-balanced samples, FD on the domain classifier's features
against the 10,000 test images, class accuracy, precision / recall).

- difforge: `difforge train --config configs/quickstart.yaml`, whose length is set in steps
  (its one-cycle learning rate is laid over them), so the budget is turned into steps first:
  a short calibration run of the same config measures its img/s (the trainer's own
  metrics.jsonl), and the real run gets budget x img/s / batch steps. The seconds its
  training loop really took are read back from metrics.jsonl and recorded.
- diffusers, written as a diffusers user writes it: `UNet2DModel` with the block layout
  and size of difforge's `diffusers-unet` preset (checked against it at start),
  `num_class_embeds` = classes + 1 (the last is the null label, 10% label dropout);
  `DDPMScheduler` (1000 steps, linear betas, epsilon); AdamW with a linear warm-up and
  cosine decay (`diffusers.optimization.get_scheduler`); `EMAModel` with the EMA warm-up of
  diffusers' training examples; gradient clipping at 1; bf16 autocast only where the CPU
  computes bf16 natively (`difforge.runtime.native_bf16`), else fp32. The cosine schedule
  needs a length: a few timed steps on a throwaway copy give the steps the budget allows;
  training stops at the budget (or that length, whichever comes first).
- Sampling: diffusers' `DPMSolverMultistepScheduler` (algorithm_type "sde-dpmsolver++",
  Karras sigmas: the same algorithm and grid as difforge's default `dpmpp-2m-sde`, which
  tests/sampling/test_parity_diffusers.py pins) at difforge's default step count, with
  classifier-free guidance as a user writes it (conditional and unconditional rows in one
  batch, scale --peer-cfg at every step). difforge's model is scored twice: at its default
  setting (guidance 2 in sigma [0.3, 3]) and at the diffusers side's guidance (1.5 at every
  level, `cfg_interval=(0, inf)`), so that the last two rows differ in training only.

Part `loop`: the seed article's architecture (`unet-seed`) trained by difforge's trainer
against a minimal plain-PyTorch loop of the article's recipe (fp32, AdamW lr 3e-4, MSE on
epsilon, 1000 linear steps, no EMA) on the same network: img/s of each for --loop-steps
steps of --loop-batch images (median after 2 warm-up steps). difforge's trainer runs the
same recipe (constant lr 3e-4, no clipping, fp32) but keeps its EMA, which it cannot turn off.

Both sides of a part run one after the other in this script, under the same thread count
(set OMP_NUM_THREADS; the difforge commands inherit it); the machine, threads and load are
recorded before and after each side. The real runs (estimated 45-50 and 5-6 minutes of wall
clock on 2 idle AVX2 cores; scoring 3 x 1000 images is about 10 of the 45):

    OMP_NUM_THREADS=2 python benchmarks/peers.py --minutes 15 --n 1000 --work /tmp/peers
    OMP_NUM_THREADS=2 python benchmarks/peers.py --part loop --work /tmp/peers

They write benchmarks/results/peers.json (one key per part) and the table between the
markers of benchmarks/peers.md. A smoke test (tiny networks, 20 images; writes only under
--work): `python benchmarks/peers.py --smoke --minutes 0.2 --work /tmp/peers-smoke` (and
`--part loop --smoke`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from sampler_sweep import Scorer, balanced_labels  # noqa: E402
from text_to_image import run_command  # noqa: E402
from train_throughput import machine_record  # noqa: E402

OUT = HERE / "results" / "peers.json"
MD = HERE / "peers.md"
MARKERS = ("<!-- results: written by benchmarks/peers.py -->", "<!-- /results -->")
BATCH = 64  # configs/quickstart.yaml's batch, for both sides (peers.md's recorded run: 128, the quick start's then)

# The UNet2DModel as a diffusers user would configure it, with the block layout and size
# of difforge's `diffusers-unet` preset (checked against the preset in `check_peer_config`).
PEER_UNET = dict(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
                 block_out_channels=(32, 64, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8)
SMOKE_UNET = {**PEER_UNET, "block_out_channels": (8, 16, 16), "norm_num_groups": 4}
# diffusers' EMA as its training examples set it: decay warms up as 1 - (1 + step / inv_gamma) ** -power
PEER_EMA = dict(decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
# AdamW as in diffusers' training examples (betas, weight decay, eps), with gradient clipping at 1
PEER_ADAMW = dict(betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)


def check_peer_config() -> None:
    """PEER_UNET must be the `diffusers-unet` preset's network, or the comparison is off."""
    from difforge.models import PRESETS

    preset = dict(PRESETS["diffusers-unet"].kwargs)
    mine = {k: v for k, v in PEER_UNET.items() if k in preset}
    if mine != preset or set(preset) - set(mine):
        raise SystemExit(f"PEER_UNET {mine} differs from the diffusers-unet preset {preset}")


def save(out: Path, part: str, record: dict) -> None:
    """The part's record under its key of `out` (the other part's is kept)."""
    data = json.loads(out.read_text()) if out.exists() else {}
    data[part] = record
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")


# ---------------------------------------------------------------------- difforge's side
def metrics_rows(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "img_per_s" in r]


def loop_seconds(rows: list[dict], batch: int) -> float:
    """The training loop's wall clock, from the img/s of each logged interval."""
    seconds, last = 0.0, 0
    for r in rows:
        seconds += (r["step"] - last) * batch / r["img_per_s"]
        last = r["step"]
    return seconds


def difforge_train(args, log) -> dict:
    """Calibrate the quick-start config's img/s, then train it for the steps the budget allows."""
    import torch

    from difforge.runtime import resolve_precision

    base = ["train", "--config", "configs/quickstart.yaml", "--batch-size", str(args.batch)]
    if args.smoke:  # a small validation split too: the trainer validates on it at the end
        base += ["--model", "tiny", "--set", "data.val_fraction=0.002"]
    quiet = ["--set", "train.sample_every=0", "--set", "train.checkpoint_every=0", "--set", "train.final_grid=false"]
    calib, steps = None, args.difforge_steps
    if steps is None:
        calib_dir = args.work / "difforge-calibrate"
        calib = run_command(base + ["--max-steps", str(args.calibrate_steps), "--set", f"train.log_every="
                                    f"{max(1, args.calibrate_steps // 5)}", *quiet, "--out", str(calib_dir)], log)
        rows = metrics_rows(calib_dir)[1:]  # the first interval holds the warm-up
        ips = statistics.median(r["img_per_s"] for r in rows)
        steps = max(1, int(args.minutes * 60 * ips / args.batch))
        calib["img_per_s_median"] = round(ips, 2)
        print(f"difforge: {ips:.1f} img/s in calibration -> {steps} steps for {args.minutes} min", flush=True)
    run_dir = args.work / "difforge"
    before = machine_record()
    cmd = run_command(base + ["--max-steps", str(steps), "--out", str(run_dir)], log)
    rows = metrics_rows(run_dir)
    seconds = loop_seconds(rows, args.batch)
    return {"command": cmd, "calibration": calib, "steps": steps,
            "batch": args.batch, "loop_seconds": round(seconds, 1),
            "img_per_s": round(rows[-1]["step"] * args.batch / seconds, 2), "final_loss": rows[-1]["loss"],
            "precision": resolve_precision("auto", torch.device("cpu")),  # the config's `auto`, as the trainer sees it
            "machine_before": before, "machine_after": machine_record()}


def difforge_scores(args, scorer: Scorer) -> list[dict]:
    from difforge.pipeline import load_pipeline

    pipe = load_pipeline(args.work / "difforge")
    labels = balanced_labels(pipe.num_classes, args.n)
    rows = []
    for name, extra in [("difforge default", {}),
                        ("difforge, peer's guidance", {"cfg": args.peer_cfg, "cfg_interval": (0, math.inf)})]:
        passes = count_rows(pipe.model.net)
        t0 = time.perf_counter()
        images, _ = pipe.generate(labels=labels, seed=1_000_000 * args.seed_set, **extra)
        wall = time.perf_counter() - t0
        interval = extra.get("cfg_interval", pipe.default_cfg_interval)
        rows.append({"model": "difforge", "setting": name, "sampler": "dpmpp-2m-sde (difforge)",
                     "steps": default_steps(), "calls": default_steps(), "cfg": extra.get("cfg", pipe.default_cfg),
                     "cfg_interval": [interval[0], str(interval[1]) if math.isinf(interval[1]) else interval[1]],
                     "network_rows_per_image": round(passes.stop() / args.n, 2), "n": args.n,
                     "seed_set": args.seed_set, **scorer(images, labels, args.seed_set),
                     "s_per_image": round(wall / args.n, 5)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# ---------------------------------------------------------------------- the diffusers side
def peer_train(args, train_set) -> tuple[object, dict]:
    """The diffusers recipe, trained until the wall-clock budget is spent. Returns the EMA network."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from difforge.runtime import native_bf16

    torch.manual_seed(args.seed)
    classes = int(train_set.labels.max()) + 1
    null = classes  # the last class embedding: "no label", for classifier-free guidance
    config = SMOKE_UNET if args.smoke else PEER_UNET
    unet = UNet2DModel(**config, num_class_embeds=classes + 1)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    bf16 = native_bf16(torch.device("cpu"))
    images, labels = train_set.images, train_set.labels
    gen = torch.Generator().manual_seed(args.seed)

    def batches():
        while True:  # shuffled epochs, the last partial batch dropped
            order = torch.randperm(len(images), generator=gen)
            for s in range(0, len(order) - args.batch + 1, args.batch):
                yield order[s: s + args.batch]

    def step(net, opt, lr_sched, ema, idx) -> float:
        x0 = images[idx].float() / 127.5 - 1
        y = labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < args.peer_label_dropout] = null
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(x0),), generator=gen)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = net(noisy, t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        ema.step(net.parameters())
        return loss.item()

    def setup(net, total: int):
        opt = torch.optim.AdamW(net.parameters(), lr=args.peer_lr, **PEER_ADAMW)
        warmup = max(1, round(args.peer_warmup * total))
        return opt, get_scheduler("cosine", opt, num_warmup_steps=warmup, num_training_steps=total), warmup

    # the schedule's length: a few timed steps on a throwaway copy
    probe = copy.deepcopy(unet)
    opt, lr_sched, _ = setup(probe, 1000)
    ema = EMAModel(probe.parameters(), **PEER_EMA)
    feed, times = batches(), []
    for i in range(2 + args.peer_probe_steps):
        t0 = time.perf_counter()
        step(probe, opt, lr_sched, ema, next(feed))
        if i >= 2:
            times.append(time.perf_counter() - t0)
    budget = args.minutes * 60
    total = max(1, int(budget / statistics.median(times)))
    del probe, opt, lr_sched, ema
    print(f"diffusers: {args.batch / statistics.median(times):.1f} img/s probed -> {total} steps planned", flush=True)

    torch.manual_seed(args.seed)
    gen.manual_seed(args.seed)
    opt, lr_sched, warmup = setup(unet, total)
    ema = EMAModel(unet.parameters(), **PEER_EMA)
    unet.train()
    before, feed, done, losses = machine_record(), batches(), 0, []
    t0 = time.perf_counter()
    while done < total and time.perf_counter() - t0 < budget:
        losses.append(step(unet, opt, lr_sched, ema, next(feed)))
        done += 1
    seconds = time.perf_counter() - t0
    ema_unet = copy.deepcopy(unet)
    ema.copy_to(ema_unet.parameters())
    ema_unet.eval()
    out = args.work / "diffusers"
    ema_unet.save_pretrained(out / "unet_ema")
    noise_scheduler.save_pretrained(out / "scheduler")
    record = {"steps": done, "planned_steps": total, "batch": args.batch, "loop_seconds": round(seconds, 1),
              "img_per_s": round(done * args.batch / seconds, 2), "probe_img_per_s": round(
                  args.batch / statistics.median(times), 2), "final_loss": round(statistics.fmean(losses[-10:]), 5),
              "precision": "bf16" if bf16 else "fp32", "unet": {k: list(v) if isinstance(v, tuple) else v
                                                                 for k, v in config.items()},
              "num_class_embeds": classes + 1, "label_dropout": args.peer_label_dropout,
              "params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 3),
              "noise_scheduler": "DDPMScheduler(1000, linear, epsilon)",
              "optimizer": {"name": "AdamW", "lr": args.peer_lr, **{k: list(v) if isinstance(v, tuple) else v
                                                                    for k, v in PEER_ADAMW.items()},
                            "grad_clip": 1.0, "lr_schedule": "cosine", "warmup_steps": warmup},
              "ema": PEER_EMA, "saved": str(out), "machine_before": before, "machine_after": machine_record()}
    return ema_unet, record


def peer_sample(unet, labels, *, steps: int, cfg: float, seed: int, batch_size: int = 250):
    """diffusers' DPM-Solver++(2M) SDE with classifier-free guidance, as a user writes it: uint8 images."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    from difforge.io.space import to_uint8

    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                        algorithm_type="sde-dpmsolver++", use_karras_sigmas=True)
    null = unet.config.num_class_embeds - 1
    size, channels = unet.config.sample_size, unet.config.in_channels
    out = []
    with torch.no_grad():
        for s in range(0, len(labels), batch_size):
            y = labels[s: s + batch_size]
            g = torch.Generator().manual_seed(seed + s)
            x = torch.randn((len(y), channels, size, size), generator=g) * sched.init_noise_sigma
            sched.set_timesteps(steps)
            both = torch.cat([y, torch.full_like(y, null)])
            for t in sched.timesteps:
                cond, uncond = unet(torch.cat([x, x]), t, class_labels=both).sample.chunk(2)
                x = sched.step(uncond + cfg * (cond - uncond), t, x, generator=g).prev_sample
            out.append(to_uint8(x))
    return torch.cat(out)


def peer_scores(args, unet, scorer: Scorer, classes: int) -> dict:
    labels = balanced_labels(classes, args.n)
    passes = count_rows(unet)
    t0 = time.perf_counter()
    images = peer_sample(unet, labels, steps=default_steps(), cfg=args.peer_cfg, seed=1_000_000 * args.seed_set)
    wall = time.perf_counter() - t0
    row = {"model": "diffusers", "setting": "diffusers, guidance at every step", "sampler":
           "DPMSolverMultistepScheduler(sde-dpmsolver++, karras sigmas)", "steps": default_steps(),
           "calls": default_steps(), "cfg": args.peer_cfg, "cfg_interval": [0, "inf"],
           "network_rows_per_image": round(passes.stop() / args.n, 2), "n": args.n, "seed_set": args.seed_set,
           **scorer(images, labels, args.seed_set), "s_per_image": round(wall / args.n, 5)}
    print(json.dumps(row), flush=True)
    return row


# ---------------------------------------------------------------------- shared
def default_steps() -> int:
    from difforge.defaults import DEFAULT_SAMPLER, DEFAULT_STEPS

    return DEFAULT_STEPS[DEFAULT_SAMPLER]


class count_rows:
    """Counts the batch rows a network is run on (a guided call on one image is 2 rows)."""

    def __init__(self, net):
        self.rows = 0
        self.handle = net.register_forward_pre_hook(self.hook)

    def hook(self, module, inputs):
        self.rows += len(inputs[0])

    def stop(self) -> int:
        self.handle.remove()
        return self.rows


def quality(args) -> None:
    import torch

    from difforge.allocator import tune_malloc
    from difforge.defaults import DEFAULT_SAMPLER

    tune_malloc()
    check_peer_config()
    args.work.mkdir(parents=True, exist_ok=True)
    record = {"minutes": args.minutes, "n": args.n, "seed_set": args.seed_set, "smoke": args.smoke,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads(),
              "default_sampler": DEFAULT_SAMPLER, "steps": default_steps(), "machine_before": machine_record()}
    with open(args.work / "commands.log", "a") as log:
        record["difforge"] = difforge_train(args, log)
    save(args.out, "quality", record)
    scorer = Scorer()
    unet, record["diffusers"] = peer_train(args, scorer.bundle.train)
    save(args.out, "quality", record)
    record["classifier_test_accuracy"] = scorer.clf.test_accuracy
    record["rows"] = difforge_scores(args, scorer) + [peer_scores(args, unet, scorer, scorer.bundle.train.num_classes)]
    record["machine_after"] = machine_record()
    save(args.out, "quality", record)
    if args.md:
        write_table(args.md, json.loads(args.out.read_text()))


# ---------------------------------------------------------------------- part two: the training loop
def loop_part(args) -> None:
    """unet-seed under difforge's trainer, then under a plain PyTorch loop: img/s."""
    import torch
    import torch.nn.functional as F

    from difforge.allocator import tune_malloc
    from difforge.config import DataConfig
    from difforge.data import load_dataset
    from difforge.models import build_model

    tune_malloc()
    args.work.mkdir(parents=True, exist_ok=True)
    arch = {"base_channels": 8, "time_dim": 32} if args.smoke else None
    run_dir = args.work / "difforge-unet-seed"
    cmd = ["train", "--model", "unet-seed", "--max-steps", str(args.loop_steps), "--batch-size",
           str(args.loop_batch), "--precision", "fp32", "--lr", "3e-4", "--lr-schedule", "constant",
           "--set", "train.grad_clip=0", "--set", "train.log_every=1", "--set", "train.sample_every=0",
           "--set", "train.checkpoint_every=0", "--set", "train.final_grid=false",
           "--set", "data.val_fraction=0", "--out", str(run_dir)]
    if arch:
        cmd += ["--set", "model.architecture=" + json.dumps(arch)]
    record = {"steps": args.loop_steps, "batch": args.loop_batch, "smoke": args.smoke, "architecture": arch,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads(),
              "machine_before": machine_record()}
    with open(args.work / "commands.log", "a") as log:
        done = run_command(cmd, log)
    ips = [r["img_per_s"] for r in metrics_rows(run_dir)][2:]
    record["difforge"] = {"command": done, "img_per_s_median": round(statistics.median(ips), 2),
                          "img_per_s_min_max": [round(min(ips), 2), round(max(ips), 2)],
                          "recipe": "fp32, AdamW lr 3e-4 constant, no clipping, eps MSE, linear 1000; EMA kept",
                          "machine_after": machine_record()}
    print(json.dumps(record["difforge"]), flush=True)

    # the article's recipe in plain PyTorch, on the same network and data
    bundle = load_dataset(DataConfig(val_fraction=0))
    images, labels = bundle.train.images, bundle.train.labels
    classes = int(labels.max()) + 1
    torch.manual_seed(0)
    net = build_model("unet-seed", in_channels=1, num_classes=classes, kwargs=arch and {**arch})
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4)
    betas = torch.linspace(1e-4, 0.02, 1000)
    alpha_bar = torch.cumprod(1 - betas, 0)
    gen = torch.Generator().manual_seed(0)
    net.train()
    times = []
    for i in range(args.loop_steps):
        t0 = time.perf_counter()
        idx = torch.randint(0, len(images), (args.loop_batch,), generator=gen)
        x0 = F.pad(images[idx].float() / 127.5 - 1, (2, 2, 2, 2), value=-1.0)  # 28 -> 32: three halvings
        y = labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < 0.1] = classes  # the null label
        t = torch.randint(0, 1000, (len(x0),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t.float(), y), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    ips = [args.loop_batch / s for s in times[2:]]
    record["plain"] = {"img_per_s_median": round(statistics.median(ips), 2),
                       "img_per_s_min_max": [round(min(ips), 2), round(max(ips), 2)],
                       "recipe": "fp32, AdamW lr 3e-4, eps MSE, linear 1000, no EMA",
                       "machine_after": machine_record()}
    ratio = record["difforge"]["img_per_s_median"] / record["plain"]["img_per_s_median"]
    record["difforge_over_plain"] = round(ratio, 3)
    print(json.dumps(record["plain"]), flush=True)
    save(args.out, "loop", record)
    if args.md:
        write_table(args.md, json.loads(args.out.read_text()))


# ---------------------------------------------------------------------- the table
def table(data: dict) -> str:
    lines = []
    q = data.get("quality")
    if q and "rows" in q:
        m = q["machine_before"]
        d, p = q["difforge"], q["diffusers"]
        lines += [f"Machine: {m['cpu']}, {m['cpus']} cores, {m['torch_cpu_capability']}, native bf16 "
                  f"{m['native_bf16']}; {q['torch_threads']} threads (OMP_NUM_THREADS={q['omp_num_threads']}); "
                  f"load average {m['load_avg_1_5_15']} before, {q['machine_after']['load_avg_1_5_15']} after.",
                  "",
                  f"Training, {q['minutes']} min each: difforge {d['steps']} steps of {d['batch']} in "
                  f"{d['loop_seconds']} s ({d['img_per_s']} img/s, {d['precision']}); diffusers {p['steps']} steps "
                  f"of {p['batch']} in {p['loop_seconds']} s ({p['img_per_s']} img/s, {p['precision']}); img/s "
                  f"ratio difforge / diffusers {d['img_per_s'] / p['img_per_s']:.2f}.",
                  "",
                  f"| model, sampling | calls | network rows / image | FD (N = {q['n']}) | FD / diffusers' | "
                  "class accuracy | precision | recall | s / image |",
                  "|---|---|---|---|---|---|---|---|---|"]
        peer_fd = next(r["fd"] for r in q["rows"] if r["model"] == "diffusers")
        for r in q["rows"]:
            interval = "every level" if r["cfg_interval"][1] == "inf" else f"sigma in {r['cfg_interval']}"
            lines.append(f"| {r['setting']} (guidance {r['cfg']}, {interval}) | {r['calls']} | "
                         f"{r['network_rows_per_image']} | {r['fd']:.3f} | {r['fd'] / peer_fd:.2f} | "
                         f"{r['accuracy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['s_per_image']:.4f} |")
    lp = data.get("loop")
    if lp:
        lines += ["", f"unet-seed, {lp['steps']} steps of {lp['batch']}, {lp['torch_threads']} threads: difforge's "
                  f"trainer {lp['difforge']['img_per_s_median']} img/s, plain PyTorch loop "
                  f"{lp['plain']['img_per_s_median']} img/s (ratio {lp['difforge_over_plain']:.2f})."]
    return "\n".join(lines)


def write_table(md: Path, data: dict) -> None:
    text = md.read_text()
    start, end = text.find(MARKERS[0]), text.find(MARKERS[1])
    if start < 0 or end < start:
        raise SystemExit(f"{md} lacks the markers {MARKERS}")
    chart = write_chart(md.parent / "results" / "peers.png" if md == MD else md.with_suffix(".png"), data)
    body = table(data) + (f"\n\n![FD of each row]({chart.relative_to(md.parent)})" if chart else "")
    md.write_text(text[: start + len(MARKERS[0])] + "\n" + body + "\n" + text[end:])


def write_chart(path: Path, data: dict) -> Path | None:
    """A bar per scored row of part one: its FD (lower is better); None before any row."""
    from difforge.io.charts import bar_chart

    q = data.get("quality")
    if not q or "rows" not in q:
        return None
    names = ["diffusers" if r["model"] == "diffusers" else "ours" if r["cfg_interval"][1] != "inf"
             else f"ours cfg {r['cfg']:g}" for r in q["rows"]]  # the chart cuts labels at 12 characters
    return bar_chart(names, {f"FD, N = {q['n']}": [r["fd"] for r in q["rows"]]}, path,
                     title=f"difforge (ours) and diffusers, {q['minutes']:g} min of training each", ylabel="FD")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["quality", "loop"], default="quality")
    ap.add_argument("--work", type=Path, required=True, help="a folder for the runs (difforge's, diffusers'); a run "
                                                             "already there is not overwritten: difforge refuses it")
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget of each side (wall clock)")
    ap.add_argument("--n", type=int, default=1000, help="images scored per row")
    ap.add_argument("--seed-set", type=int, default=0, help="image i is drawn from seed 1_000_000 * S + i")
    ap.add_argument("--seed", type=int, default=0, help="the diffusers side's training seed")
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--calibrate-steps", type=int, default=40, help="difforge steps timed to size its run")
    ap.add_argument("--difforge-steps", type=int, help="give difforge's run this many steps instead of calibrating "
                                                       "(when the machine's load moved during calibration)")
    ap.add_argument("--peer-probe-steps", type=int, default=8, help="diffusers steps timed to size its schedule")
    ap.add_argument("--peer-lr", type=float, default=1e-3, help="the diffusers side's peak learning rate")
    ap.add_argument("--peer-warmup", type=float, default=0.05, help="its linear warm-up, a fraction of its steps")
    ap.add_argument("--peer-label-dropout", type=float, default=0.1)
    ap.add_argument("--peer-cfg", type=float, default=1.5, help="the guidance scale of the diffusers side, at every "
                                                                "step (difforge is scored at it too)")
    ap.add_argument("--loop-steps", type=int, default=20, help="part loop: steps of each side (2 are warm-up)")
    ap.add_argument("--loop-batch", type=int, default=64)
    ap.add_argument("--smoke", action="store_true", help="tiny networks, batches of 16, 20 images, output only "
                                                          "under --work")
    ap.add_argument("--out", type=Path, help=f"the JSON record (default {OUT.relative_to(HERE.parent)}; with "
                                             "--smoke, WORK/peers.json)")
    ap.add_argument("--md", type=Path, help=f"where the table goes, between its markers (default "
                                            f"{MD.relative_to(HERE.parent)}; none with --smoke)")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.batch = min(args.n, 20), min(args.batch, 16)
        args.calibrate_steps, args.peer_probe_steps = min(args.calibrate_steps, 6), min(args.peer_probe_steps, 3)
        args.loop_steps, args.loop_batch = min(args.loop_steps, 4), min(args.loop_batch, 8)
        args.out = args.out or args.work / "peers.json"
    else:
        args.out, args.md = args.out or OUT, args.md or MD
    if args.loop_steps < 3:
        ap.error("--loop-steps must be at least 3 (2 warm-up steps, then the timed ones)")
    (quality if args.part == "quality" else loop_part)(args)


if __name__ == "__main__":
    main()
