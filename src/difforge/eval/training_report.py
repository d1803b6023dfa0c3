"""`difforge report RUN_DIR`: what happened during training, from metrics.jsonl.

Reads the records the training loop writes (`train/loop.py`): every `log_every` steps
{"loss" (the batch's training loss, raw weights), "lr"}; at each epoch end
{"val_loss", "val_loss_ema"} (the held-out validation split, fixed t and noise); with
`--eval-every`, {"eval_fd", "eval_kid", "eval_fd_floor", ...} (`eval.during_training`).

Train/validation gap per epoch: val_loss at the epoch's end minus the mean of the training
losses logged during that epoch. Both are the same eps-MSE, but the training number is
measured on the weights *before* each step and with label dropout, so early in training it
is pessimistic; a gap that grows over epochs (validation rising while training falls) is
the sign of overfitting. Records repeated after a resume: the later one wins.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from difforge.io.outputs import check_output_dir


def read_metrics(path: str | Path) -> list[dict]:
    """The JSON records of a metrics.jsonl; a truncated last line (a run killed mid-write) is
    skipped, any other malformed line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is this a run directory?)")
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                continue
            raise ValueError(f"{path}:{i}: not a JSON record") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise ValueError(f"{path}:{i}: record without an integer 'step'")
        records.append(rec)
    return records


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one key, sorted by step; a later record for the same step wins."""
    by_step: dict[int, float] = {}
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            by_step[r["step"]] = float(v)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def loss_gap(records: list[dict]) -> list[dict]:
    """One row per validation record: epoch, step, mean logged train loss since the previous
    validation, val_loss, val_loss_ema, gap = val_loss - train mean."""
    t_steps, t_vals = series(records, "loss")
    v_steps, v_vals = series(records, "val_loss")
    _, ve_vals = series(records, "val_loss_ema") if v_steps else ([], [])
    epochs = dict(zip(*series(records, "epoch")))
    rows, prev = [], 0
    for i, (s, v) in enumerate(zip(v_steps, v_vals)):
        window = [x for st, x in zip(t_steps, t_vals) if prev < st <= s]
        train = sum(window) / len(window) if window else None
        rows.append({"step": s, "epoch": epochs.get(s), "train_loss": train, "val_loss": v,
                     "val_loss_ema": ve_vals[i] if i < len(ve_vals) else None,
                     "gap": None if train is None else v - train, "train_records": len(window)})
        prev = s
    return rows


def _smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average over `window` records (shorter at the ends): no lag."""
    half = window // 2
    return [sum(values[max(0, i - half) : i + half + 1]) / len(values[max(0, i - half) : i + half + 1])
            for i in range(len(values))]


def write_run_report(run_dir: str | Path, out: str | Path | None = None) -> dict:
    """Write training.png (loss, learning rate, FD over steps) and training.md (summary and
    the train/validation gap table) into `out` (default RUN_DIR/report); returns the summary."""
    from difforge.io.charts import xy_panels

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} is empty: nothing to report yet")
    out = check_output_dir(out if out is not None else run_dir / "report", holds="training report",
                           is_ours=lambda p: (p / "training.json").is_file(), allow_ours=True)
    out.mkdir(parents=True, exist_ok=True)
    ls, lv = series(records, "loss")
    rs, rv = series(records, "lr")
    vs, vv = series(records, "val_loss")
    es, ev = series(records, "val_loss_ema")
    fs, fv = series(records, "eval_fd")
    _, floor = series(records, "eval_fd_floor")
    ks, kv = series(records, "eval_kid")
    loss_panel = {"train (smoothed)": (ls, _smooth(lv, 10)), "val": (vs, vv), "val (EMA)": (es, ev)}
    fd_panel = {"FD (EMA)": (fs, fv)}
    if floor:
        fd_panel["real floor"] = ([None], [floor[-1]])
    n_eval = series(records, "eval_n")[1]
    xy_panels([("loss (log scale)", loss_panel), ("learning rate", {"lr": (rs, rv)}),
               (f"FD, classifier features{f' (N = {int(n_eval[-1])})' if n_eval else ''}", fd_panel)],
              out / "training.png", xlabel="step", log_y=[True, False, False],
              note="" if fs else "no in-training evaluation: train with --eval-every N to plot FD")
    gap = loss_gap(records)
    summary = {"run": str(run_dir), "steps": max(r["step"] for r in records), "loss_gap": gap,
               "final_train_loss": _smooth(lv, 10)[-1] if lv else None, "final_val_loss": vv[-1] if vv else None,
               "eval": [{"step": s, "fd": f, "kid": next((k for st, k in zip(ks, kv) if st == s), None)}
                        for s, f in zip(fs, fv)],
               "eval_fd_floor": floor[-1] if floor else None}
    (out / "training.json").write_text(json.dumps(summary, indent=2))
    (out / "training.md").write_text(_markdown(summary))
    return summary


def summary_lines(s: dict) -> list[str]:
    """The summary of `write_run_report` for the terminal: the last epoch's losses and gap
    (nothing before the first validation loss)."""
    gap = s["loss_gap"]
    if not gap or gap[-1]["gap"] is None:
        return []
    last = gap[-1]
    return [f"last epoch: train loss {last['train_loss']:.4g}, val loss {last['val_loss']:.4g} "
            f"(gap {last['gap']:+.3g})"]


def _f(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def _markdown(s: dict) -> str:
    lines = [f"# Training report: `{s['run']}`", "",
             f"{s['steps']} steps. ![loss, learning rate and FD](training.png)", ""]
    gap = s["loss_gap"]
    if gap:
        lines += ["## Train / validation loss", "",
                  "Per epoch: the mean training loss logged during the epoch (batch losses before each step, with "
                  "label dropout) and the validation loss at its end (held-out split, fixed timesteps and noise). "
                  "A gap that grows over epochs means overfitting.", "",
                  "| epoch | step | train loss | val loss | val loss (EMA) | gap (val - train) |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in gap:
            lines.append(f"| {_f(r['epoch'], 3)} | {r['step']} | {_f(r['train_loss'])} | {_f(r['val_loss'])} | "
                         f"{_f(r['val_loss_ema'])} | {_f(r['gap'], 3)} |")
        lines.append("")
    else:
        lines += ["No validation loss logged (no validation split, or the run has not finished an epoch).", ""]
    if s["eval"]:
        lines += ["## In-training evaluation (EMA weights, domain-classifier features)", "",
                  f"Real-vs-real floor at the same N: FD {_f(s['eval_fd_floor'])}.", "",
                  "| step | FD | KID x 1e3 |", "|---:|---:|---:|"]
        lines += [f"| {r['step']} | {_f(r['fd'])} | {_f(None if r['kid'] is None else r['kid'] * 1e3, 3)} |"
                  for r in s["eval"]]
        lines.append("")
    return "\n".join(lines)
