"""Write an evaluation: report.json (every number), report.md (tables + what they mean),
samples.png, per_class_fd.png and cfg_sweep.png (Pillow charts, `difforge.io.charts`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

ATTRIBUTE_COLUMNS = ("garment", "colour", "size", "position", "garment+colour", "all")  # prompt-set tables
ROWS = [  # (key, label, scale): the metrics table, in order
    ("fd", "FD (lower is better)", 1.0),
    ("kid", "KID x 1e3 (lower is better)", 1e3),
    ("precision", "precision (higher is better)", 1.0),
    ("recall", "recall (higher is better)", 1.0),
    ("classifier_score", "classifier score (higher is better, <= classes)", 1.0),
    ("inception_score", "Inception Score (higher is better)", 1.0),
    ("conditional_accuracy", "conditional accuracy (higher is better)", 1.0),
]


def _f(v, scale: float = 1.0, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * scale:.{digits}g}"


def _metrics_table(model: dict, floor: dict) -> list[str]:
    lines = ["| metric | model | real-vs-real floor |", "|---|---:|---:|"]
    for key, label, scale in ROWS:
        if key not in model and key not in floor:
            continue
        m, f = _f(model.get(key), scale), _f(floor.get(key), scale)
        if key == "kid":
            m += f" ± {_f(model.get('kid_std'), scale, 2)}"
            f += f" ± {_f(floor.get('kid_std'), scale, 2)}"
        lines.append(f"| {label} | {m} | {f} |")
    return lines


def _sample_grid(images: torch.Tensor, labels: torch.Tensor | None, path: Path) -> Path:
    """Up to 10 images per class, one row per class (or the first 100)."""
    from difforge.io import save_grid

    nrow = 10
    if labels is not None:
        rows = [images[torch.nonzero(labels == c).flatten()[:10]] for c in labels.unique()]
        nrow = max(len(r) for r in rows)
        blank = torch.full((1, *images.shape[1:]), 255, dtype=torch.uint8)  # pads short rows (the grid's colour)
        images = torch.cat([torch.cat([r, blank.expand(nrow - len(r), -1, -1, -1)]) for r in rows])
    else:
        images = images[:100]
    return save_grid(images, path, nrow=nrow, scale=min(4, max(1, 64 // images.shape[-1])))


def _markdown(r: dict) -> str:
    n, d = r["n"], r["data"]
    src = f"`{r['model']}`" if r["model"] else f"the samples in `{r['npz']}`"
    lines = [f"# Evaluation of {src}", ""]
    s = r["sampling"]
    how = (f" ({s['sampler']}, {s['steps']} steps"
           + (f", guidance {s['cfg']:g}" if s["cfg"] is not None else "")
           + (f" at sigma in [{s['cfg_interval'][0]:g}, {s['cfg_interval'][1]:g}]"
              if isinstance(s.get("cfg_interval"), list) else "")
           + f", seed {s['seed']}, {'EMA' if s['ema'] else 'raw'} weights, {s['seconds']:g} s)") if s else ""
    lines.append(f"**N = {n}** generated images{how}, against the real **{d['reference_split']}** split of "
                 f"{d['dataset']} ({d['reference_count']} images).")
    if s and s.get("text"):
        lines.append("A text-to-image model: image i is drawn from the caption of a training image picked at random "
                     "(the prompts follow the captions' proportions); the floor is those very training images.")
    c = r["classifier"]
    if c:
        lines.append(f"Domain classifier: **{c['test_accuracy']:.2%} accuracy** on the {c['eval_images']} "
                     f"{c['eval_split']} images, {c['feature_dim']}-d penultimate features.")
    lines.append(f"Inception-v3: {r['inception']['status']}.")
    which = "whose captions were the prompts," if s and s.get("text") else "(same class counts)"
    lines += ["", f"FD is biased upwards at small N: compare every number with the **real-vs-real floor**, "
                  f"{r['floor_n']} real training images {which} scored exactly like the generated ones. "
                  f"Only the gap to the floor measures the model.", ""]
    for space, title in (("classifier", "Classifier features"), ("inception", "Inception-v3 features (FID)")):
        if space in r["metrics"]:
            lines += [f"## {title}", "", *_metrics_table(r["metrics"][space], r["floor"][space]), ""]
    if r["per_class"]:
        lines += ["## Per class (classifier features)", "", "| class | n | FD | floor FD | accuracy |",
                  "|---|---:|---:|---:|---:|"]
        for row in r["per_class"]:
            lines.append(f"| {row['class']} {row['name']} | {row['n']} | {_f(row['fd'])} | {_f(row['floor_fd'])} | "
                         f"{_f(row['accuracy'], 1.0, 3)} |")
        lines += ["", "![FD per class, model and floor](per_class_fd.png)", ""]
    lines += _prompt_section(r.get("prompt_following"))
    lines += _clip_section(r.get("clip_score"), r.get("prompt_following"))
    if r["cfg_sweep"]:
        extra = "inception_fd" in r["cfg_sweep"][0]
        lines += ["## Guidance sweep", "",
                  "| cfg | FD | KID x 1e3 | precision | recall | accuracy | classifier score |"
                  + (" Inception FD |" if extra else ""),
                  "|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if extra else "")]
        for row in r["cfg_sweep"]:
            lines.append(f"| {row['cfg']:g} | {_f(row['fd'])} | {_f(row['kid'], 1e3)} | "
                         f"{_f(row['precision'], 1.0, 3)} | "
                         f"{_f(row['recall'], 1.0, 3)} | {_f(row.get('conditional_accuracy'), 1.0, 3)} | "
                         f"{_f(row['classifier_score'])} |" + (f" {_f(row['inception_fd'])} |" if extra else ""))
        lines += _prompt_sweep_table(r["cfg_sweep"], r.get("prompt_following") or {})
        lines += ["", "![metrics against the guidance scale](cfg_sweep.png)", ""]
    lines += _likelihood_section(r.get("likelihood")) + _memorization_section(r.get("memorization"))
    p = r["protocol"]
    lines += ["## Samples", "", "![generated samples](samples.png)", "", "## Protocol", "",
              f"- FD: Frechet distance between Gaussians fitted to the features; reference: all {p['fd_reference']} "
              f"real images.",
              f"- KID: unbiased MMD^2, cubic polynomial kernel, {p['kid_subsets']} random subsets of "
              f"{p['kid_subset_size']}; mean ± std over subsets.",
              f"- Precision/recall: Kynkaanniemi et al. 2019, k = {p['k']} nearest-neighbour radii, against "
              f"{p['precision_recall_reference']} random reference images.",
              "- Classifier score: exp E[KL(p(y|x) || p(y))] with the domain classifier (the Inception Score's "
              "formula); at most the number of classes.",
              "- The floor uses training images, which the domain classifier was trained on: its accuracy and "
              "score there are slightly optimistic.",
              f"- Took {r['seconds']:g} s.", ""]
    return "\n".join(lines)


def _accuracy_row(label: str, n, acc: dict) -> str:
    return f"| {label} | {n} | " + " | ".join(_f(acc.get(k), 1.0, 3) for k in ATTRIBUTE_COLUMNS) + " |"


def _attribute_header(first: str) -> list[str]:
    return [f"| {first} | n | " + " | ".join(ATTRIBUTE_COLUMNS) + " |",
            "|---|---:|" + "---:|" * len(ATTRIBUTE_COLUMNS)]


def _prompt_section(pf: dict | None) -> list[str]:
    """A text model's prompt sets: the share of images with each attribute right."""
    if not pf:
        return []
    if "status" in pf:
        return ["## Prompt following", "", f"Prompt sets: {pf['status']}.", ""]
    g = pf["garment_classifier"]
    lines = ["## Prompt following (fashion-colour prompt sets)", "",
             f"One image per prompt at guidance {pf['cfg']:g}; garment, colour, size and position measured from its "
             "pixels and compared with what the prompt says. **garment+colour**: both right (the pair the prompt's "
             "key words name); **all**: every attribute right in the same image. Garment: a classifier of the "
             f"image's luminance {g['input']} (blind to colour), **{g['test_accuracy']:.2%} accuracy on the "
             f"{g['eval_images']} real {g['eval_split']} images**. The first row is the same measurement on real "
             "images: the ceiling.", "", *_attribute_header("prompts")]
    c = pf.get("ceiling")
    if c:
        lines.append(_accuracy_row(f"real {c['split']} images (ceiling)", c["n"], c["accuracy"]))
    for name, row in pf["sets"].items():
        lines.append(_accuracy_row(f"{name} ({row['prompts']} of {row['of']})", row["prompts"], row["accuracy"]))
    return lines + ["", "Seen: training phrasing of garment x colour pairs in the training data; held-out pairs: "
                        "pairs never seen together in training; paraphrases: phrasings and synonyms never used in "
                        "training.", ""]


