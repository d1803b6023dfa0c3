"""Which training recipe gives the best quick-start model for the same training time.

Two budgets. The first variants train the quick-start network of the time (preset `unet`, 32 base
channels) on the same number of training images, 700 steps of 128 (half the quick start's earlier
1400), and change one thing from the earlier quick-start recipe (DDPM, epsilon, linear schedule):
the framework (EDM preconditioning with log-normal noise levels), the prediction target, the loss
weighting (min-SNR), the noise schedule, the batch size, the learning rate. The network and the
images seen are the same, so a step costs the same and equal images mean equal wall clock.

The `edm-...` variants with a step count in their name share a smaller budget, about 9 minutes of
training on a 2-core AVX2 CPU (what a 12-minute `make run` leaves): EDM for 300 steps at the full
width, or a narrower network (16 or 24 base channels) for as many steps as its cheaper images allow.
Their costs differ per image, so equal wall clock is what they share: run them side by side (one
thread each) and compare the training seconds each record holds.

Each variant is scored like the sampler sweep (`sampler_sweep.py`): the default sampling setting,
N class-balanced images per seed set, Frechet distance on difforge's domain-classifier features
against the 10,000 test images, class accuracy, precision and recall.

    python benchmarks/recipes.py train edm           # trains WORK/edm, records its time
    python benchmarks/recipes.py score edm --n 1000  # scores it at the default sampling setting
    python benchmarks/recipes.py --table             # results/recipes.md from every recorded variant

Variants can train side by side (one thread each: OMP_NUM_THREADS=1); each writes its own file,
results/recipes/VARIANT.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from text_to_image import run_command  # noqa: E402
from train_throughput import machine_record  # noqa: E402

RESULTS = HERE / "results" / "recipes"
STEPS = 700  # half the quick start: the budget that would fit its time target

DDPM = ["--framework", "ddpm"]
EDM = ["--framework", "edm"]
# The quick start these variants change: configs/quickstart.yaml with the batch and width it had when they
# were recorded (it now trains 16 base channels at batch 64, the winner below); a variant's own flags come after.
PINNED = ["--batch-size", "128", "--set", "model.architecture={base_channels: 32}"]
W16B64 = ["--set", "model.architecture={base_channels: 16}", "--batch-size", "64", "--steps", "1800"]
VARIANTS: dict[str, tuple[str, list[str]]] = {  # every variant names its framework: the config's may change
    "base": ("DDPM, epsilon, linear schedule, batch 128, lr 2e-3 (the quick start's recipe before this comparison)",
             DDPM),
    "edm": ("EDM preconditioning and log-normal noise levels", ["--framework", "edm"]),
    "min-snr": ("epsilon with min-SNR-5 loss weighting", DDPM + ["--min-snr-gamma", "5"]),
    "v": ("v-prediction", DDPM + ["--prediction", "v"]),
    "v-cosine": ("v-prediction, cosine schedule", DDPM + ["--prediction", "v", "--schedule", "cosine"]),
    "b64": ("batch 64 for twice the steps (same images)", DDPM + ["--batch-size", "64", "--steps-factor", "2"]),
    "lr4e-3": ("peak learning rate 4e-3", DDPM + ["--lr", "0.004"]),
    "base-1400": ("base for twice the steps (the quick start before this comparison)", DDPM + ["--steps-factor", "2"]),
    "edm-b64": ("EDM, batch 64 for twice the steps (same images)", ["--framework", "edm", "--batch-size", "64",
                                                                  "--steps-factor", "2"]),
    # A quick start that fits 12 minutes on a 2-core AVX2 CPU (fp32) has about 9 minutes of training:
    # 300 steps of 128 at the quick start's width, or more steps of a narrower network.
    "edm-300": ("EDM for 300 steps", EDM + ["--steps", "300"]),
    "edm-300-lr4e-3": ("EDM for 300 steps, peak learning rate 4e-3", EDM + ["--steps", "300", "--lr", "0.004"]),
    "edm-b64-600": ("EDM, batch 64 for 600 steps (the images of 300 steps of 128)",
                    EDM + ["--batch-size", "64", "--steps", "600"]),
    "edm-w16-900": ("EDM, 16 base channels (0.30M parameters, 1.19M at 32) for 900 steps",
                    EDM + ["--set", "model.architecture={base_channels: 16}", "--steps", "900"]),
    "edm-w16-b64-1800": ("EDM, 16 base channels, batch 64 for 1800 steps (the images of 900 steps of 128)",
                         EDM + W16B64),
    # the winner above (the quick start now) with one more change, at the same budget
    "edm-w16-b64-1800-lr4e-3": ("the quick start now, peak learning rate 4e-3", EDM + W16B64 + ["--lr", "0.004"]),
    "edm-w16-b64-1800-ema0.999": ("the quick start now, EMA decay 0.999 (a longer average)",
                                  EDM + W16B64 + ["--set", "train.ema_decay=0.999"]),
    "edm-w16-b64-1800-ema0.99": ("the quick start now, EMA decay 0.99 (a shorter average)",
                                 EDM + W16B64 + ["--set", "train.ema_decay=0.99"]),
    "v-cosine-w16-b64-1800": ("the quick start now with DDPM, v-prediction and the cosine schedule in place of EDM",
                              DDPM + W16B64 + ["--prediction", "v", "--schedule", "cosine"]),
    "edm-w24-500": ("EDM, 24 base channels (0.67M parameters) for 500 steps",
                    EDM + ["--set", "model.architecture={base_channels: 24}", "--steps", "500"]),
}


def train_args(name: str, work: Path) -> list[str]:
    _, extra = VARIANTS[name]
    extra = list(extra)
    steps = STEPS
    for flag, to_steps in (("--steps-factor", lambda v: STEPS * int(v)), ("--steps", int)):
        if flag in extra:
            i = extra.index(flag)
            steps = to_steps(extra[i + 1])
            del extra[i:i + 2]
    return ["train", "--config", "configs/quickstart.yaml", "--out", str(work / name), "--max-steps", str(steps),
            "--set", f"train.sample_every={steps}", "--set", f"train.checkpoint_every={steps}", *PINNED, *extra]


def record_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def load(name: str) -> dict:
    path = record_path(name)
    return json.loads(path.read_text()) if path.exists() else {"variant": name, "rows": []}


def save(name: str, record: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    record_path(name).write_text(json.dumps(record, indent=1))


def train(name: str, work: Path) -> None:
    args = train_args(name, work)
    log = open(RESULTS.parent / f"recipes-{name}.log", "a")
    machine = machine_record()
    result = run_command(args, log)
    record = load(name)
    record.update(description=VARIANTS[name][0], training=result, machine_before=machine,
                  omp_num_threads=os.environ.get("OMP_NUM_THREADS"), run=str(work / name))
    save(name, record)
    print(json.dumps(result))


def score(name: str, work: Path, n: int, seed_sets: str) -> None:
    import sampler_sweep

    from difforge.defaults import DEFAULT_CFG, DEFAULT_CFG_INTERVAL, DEFAULT_SAMPLER, DEFAULT_STEPS

    RESULTS.mkdir(parents=True, exist_ok=True)
    scratch = RESULTS / f".{name}.sweep.json"
    record = load(name)
    scratch.write_text(json.dumps({"rows": record["rows"]}))
    final = json.dumps([[DEFAULT_SAMPLER, DEFAULT_STEPS[DEFAULT_SAMPLER], DEFAULT_CFG, 0.0, None,
                         list(DEFAULT_CFG_INTERVAL)]])
    sampler_sweep.run(argparse.Namespace(model=str(work / name), stage="final", final=final, seed_sets=seed_sets,
                                         final_n=n, out=scratch))
    swept = json.loads(scratch.read_text())
    record = load(name)
    record["rows"] = swept["rows"]
    record["classifier_test_accuracy"] = swept.get("classifier_test_accuracy")
    save(name, record)
    scratch.unlink()


def table() -> str:
    import statistics

    lines = ["| variant | what changes | steps x batch | training s (threads) | N x seed sets | FD mean (min-max) | "
             "accuracy | precision | recall |", "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, (description, _) in VARIANTS.items():
        if not record_path(name).exists():
            continue
        rec = load(name)
        args = train_args(name, Path("."))
        steps = args[args.index("--max-steps") + 1]
        batch = args[len(args) - 1 - args[::-1].index("--batch-size") + 1]  # the last one given wins
        seconds = rec.get("training", {}).get("seconds")
        threads = rec.get("omp_num_threads") or "all"
        if rec.get("note"):
            notes.append(f"- {name}: {rec['note']}")
        by_n: dict[int, list[dict]] = {}
        for row in rec["rows"]:
            by_n.setdefault(row["n"], []).append(row)
        for n, rows in sorted(by_n.items()):
            fds = [r["fd"] for r in rows]

            def mean(key: str, rows=rows) -> float:
                return statistics.mean(r[key] for r in rows)

            timed = "not timed here" if seconds is None else f"{seconds:.0f} ({threads})"
            lines.append(f"| {name} | {description} | {steps} x {batch} | {timed} | {n} x {len(rows)} | "
                         f"{statistics.mean(fds):.2f} ({min(fds):.2f}-{max(fds):.2f}) | {mean('accuracy'):.3f} | "
                         f"{mean('precision'):.3f} | {mean('recall'):.3f} |")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", nargs="?", choices=["train", "score"])
    ap.add_argument("variant", nargs="?", choices=sorted(VARIANTS))
    ap.add_argument("--work", type=Path, default=Path("runs/recipes"), help="where the runs go")
    ap.add_argument("--n", type=int, default=1000, help="score: images per seed set")
    ap.add_argument("--seed-sets", default="0", help="score: comma-separated seed sets")
    ap.add_argument("--table", action="store_true", help="write results/recipes.md from the recorded variants")
    args = ap.parse_args()
    if args.table:
        text = table()
        (HERE / "results" / "recipes.md").write_text(text)
        print(text)
        return
    if not args.action or not args.variant:
        ap.error("give an action (train, score) and a variant, or --table")
    if args.action == "train":
        train(args.variant, args.work)
    else:
        score(args.variant, args.work, args.n, args.seed_sets)


if __name__ == "__main__":
    main()
