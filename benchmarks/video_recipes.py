"""Video recipes on moving-fashion-mnist at a CPU budget, trained and scored side by side.

Each recipe is one `difforge train` command (timed: wall clock and CPU seconds of the
process, with the machine, its threads and load recorded), then `difforge evaluate-video`
on its EMA weights (per-frame FD, identity consistency, motion, the video FD, each beside
its real-vs-real floor; with --given, PSNR / SSIM / FD of predicted frames). Recipes:

- joint: stunet-space-down at 16 base channels, EDM, joint image-video training (the
  configs/video.yaml of the records before patches);
  also scored with --per-frame: the same weights making every frame on its own, an image
  model applied frame by frame (what the temporal layers add);
- space-down: the same without joint training (train.joint_images 0);
- time-down: `stunet` (temporal down- and upsampling, Lumiere) without joint training;
- rvd: configs/video-rvd.yaml (residual video diffusion), scored on prediction only;
- patch-v, patch-edm: `stunet` (temporal down-sampling) on 2 x 2 patches (model.architecture
  patch_size 2) at 24 base channels, with v-prediction on the cosine schedule or with EDM;
  patch-v-head: patch-v with a full-size head (head_channels 8); patch-v-head-min-snr: that
  with Min-SNR-5 loss weights; patch-joint: patch-v-head's network without temporal
  down-sampling (stunet-space-down), trained jointly on clips and rows of unrelated frames.

Steps per recipe are options, so that the recipes can be given about the same CPU time;
the record says what each one took. `--smoke` runs every step with tiny settings (to check
the script, not to measure: its record says "smoke": true). `--table FILE...` prints the
recorded results as docs/video.md's table.

    OMP_NUM_THREADS=1 python benchmarks/video_recipes.py --recipes joint --work /tmp/vr \\
        --out benchmarks/results/video_recipes_joint.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from text_to_image import run_command  # noqa: E402
from train_throughput import machine_record, write_record  # noqa: E402

EDM = ["--framework", "edm", "--set", "diffusion.prediction=edm"]
V = ["--framework", "ddpm", "--prediction", "v", "--schedule", "cosine"]


def patch(head: int = 0, model: str = "stunet", joint: float = 0) -> list[str]:
    """`model` on 2 x 2 patches at 24 base channels (with a full-size head of `head` channels),
    `joint` of each batch's rows unrelated frames."""
    arch = "base_channels: 24, channel_mults: [1, 2, 4], patch_size: 2" + (f", head_channels: {head}" if head else "")
    return ["--model", model, "--set", f"train.joint_images={joint}", "--set", f"model.architecture={{{arch}}}",
            "--set", "train.sample_every=1200", "--set", "train.checkpoint_every=600"]


def recipes(work: Path, a) -> dict[str, list[str]]:
    video = ["train", "--config", "configs/video.yaml"]
    # configs/video.yaml before patches: stunet-space-down at 16 channels, EDM, joint training
    full = [*video, "--model", "stunet-space-down", "--set",
            "model.architecture={base_channels: 16, channel_mults: [1, 2, 4]}", *EDM, "--set",
            "train.joint_images=0.5", "--set", "train.sample_every=400", "--set", "train.checkpoint_every=400"]
    return {
        "joint": [*full, "--out", str(work / "joint"), "--max-steps", str(a.joint_steps)],
        "space-down": [*full, "--out", str(work / "space-down"), "--max-steps", str(a.space_down_steps),
                       "--set", "train.joint_images=0"],
        "time-down": [*full, "--out", str(work / "time-down"), "--max-steps", str(a.time_down_steps),
                      "--model", "stunet", "--set", "train.joint_images=0"],
        "rvd": ["train", "--config", "configs/video-rvd.yaml", "--out", str(work / "rvd"), "--max-steps",
                str(a.rvd_steps)],
        "patch-v": [*video, "--out", str(work / "patch-v"), "--max-steps", str(a.patch_steps), *patch(), *V],
        "patch-edm": [*video, "--out", str(work / "patch-edm"), "--max-steps", str(a.patch_steps), *patch(), *EDM],
        "patch-v-head": [*video, "--out", str(work / "patch-v-head"), "--max-steps", str(a.patch_steps),
                         *patch(head=8), *V],
        "patch-joint": [*video, "--out", str(work / "patch-joint"), "--max-steps", str(a.patch_joint_steps),
                        *patch(head=8, model="stunet-space-down", joint=0.5), *V],
        "patch-v-head-min-snr": [*video, "--out", str(work / "patch-v-head-min-snr"), "--max-steps",
                                 str(a.patch_steps), *patch(head=8), *V, "--set", "diffusion.min_snr_gamma=5"],
    }


def scores(report: dict) -> dict:
    """The numbers of an evaluate-video report that the comparison reads."""
    out: dict = {}
    if report.get("frame_fd"):
        out["frame_fd"] = {k: report["frame_fd"][k]["fd"] for k in ("generated", "floor")}
        out["identity"] = {k: report["identity"][k] for k in ("generated", "floor")}
        out["motion"] = {k: {m: report["motion"][k].get(m) for m in ("mean_speed", "mean_abs_acceleration", "static",
                                                                    "speed_w1", "acceleration_w1")}
                         for k in ("generated", "floor")}
        out["video_fd"] = {k: report["video_fd"][k] for k in ("generated", "floor")}
    out["given"] = report.get("given", {})
    out["sampling"] = report["sampling"]
    return out