def _clip_section(cs: dict | None, pf: dict | None) -> list[str]:
    """The domain CLIP score of the samples (and of each prompt set) next to real images'."""
    if not cs:
        return []
    lines = ["## CLIP score", "",
             f"100 * max(cos, 0) of the image and prompt embeddings of the domain CLIP `{cs['clip']}` "
             f"({cs['text_encoder']} text encoder), averaged; comparable only under the same CLIP model.", "",
             "| images | CLIP score | real images' |", "|---|---:|---:|",
             f"| {cs['n']} samples from training captions | {_f(cs['samples'])} | {_f(cs['floor'])} (floor: "
             "the images of those captions) |"]
    if pf and "sets" in pf:
        ceiling = (pf.get("ceiling") or {}).get("clip_score")
        for name, row in pf["sets"].items():
            if "clip_score" in row:
                lines.append(f"| {name} ({row['prompts']}) | {_f(row['clip_score'])} | {_f(ceiling)} (ceiling: "
                             "real reference images with their captions) |")
    return lines + [""]


def _prompt_sweep_table(sweep: list[dict], pf: dict) -> list[str]:
    if "prompt_sets" not in sweep[0]:
        return []
    lines = ["", "Prompt sets at each guidance scale:", "", *_attribute_header("cfg, prompt set")]
    for row in sweep:
        lines += [_accuracy_row(f"{row['cfg']:g}, {name}", pf.get("sets", {}).get(name, {}).get("prompts", ""), acc)
                  for name, acc in row["prompt_sets"].items()]
    return lines


