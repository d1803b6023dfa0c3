"""Every framework (ddpm, ncsn, vp-sde, subvp-sde, ve-sde, edm) trained the same way on
Fashion-MNIST, then measured the same way.

Same network (`unet` preset, unconditional), batch, optimiser, LR schedule, EMA and number
of steps for all: the network is the whole cost of a step, so equal steps are equal compute
(the wall time is recorded too). Then, per framework:
- FD in the domain classifier's feature space (`difforge evaluate`), N samples from the
  same PF-ODE sampler (heun, Karras grid) with the same number of network calls;
- the framework's own stochastic sampler (ncsn: annealed Langevin; the SDEs: predictor-
  corrector; ddpm: ancestral; edm: its Heun sampler, the PF-ODE row itself) at about
  the same number of calls;
- bits/dim of the first test images by the probability-flow ODE (and the VLB for DDPM);
- a PNG grid.

    OMP_NUM_THREADS=1 nohup .venv/bin/python benchmarks/frameworks.py > benchmarks/results/frameworks.log 2>&1 &

Writes benchmarks/frameworks/<name>.json and .png, then benchmarks/frameworks.json and .md
(--report-only: just collect the per-framework files).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from train_throughput import machine_record  # noqa: E402

FRAMEWORKS = ("ddpm", "ncsn", "vp-sde", "subvp-sde", "ve-sde", "edm")
NATIVE = {"ddpm": ("ddpm", 35), "ncsn": ("langevin", 8), "vp-sde": ("pc", 18), "subvp-sde": ("pc", 18),
          "ve-sde": ("pc", 18), "edm": ("heun", 18)}  # (sampler, steps): about 35 network calls each


def train_one(fw: str, steps: int, batch: int, run_root: Path) -> dict:
    from difforge.config import config_from_dict
    from difforge.train.loop import train

    out = run_root / fw
    if (out / "checkpoints").is_dir() and (out / "done.json").is_file():
        return json.loads((out / "done.json").read_text())
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cfg = config_from_dict({
        "data": {"dataset": "fashion-mnist"},
        "model": {"preset": "unet", "conditional": False},
        "diffusion": {"framework": fw},
        "train": {"max_steps": steps, "batch_size": batch, "lr": 2e-3, "ema_decay": 0.99, "ema_warmup": 50,
                  "sample_every": 0, "checkpoint_every": 0, "log_every": 25, "seed": 0, "device": "cpu"},
        "out": str(out),
    })
    t0 = time.perf_counter()
    train(cfg, progress=False)
    rec = {"train_seconds": round(time.perf_counter() - t0, 1), "steps": steps, "batch_size": batch}
    (out / "done.json").write_text(json.dumps(rec))
    return rec


def measure(fw: str, run_dir: Path, n: int, bpd: int, grids: Path) -> dict:
    from difforge.eval.evaluate import EvalConfig, evaluate
    from difforge.pipeline import load_pipeline

    res = {}
    for tag, (sampler, steps) in (("pf-ode", ("heun", 18)), ("native", NATIVE[fw])):
        if tag == "native" and (sampler, steps) == ("heun", 18):
            res[tag] = dict(res["pf-ode"])  # EDM's own sampler is the PF-ODE Heun above
            continue
        t0 = time.perf_counter()
        cfg = EvalConfig(n=n, sampler=sampler, steps=steps, seed=0, memorization=False,
                         bpd=bpd if tag == "pf-ode" else 0, bpd_ode=True)
        rep = evaluate(str(run_dir), str(run_dir / f"eval-{tag}"), cfg, progress=False, log=lambda *a: None)
        m = rep["metrics"]["classifier"]
        res[tag] = {"sampler": sampler, "steps": steps, "fd": m["fd"], "kid": m["kid"],
                    "precision": m["precision"], "recall": m["recall"], "floor_fd": rep["floor"]["classifier"]["fd"],
                    "seconds": round(time.perf_counter() - t0, 1)}
        if tag == "pf-ode" and rep.get("likelihood"):
            lk = rep["likelihood"]
            res["bpd"] = {"n": lk["n"], "split": lk["split"], "ode": lk["ode"]["bpd"],
                          "ode_native": lk["ode"]["bpd_native"], "ode_nfe": lk["ode"]["nfe"],
                          "vlb": lk.get("vlb", {}).get("large", {}).get("bpd")}
        pipe = load_pipeline(run_dir)
        res[tag]["network_calls"] = _count_calls(pipe, sampler, steps)
        if tag == "pf-ode":
            images, _ = pipe.generate(n=64, sampler=sampler, steps=steps, seed=0)
            pipe.save_grid(images, grids / f"{fw}.png")
    return res


def _count_calls(pipe, sampler: str, steps: int) -> int:
    """Network evaluations for one image (a counting wrapper around the network)."""
    count = [0]
    net = pipe.net

    def hook(module, args):
        count[0] += 1

    h = net.register_forward_pre_hook(hook)
    try:
        pipe.generate(n=1, sampler=sampler, steps=steps, seed=0)
    finally:
        h.remove()
    return count[0]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n", type=int, default=500, help="samples for FD")
    p.add_argument("--bpd", type=int, default=32, help="test images for bits/dim")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--runs", default="runs/bench-frameworks")
    p.add_argument("--report-only", action="store_true",
                   help="only collect benchmarks/frameworks/*.json into the report")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    grids = ROOT / "frameworks"
    grids.mkdir(exist_ok=True)
    if not a.report_only:
        for fw in a.frameworks.split(","):  # one JSON per framework: several processes may share the list
            t0 = time.perf_counter()
            rec = train_one(fw, a.steps, a.batch_size, Path(a.runs))
            rec.update(measure(fw, Path(a.runs) / fw, a.n, a.bpd, grids))
            rec["machine"] = machine_record()  # the process that trained and measured: threads, load
            (grids / f"{fw}.json").write_text(json.dumps(rec, indent=2))
            print(f"{fw}: {json.dumps(rec)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "torch": torch.__version__},
               "setup": {"model": "unet (unconditional)", "dataset": "fashion-mnist", "steps": a.steps,
                         "batch_size": a.batch_size, "fd_samples": a.n, "bpd_images": a.bpd},
               "frameworks": {fw: json.loads((grids / f"{fw}.json").read_text())
                              for fw in FRAMEWORKS if (grids / f"{fw}.json").is_file()}}
    old = json.loads((ROOT / "frameworks.json").read_text()) if (ROOT / "frameworks.json").is_file() else {}
    for fw, rec in results["frameworks"].items():  # the bits/dim spread over images, from the run's report
        rep = Path(a.runs) / fw / "eval-pf-ode" / "report.json"
        if rep.is_file() and "bpd" in rec:
            rec["bpd"]["ode_sem"] = json.loads(rep.read_text())["likelihood"]["ode"]["bpd_sem"]
        elif "bpd" in rec:  # the run folder is gone: keep what the last report read from it
            sem = old.get("frameworks", {}).get(fw, {}).get("bpd", {}).get("ode_sem")
            if sem is not None:
                rec["bpd"]["ode_sem"] = sem
    (ROOT / "frameworks.json").write_text(json.dumps(results, indent=2))
    write_md(results)


def machine_line(r: dict) -> str:
    """Threads and load as each framework's process recorded them (runs before this field say so)."""
    recs = {fw: v.get("machine") for fw, v in r.get("frameworks", {}).items()}
    known = {fw: m for fw, m in recs.items() if m}
    head = f"{r['machine']['cpu']}, {r['machine']['cores']} cores. "
    if not known:
        return head + ("Threads and load were not recorded by these runs (the files predate the field; the process "
                       "that wrote this report had " + str(torch.get_num_threads()) + " thread): wall times are not "
                       "comparable; equal steps are the equal-compute comparison.")
    threads = sorted({m["threads"] for m in known.values()})
    loads = [m["load_avg_1_5_15"][0] for m in known.values()]
    return head + (f"Threads per run: {', '.join(map(str, threads))}; load average (1 min) at the end of each run "
                   f"{min(loads):g}-{max(loads):g}" + ("" if len(known) == len(recs) else
                                                      f"; not recorded for {sorted(set(recs) - set(known))}") + ".")