def evaluate(run: Path, out: Path, a, log, *extra: str) -> dict:
    cmd = ["evaluate-video", str(run), "--out", str(out), "--n", str(a.n), "--steps", str(a.steps), *extra]
    timing = run_command(cmd, log)
    return {**timing, **scores(json.loads((out / "report.json").read_text()))}


def table(paths: list[Path]) -> str:
    """A markdown table of the recipes in result files `paths` (docs/video.md's)."""
    def f(v, d=3):
        return "-" if v is None else f"{v:.{d}g}"

    lines = ["| recipe | CPU-min | steps | frame FD | video FD | clip class | class | constant | accel. | "
             "first:4 PSNR | SSIM | frame FD | kept | speed W1 |", "|---|" + "---:|" * 13]
    for path in paths:
        stem = Path(path).stem.removeprefix("video_recipes_")
        for name, r in json.loads(Path(path).read_text())["recipes"].items():
            if stem != name.replace("-", "_"):  # e.g. an earlier variant's record of the same recipe
                name = f"{name} ({stem})"
            for tag, ev in (("", r["eval"]), (" (--per-frame)", r.get("eval_per_frame"))):
                if ev is None:
                    continue
                g = next(iter(ev["given"].values()), {}).get("model", {})
                free = "frame_fd" in ev
                gen = (lambda k: ev[k]["generated"]) if free else (lambda k: {})
                lines.append(
                    f"| {name}{tag} | {f(r['train']['cpu_seconds'] / 60)} | {r['steps']} | "
                    f"{f(gen('frame_fd') if free else None)} | {f(gen('video_fd').get('fd'))} | "
                    f"{f(gen('video_fd').get('class_accuracy'), 2)} | "
                    f"{f(gen('identity').get('class_match'), 2)} | {f(gen('identity').get('constant'), 2)} | "
                    f"{f(gen('motion').get('mean_abs_acceleration'))} | {f(g.get('psnr'))} | {f(g.get('ssim'), 2)} | "
                    f"{f(g.get('frame_fd'))} | {f(g.get('class_match'), 2)} | {f(g.get('speed_w1'))} |")
    first = json.loads(Path(paths[0]).read_text())["recipes"]
    base = next(iter(next(iter(first.values()))["eval"]["given"].values()), {}).get("nearest_given_frame")
    if base:
        lines.append(f"| copy the last given frame | - | - | - | - | - | - | - | - | {f(base.get('psnr'))} | "
                     f"{f(base.get('ssim'), 2)} | {f(base.get('frame_fd'))} | {f(base.get('class_match'), 2)} | "
                     f"{f(base.get('speed_w1'))} |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--table"]:  # print the table of recorded results: --table FILE...
        print(table([Path(p) for p in sys.argv[2:]]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="a new folder for the runs")
    ap.add_argument("--recipes", nargs="+", default=["joint", "space-down", "time-down", "rvd"])
    ap.add_argument("--joint-steps", type=int, default=800)
    ap.add_argument("--space-down-steps", type=int, default=800)
    ap.add_argument("--time-down-steps", type=int, default=1400)
    ap.add_argument("--rvd-steps", type=int, default=1800)
    ap.add_argument("--patch-steps", type=int, default=2400)
    ap.add_argument("--patch-joint-steps", type=int, default=1600)
    ap.add_argument("--n", type=int, default=100, help="clips per evaluation")
    ap.add_argument("--steps", type=int, default=25, help="sampler steps when evaluating")
    ap.add_argument("--given", default="first:4", help="the prediction task scored for every recipe")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    book = recipes(a.work, a)
    unknown = [r for r in a.recipes if r not in book]
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}; expected some of {list(book)}")
    tiny = ["--set", "model.architecture={base_channels: 8, channel_mults: [1, 2], attention_levels: [1]}",
            "--set", "train.sample_every=0", "--set", "train.final_grid=false"] if a.smoke else []
    result = {"machine_before": machine_record(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "smoke": a.smoke, "n": a.n, "sampler_steps": a.steps, "given": a.given, "recipes": {}}
    with open(a.work / "log.txt", "a") as log:
        for name in a.recipes:
            cmd = book[name] + (tiny if name != "rvd" or not a.smoke else
                                ["--model", "rvd-tiny", "--set", "train.sample_every=0", "--set",
                                 "train.final_grid=false"])
            run = a.work / name
            entry = {"train": run_command(cmd, log)}
            metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            val = [m for m in metrics if "val_loss_ema" in m]
            entry["final_val_loss_ema"] = val[-1]["val_loss_ema"] if val else None
            entry["steps"] = max(m.get("step", 0) for m in metrics)
            if name == "rvd":  # an RVD model continues given frames: prediction only
                entry["eval"] = evaluate(run, run / "eval-given", a, log, "--given", a.given, "--n", str(a.n))
            else:
                entry["eval"] = evaluate(run, run / "eval-video", a, log, "--given", a.given)
                if name == "joint":
                    entry["eval_per_frame"] = evaluate(run, run / "eval-per-frame", a, log, "--per-frame")
            result["recipes"][name] = entry
            write_record(a.out, result)  # after every recipe: a long run keeps what it has
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