def _likelihood_section(lk: dict | None) -> list[str]:
    if not lk:
        return []
    v = lk.get("vlb")  # only DDPM eps models have the variational bound
    lines = ["## Likelihood (bits/dim, lower is better)", "",
             f"On the first **{lk['n']} {lk['split']} images**, {lk['conditioning']}. Each number is an upper bound "
             f"on -log2 P(image) per dimension ({lk['dims']} dimensions; per native pixel: {lk['dims_native']}).", "",
             "| estimator | bits/dim | ± sem | bits/dim (native pixels) | seconds |", "|---|---:|---:|---:|---:|"]
    ts = "" if v is None else "every timestep" if v["timesteps"] == "all" else f"{v['timesteps']} stratified timesteps"
    for var, label in (("large", "beta_t"), ("small", "beta~_t")) if v is not None else ():
        e = v[var]
        lines.append(f"| VLB (Ho et al. 2020, Eq. 5), reverse variance {label}, {ts} | {_f(e['bpd'])} | "
                     f"{_f(e['bpd_sem'], 1.0, 2)} | {_f(e['bpd_native'])} | {v['seconds']:g} |")
    if lk.get("ode"):
        o = lk["ode"]
        lines.append(f"| probability-flow ODE, dequantized ({o['solver']}, {o['trace']}) | {_f(o['bpd'])} | "
                     f"{_f(o['bpd_sem'], 1.0, 2)} | {_f(o['bpd_native'])} | {o['seconds']:g} |")
    return lines + [""]