def write_md(r: dict) -> None:
    s = r["setup"]
    lines = ["# Frameworks on Fashion-MNIST: same network, same steps", "",
             f"`unet` preset, unconditional, {s['steps']} steps of batch {s['batch_size']} (AdamW + one-cycle, "
             f"EMA 0.99), fp32. FD: domain-classifier features, {s['fd_samples']} samples vs the test "
             f"split (lower is better; the real-vs-real floor at the same N is shown). Bits/dim: probability-flow "
             f"ODE (RK4, 32 steps, Hutchinson), first {s['bpd_images']} test images, dequantized; per native pixel. "
             f"Machine: {machine_line(r)} Command: `python benchmarks/frameworks.py --steps {s['steps']} "
             f"--batch-size {s['batch_size']} --n {s['fd_samples']} --bpd {s['bpd_images']}`; per-framework records: "
             "`frameworks/*.json`.", "",
             "| framework | train s | FD (PF-ODE heun 18) | calls | native sampler | FD (native) | calls "
             "| bits/dim ODE ± sem | VLB |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for fw, v in r.get("frameworks", {}).items():
        b = v.get("bpd", {})
        vlb = f"{b['vlb']:.3f}" if b.get("vlb") is not None else "-"
        lines.append(f"| {fw} | {v['train_seconds']:g} | {v['pf-ode']['fd']:.3g} | {v['pf-ode']['network_calls']} | "
                     f"{v['native']['sampler']} {v['native']['steps']} | {v['native']['fd']:.3g} | "
                     f"{v['native']['network_calls']} | {b.get('ode_native', float('nan')):.2f} "
                     f"± {b.get('ode_sem', float('nan')):.2f} | "
                     f"{vlb} |")
    floor = next(iter(r.get("frameworks", {}).values()), {}).get("pf-ode", {}).get("floor_fd")
    if floor is not None:
        lines += ["", f"Real-vs-real FD floor at this N: {floor:.3g}."]
    lines += ["", "Grids (64 samples, PF-ODE heun 18 steps): " + ", ".join(
        f"[{fw}](frameworks/{fw}.png)" for fw in r.get("frameworks", {}))]
    md = ROOT / "frameworks.md"
    old = md.read_text() if md.is_file() else ""
    notes = old[old.index("\n## Reading it"):] if "\n## Reading it" in old else ""  # hand-written, kept
    md.write_text("\n".join(lines) + "\n" + notes)


if __name__ == "__main__":
    main()