def _memorization_section(mem: dict | None) -> list[str]:
    if not mem:
        return []
    pix = mem["pixel"]
    lines = ["## Memorization audit", "",
             f"Distance from each of the {pix['n_generated']} generated images to its nearest training image, "
             f"against the same for {pix['n_heldout']} held-out real images "
             f"({mem.get('heldout_split', 'held-out')} split, never trained on). "
             f"A near-copy is closer than the {pix['quantile']:.0%} quantile of the held-out distances, "
             f"so about {pix['quantile']:.0%} of fresh real images are 'near-copies' too: "
             "only an excess means copying.", "",
             "| space | median distance, generated | median, held-out | near-copy threshold | near-copies | "
             "held-out below it | ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    for space in ("pixel", "classifier"):
        if space in mem:
            m = mem[space]
            lines.append(f"| {space} ({m['distance']}) | {_f(m['median_generated'])} | {_f(m['median_heldout'])} | "
                         f"{_f(m['threshold'])} | {m['near_copy_fraction']:.2%} | {m['heldout_fraction']:.2%} | "
                         f"{_f(m['near_copy_ratio'], 1.0, 3)} |")
    gap = mem.get("loss_gap")
    if gap:
        last = gap[-1]
        lines += ["", "Train/validation loss over training "
                      "(from the run's metrics.jsonl; `difforge report` plots it): "
                      f"at step {last['step']} train {_f(last['train_loss'])}, validation {_f(last['val_loss'])}, "
                      f"gap {_f(last['gap'], 1.0, 3)}; per epoch: "
                      + ", ".join(_f(r["gap"], 1.0, 3) for r in gap)
                      + ". A gap growing over epochs means overfitting."]
    if mem.get("pairs_png"):
        lines += ["", "Closest generated images (left of each pair) and their nearest training images (pixel space):",
                  "", f"![closest generated/training pairs]({mem['pairs_png']})"]
    return lines + [""]


def summary_lines(r: dict) -> list[str]:
    """The report in a few lines for the terminal: FD, KID, precision and recall (and
    conditional accuracy) per feature space next to their floors, the Inception status
    when it was not computed, bits/dim and the memorization audit when measured."""
    lines = []
    for space, m in r["metrics"].items():
        f = r["floor"][space]
        lines.append(f"{space}: FD {m['fd']:.4g} (floor {f['fd']:.4g}), KID {m['kid']:.3g} (floor {f['kid']:.3g}), "
                     f"precision {m['precision']:.3f}, recall {m['recall']:.3f}"
                     + (f", accuracy {m['conditional_accuracy']:.3f}" if "conditional_accuracy" in m else ""))
    if r["inception"]["status"] != "computed":
        lines.append(f"inception: {r['inception']['status']}")
    pf = r.get("prompt_following")
    if pf and "status" in pf:
        lines.append(f"prompt sets: {pf['status']}")
    elif pf:
        c, g = pf.get("ceiling"), pf["garment_classifier"]
        lines.append(f"prompt following at guidance {pf['cfg']:g} (garment classifier: {g['test_accuracy']:.2%} on "
                     f"{g['eval_images']} real {g['eval_split']} images):")
        rows = ([(f"real {c['split']} (ceiling)", c["accuracy"])] if c else []) + [
            (name, row["accuracy"]) for name, row in pf["sets"].items()]
        width = max(len(name) for name, _ in rows)
        for name, acc in rows:
            parts = [f"{k} {acc[k]:.3f}" for k in ATTRIBUTE_COLUMNS if k in acc]
            lines.append(f"  {name:<{width}}  " + ", ".join(parts))
    cs = r.get("clip_score")
    if cs:
        sets = [(name, row["clip_score"]) for name, row in ((pf or {}).get("sets") or {}).items()
                if "clip_score" in row]
        ceiling = ((pf or {}).get("ceiling") or {}).get("clip_score")
        lines.append(f"CLIP score {cs['samples']:.2f} (floor {cs['floor']:.2f})"
                     + "".join(f"; {name} {v:.2f}" for name, v in sets)
                     + (f" (real ceiling {ceiling:.2f})" if ceiling is not None else ""))
    lk = r.get("likelihood")
    if lk:
        parts = ([f"VLB {lk['vlb']['large']['bpd']:.4g}"] if lk.get("vlb") else []) + (
            [f"ODE {lk['ode']['bpd']:.4g}"] if lk.get("ode") else [])
        lines.append(f"bits/dim on {lk['n']} {lk['split']} images: {', '.join(parts)}")
    if r.get("memorization"):
        m = r["memorization"]["pixel"]
        lines.append(f"memorization (pixels): {m['near_copy_fraction']:.2%} near-copies (held-out real: "
                     f"{m['heldout_fraction']:.2%}); median nearest-training distance {m['median_generated']:.4g} "
                     f"(held-out {m['median_heldout']:.4g})")
    return lines


def write_report(report: dict, out: Path, images: torch.Tensor, labels: torch.Tensor | None) -> Path:
    """Write report.json, report.md and the PNGs into `out`; returns the report.md path."""
    from difforge.io.charts import bar_chart, line_panels

    out.mkdir(parents=True, exist_ok=True)
    _sample_grid(images, labels, out / "samples.png")
    if report["per_class"]:
        rows = report["per_class"]
        bar_chart([r["name"] for r in rows],
                  {"model": [r["fd"] for r in rows], "real floor": [r["floor_fd"] for r in rows]},
                  out / "per_class_fd.png", title=f"FD per class (classifier features, N = {report['n']})",
                  ylabel="FD")
    if report["cfg_sweep"]:
        rows, floor = report["cfg_sweep"], report["floor"].get("classifier", {})
        panels = [(title, {"model": [r[key] * scale for r in rows],
                           "real floor": [floor[key] * scale] if key in floor else []})
                  for key, title, scale in (("fd", "FD", 1.0), ("kid", "KID x 1e3", 1e3),
                                            ("precision", "precision", 1.0), ("recall", "recall", 1.0),
                                            ("conditional_accuracy", "accuracy", 1.0)) if key in rows[0]]
        if "prompt_sets" in rows[0]:  # a text model: its prompt sets' accuracies
            panels += [(f"{key} right", {name: [r["prompt_sets"][name].get(key) for r in rows]
                                         for name in rows[0]["prompt_sets"]})
                       for key in ("garment+colour", "all")]
        line_panels([r["cfg"] for r in rows], panels, out / "cfg_sweep.png", xlabel="guidance scale")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    path = out / "report.md"
    path.write_text(_markdown(report))
    return path
