"""How good is a video model: sample N clips, compare them with the real test clips, and put
every number next to its real-vs-real floor (N real training clips of the same classes,
scored exactly like the generated ones). docs/video.md describes the protocol; in short:

- per-frame FD (and precision/recall): every frame's garment window (`video_metrics.
  garment_crops`: the 16 x 16 window holding the most content, resized to 28 x 28) in the
  feature space of the Fashion-MNIST domain classifier (`eval.classifier`), all frames of
  the generated clips against all frames of the test clips;
- identity consistency: the same classifier's class of every frame; the share of clips
  whose class never changes and the mean share of a clip's frames in its modal class;
- motion: the intensity-weighted centroid of every frame (`video_metrics.centroids`); mean
  speed, mean |acceleration|, the share of static clips, and the 1-Wasserstein distances of
  the speeds and |accelerations| to the test clips'; the true trajectories' statistics and a
  check of the tracker against them;
- video FD: a small 3-D conv classifier's penultimate features (`eval.video_classifier`);
- with `given` ("first:4", "every:2", ...): clip i of the first N test clips with those
  frames given (and its class), PSNR and SSIM of the frames made against the true ones,
  next to the baseline of copying the nearest given frame.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from difforge.config import DataConfig
from difforge.eval import metrics as M
from difforge.eval import video_metrics as V

REPORT_FORMAT = "difforge-video-eval"
CROP_SIDE, CROP_SIZE = 16, 28  # a garment's box in a frame (data/moving.py SIDE); the image classifier's input


@dataclass(frozen=True)
class VideoEvalConfig:
    """What to sample and how."""

    n: int = 100  # generated clips (and floor clips); a clip costs as many network passes as 16 images
    given: tuple[str, ...] = ()  # frame-conditioned tasks: parse_given specs ("first:4", "every:2")
    sampler: str = "ddim"
    steps: int | None = None
    grid: str | None = None
    cfg: float | None = None
    seed: int = 0  # clip i uses seed + i; the floor draw uses `seed` too
    ema: bool = True
    batch_size: int = 16
    k: int = 3  # neighbours for precision/recall
    per_frame: bool = False  # every frame sampled on its own (`Pipeline.sample_video(per_frame=True)`)


def is_video_report_dir(path: Path) -> bool:
    try:
        return json.loads((Path(path) / "report.json").read_text()).get("format") == REPORT_FORMAT
    except (OSError, ValueError):
        return False


def evaluate_video(model_dir: str | Path, out: str | Path, cfg: VideoEvalConfig = VideoEvalConfig(), *,
                   classifier: str | Path | None = None, video_classifier: str | Path | None = None,
                   device: torch.device | str = "cpu", progress: bool = False,
                   log: Callable[[str], None] | None = None, overwrite: bool = False) -> dict:
    """Score a video model; write out/report.json, report.md, samples.png and, per given
    task, given-<spec>.png (true clips and the model's, row by row). Returns the report."""
    from difforge.data import load_dataset
    from difforge.eval.classifier import load_or_train_classifier
    from difforge.eval.evaluate import _matched_indices, class_balanced_labels, data_config_for
    from difforge.eval.video_classifier import load_or_train_video_classifier
    from difforge.hub import resolve_model_dir
    from difforge.io.outputs import check_output_dir
    from difforge.models.frames import parse_given
    from difforge.pipeline import load_pipeline

    t0 = time.perf_counter()
    out = check_output_dir(out, holds="video evaluation report", is_ours=is_video_report_dir, overwrite=overwrite)
    if cfg.n < 2:
        raise ValueError(f"need at least 2 clips to compare distributions, got --n {cfg.n}")
    pipe = load_pipeline(model_dir, ema=cfg.ema, device=device)
    if not pipe.takes_clips:
        raise ValueError(f"{model_dir} is an image model: use `difforge evaluate`")
    t = pipe.card.frames
    if cfg.per_frame and cfg.given:
        raise ValueError("--per-frame makes every frame on its own: it scores no --given task")
    if cfg.per_frame:
        pipe.check_per_frame()
    if cfg.given and getattr(pipe.card.conditioning, "kind", None) != "video-frames":
        raise ValueError(f"--given: {model_dir} is not conditioned on observed frames")
    masks = {spec: parse_given(spec, t) for spec in cfg.given}
    data = data_config_for(Path(resolve_model_dir(model_dir)), pipe.card)
    bundle = load_dataset(data)
    ref = bundle.test if bundle.test is not None else bundle.val
    if ref is None or len(ref) < 2 or not hasattr(ref, "frames"):
        raise ValueError(f"the model's data {data.dataset} has no held-out clips to compare with")
    if masks and cfg.n > len(ref):
        raise ValueError(f"--given uses the first N held-out clips: --n {cfg.n} is more than the {len(ref)} there")
    frame_data = DataConfig(dataset="fashion-mnist", path=data.path)
    clf = load_or_train_classifier(frame_data, classifier, device=device, log=log, progress=progress)
    if (clf.meta["channels"], clf.meta["image_size"]) != (ref.channels, CROP_SIZE):
        raise ValueError(f"the frame classifier takes {clf.meta['channels']}x{clf.meta['image_size']} images; "
                         f"garment crops are {ref.channels}x{CROP_SIZE}")
    vclf = load_or_train_video_classifier(data, video_classifier, bundle=bundle, device=device, log=log)
    vclf.check(ref.images[:1], "the data's clips")

    t_sample = time.perf_counter()
    clips = frames = motion = video_fd = None
    crop_accuracy = _crop_accuracy(clf, ref)
    if not pipe.residual_video:  # an RVD model only continues given frames: its --given tasks are scored
        labels = class_balanced_labels(cfg.n, pipe.num_classes) if pipe.num_classes else None
        clips, _ = _generate(pipe, cfg, cfg.n, labels, progress, "clips")
        rng = np.random.default_rng(cfg.seed)
        floor = bundle.train.subset(_matched_indices(bundle.train.labels, len(bundle.train), labels, cfg.n, rng))
        sets = {"generated": clips, "floor": floor.images, "reference": ref.images}
        if log:
            log("scoring frames, identity and motion")
        frames = _frame_scores(clf, sets, labels, floor.labels, cfg, rng, ref)
        motion = _motion_scores(sets, ref)
        video_fd = _video_fd(vclf, sets, labels, floor.labels)
    elif not masks:
        raise ValueError(f"{model_dir} is an RVD model, which continues given frames: score it with --given first:K "
                         f"(K >= {pipe.model.core.context})")
    sample_seconds = time.perf_counter() - t_sample
    tasks = {}
    for spec, mask in masks.items():
        if log:
            log(f"given {spec}: the first {cfg.n} held-out clips")
        tasks[spec] = _given_task(pipe, cfg, ref.subset(np.arange(cfg.n)), mask, spec, out, progress, clf)

    report = {
        "format": REPORT_FORMAT, "version": 1, "model": str(model_dir), "n": cfg.n, "frames": t,
        "data": {**asdict(data), "reference_split": "test" if bundle.test is not None else "val",
                 "reference_clips": len(ref), "train_clips": len(bundle.train), "class_names": bundle.class_names},
        "sampling": {"sampler": cfg.sampler, "steps": len(pipe.sigmas(cfg.sampler, cfg.steps, cfg.grid)) - 1,
                     "grid": cfg.grid, "cfg": _scale(pipe, cfg), "seed": cfg.seed, "ema": cfg.ema,
                     "conditional": bool(pipe.num_classes), "per_frame": cfg.per_frame,
                     "seconds": round(sample_seconds, 1)},
        "frame_classifier": {**{k: clf.meta.get(k) for k in ("dataset", "test_accuracy", "feature_dim")},
                             "dir": None if classifier is None else str(classifier),
                             "crop": f"{CROP_SIDE}x{CROP_SIDE} garment window resized to {CROP_SIZE}x{CROP_SIZE}",
                             "crop_accuracy": crop_accuracy},
        "video_classifier": {**{k: vclf.meta.get(k) for k in ("dataset", "test_accuracy", "first_step_accuracy",
                                                              "feature_dim", "steps", "train_seconds")},
                             "dir": None if video_classifier is None else str(video_classifier)},
        "frame_fd": frames and frames["fd"], "identity": frames and frames["identity"], "motion": motion,
        "video_fd": video_fd,
        "given": tasks, "seconds": None,
    }
    report["seconds"] = round(time.perf_counter() - t0, 1)
    _write(report, Path(out), clips)
    return report


def _scale(pipe, cfg: VideoEvalConfig) -> float:
    """The guidance scale sampling uses (`Pipeline.video_denoiser`'s default when not given)."""
    from difforge.defaults import DEFAULT_CFG

    if cfg.cfg is not None:
        return float(cfg.cfg)
    return DEFAULT_CFG if pipe.num_classes and not pipe.residual_video else 1.0


def _generate(pipe, cfg: VideoEvalConfig, n: int, labels, progress: bool, what: str, **given):
    from tqdm.auto import tqdm

    total = (len(pipe.sigmas(cfg.sampler, cfg.steps, cfg.grid)) - 1) * -(-n // cfg.batch_size)
    with tqdm(total=total, desc=f"sample {n} {what}", unit="step", disable=not progress, dynamic_ncols=True) as bar:
        per_frame = {} if given else {"per_frame": cfg.per_frame}
        return pipe.generate_video(n, labels, cfg=cfg.cfg, sampler=cfg.sampler, steps=cfg.steps, grid=cfg.grid,
                                   seed=cfg.seed, batch_size=cfg.batch_size, callback=lambda d: bar.update(1),
                                   **per_frame, **given)


def _all_frames(clips: torch.Tensor) -> torch.Tensor:
    n, c, t, h, w = clips.shape
    return clips.transpose(1, 2).reshape(n * t, c, h, w)


def frame_features(clf, clips: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The image classifier's features and logits of every frame's garment crop, in clip order (N T rows)."""
    return clf.features_and_logits(V.garment_crops(_all_frames(clips), CROP_SIDE, CROP_SIZE))


def _frame_scores(clf, sets: dict, labels, floor_labels, cfg: VideoEvalConfig, rng, ref) -> dict:
    t = sets["reference"].shape[2]
    feats = {name: frame_features(clf, clips) for name, clips in sets.items()}
    ref_f, ref_z = feats["reference"]
    n_ref = len(sets["reference"])
    sub = np.sort(rng.choice(n_ref, min(cfg.n, n_ref), replace=False))  # precision/recall: N reference clips
    ref_sub = ref_f.reshape(n_ref, t, -1)[sub].reshape(-1, ref_f.shape[1])
    fd, identity = {}, {}
    k = len(clf.class_names)
    for name in ("generated", "floor"):
        f, z = feats[name]
        pr = M.precision_recall(ref_sub, f, k=cfg.k)
        fd[name] = {"fd": M.frechet_distance_features(ref_f, f), "precision": pr.precision, "recall": pr.recall}
    fd["reference_frames"], fd["frames"] = len(ref_f), len(feats["generated"][0])
    for name, (_, z) in feats.items():
        classes = V.frame_classes(z, len(sets[name]), t)
        identity[name] = V.identity_consistency(classes, k)
        asked = {"generated": labels, "floor": floor_labels}.get(name)
        if asked is not None:
            identity[name]["class_match"] = float((classes == asked.numpy()[:, None]).mean())
    return {"fd": fd, "identity": identity}


def _crop_accuracy(clf, ref) -> float | None:
    """The share of the frames of one-garment test clips whose garment window the classifier
    puts in their clip's class."""
    one = _one_garment(ref)
    if ref.labels is None or not one.any():
        return None
    clips = ref.images[torch.as_tensor(one)]
    classes = V.frame_classes(frame_features(clf, clips)[1], len(clips), clips.shape[2])
    return float((classes == ref.labels.numpy()[one][:, None]).mean())


def _one_garment(ref) -> np.ndarray:
    """(N,) bool: the clips with one garment (all of them when the data does not say)."""
    true = getattr(ref, "trajectories", None)
    if true is None or true.shape[1] < 2:
        return np.ones(len(ref), bool)
    return torch.isnan(true[:, 1]).flatten(1).all(1).numpy()


def _motion_scores(sets: dict, ref) -> dict:
    """Tracker statistics of every set, distances to the reference's, and the true trajectories'."""
    tracks = {name: V.centroids(clips) for name, clips in sets.items()}
    out = {name: V.motion_stats(tr) for name, tr in tracks.items()}
    for name in ("generated", "floor"):
        out[name].update(V.motion_distances(tracks[name], tracks["reference"]))
    true = getattr(ref, "trajectories", None)
    if true is not None:
        first = true[:, 0].numpy().astype(np.float64)  # the first garment's box corner
        out["true_trajectories"] = V.motion_stats(first)
        one = _one_garment(ref)
        if one.any():  # the tracker's velocities against the true ones, on one-garment clips
            err = np.abs(np.diff(tracks["reference"][one], axis=1) - np.diff(first[one], axis=1))
            out["tracker_check"] = {"clips": int(one.sum()), "max_velocity_error": float(err.max()),
                                    "mean_velocity_error": float(err.mean())}
    return out


def _video_fd(vclf, sets: dict, labels, floor_labels) -> dict:
    feats = {name: vclf.features_and_logits(clips) for name, clips in sets.items()}
    ref_f = feats["reference"][0]
    out: dict = {"reference_clips": len(ref_f)}
    for name, asked in (("generated", labels), ("floor", floor_labels)):
        f, z = feats[name]
        out[name] = {"fd": M.frechet_distance_features(ref_f, f)}
        if asked is not None:
            out[name]["class_accuracy"] = M.conditional_accuracy(z, asked.numpy())
    return out


def _nearest_given(truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Clips whose every frame is the nearest given frame (the earlier on a tie): the baseline."""
    idx = mask.nonzero().flatten()
    pos = torch.arange(len(mask))
    nearest = idx[(pos[:, None] - idx[None, :]).abs().argmin(1)]
    return truth[:, :, nearest]


def _given_task(pipe, cfg: VideoEvalConfig, truth_set, mask: torch.Tensor, spec: str, out: Path,
                progress: bool, clf) -> dict:
    """Of the frames made from `mask`'s frames of the true clips, against the true frames:
    PSNR and SSIM (per frame index too), and, as pixel errors flatter a blurry or static
    guess, the per-frame FD of the made frames against the true ones, the share of made
    frames in the clip's class (the garment kept), and the speed and |acceleration|
    distances of the whole clips' tracks to the true clips' (motion kept)."""
    from difforge.io.video import save_frames_grid

    truth = truth_set.images
    labels = truth_set.labels if pipe.num_classes and truth_set.labels is not None else None
    given = truth.float() / 127.5 - 1
    if given.shape[1] != pipe.card.channels:
        given = given.expand(-1, pipe.card.channels, -1, -1, -1)
    made, _ = _generate(pipe, cfg, len(truth), labels, progress, f"clips given {spec}", given=given, mask=mask)
    scores = {"mask": mask.nonzero().flatten().tolist(), "clips": len(truth)}
    true_feats, true_logits = frame_features(clf, truth[:, :, ~mask])
    true_tracks = V.centroids(truth)
    if truth_set.labels is not None:  # the classifier on the true frames: the ceiling of class_match
        classes = V.frame_classes(true_logits, len(truth), int((~mask).sum()))
        scores["true_class_match"] = float((classes == truth_set.labels.numpy()[:, None]).mean())
    for name, clips in (("model", made), ("nearest_given_frame", _nearest_given(truth, mask))):
        latent = ~mask
        a, b = clips[:, :, latent], truth[:, :, latent]  # (N, C, L, H, W)
        fa, fb = _all_frames(a), _all_frames(b)
        p = V.psnr(fa, fb).reshape(len(truth), -1)
        s = V.ssim(fa, fb).reshape(len(truth), -1)
        by_frame_p, by_frame_s = [None] * len(mask), [None] * len(mask)
        for j, f in enumerate(latent.nonzero().flatten().tolist()):
            by_frame_p[f], by_frame_s[f] = _finite(p[:, j].mean()), float(s[:, j].mean())
        scores[name] = {"psnr": _finite(p.mean()), "ssim": float(s.mean()), "psnr_by_frame": by_frame_p,
                        "ssim_by_frame": by_frame_s}
        feats, logits = frame_features(clf, a)
        scores[name]["frame_fd"] = M.frechet_distance_features(true_feats, feats)
        if truth_set.labels is not None:
            classes = V.frame_classes(logits, len(truth), int(latent.sum()))
            scores[name]["class_match"] = float((classes == truth_set.labels.numpy()[:, None]).mean())
        scores[name].update(V.motion_distances(V.centroids(clips), true_tracks))
    rows = torch.stack([truth[:5], made[:5]], dim=1).flatten(0, 1)  # true clip, then the model's, per clip
    save_frames_grid(rows, out / f"given-{_safe(spec)}.png", scale=2 if truth.shape[-1] <= 32 else 1)
    return scores


def _finite(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _safe(spec: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in spec)


# ---------------------------------------------------------------- the report


def _f(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def video_markdown(r: dict) -> str:
    """report.md: the tables of report.json with what they mean."""
    s, d = r["sampling"], r["data"]
    fc, vc = r["frame_classifier"], r["video_classifier"]
    free = r["frame_fd"] is not None  # None: an RVD model, scored on its given tasks only
    lines = [f"# Video evaluation of `{r['model']}`", "",
             f"**N = {r['n']}** {'generated' if free else 'predicted'} clips of {r['frames']} frames "
             f"({s['sampler']}, {s['steps']} steps"
             + (f", guidance {s['cfg']:g}" if s["cfg"] != 1 else ", no guidance")
             + (", every frame made on its own: --per-frame" if s.get("per_frame") else "")
             + f", seed {s['seed']}, {'EMA' if s['ema'] else 'raw'} weights, {s['seconds']:g} s), against the "
             f"{d['reference_clips']} real **{d['reference_split']}** clips of {d['dataset']}. The **floor** is "
             f"{r['n']} real training clips of the same classes, scored exactly like the generated ones: only "
             "the gap to it says something about the model.", "",
             f"Frame classifier: the {fc['dataset']} domain classifier ({_pct(fc['test_accuracy'])} on its test "
             f"images), shown each frame's {fc['crop']}; on the frames of one-garment real clips it names the "
             f"clip's garment {_pct(fc['crop_accuracy'])} of the time. Video classifier: "
             f"{_pct(vc['test_accuracy'])} class accuracy on the held-out clips"
             + (f", {_pct(vc['first_step_accuracy'])} first-step accuracy" if vc.get("first_step_accuracy") else "")
             + f", {vc['feature_dim']}-d features.", ""]
    if free:
        lines += _free_markdown(r)
    else:
        lines += ["An RVD model continues given frames: only its prediction tasks are scored.", ""]
    if r["given"]:
        lines += ["## Prediction and interpolation", "",
                  "The first N test clips with the frames named given (and their class); every frame the model "
                  "made against the true frame: PSNR (dB) and SSIM, averaged; the per-frame FD of the made frames "
                  "against the true ones; the share of made frames whose garment the classifier puts in the "
                  "clip's class (the true frames' share in brackets); the speed and |acceleration| W1 of the "
                  "clips' tracks to the true clips'. The baseline copies the nearest given frame: good pixels "
                  "and garments, no motion.", "",
                  "| given | | PSNR | SSIM | frame FD | class kept | speed W1 | acceleration W1 |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for spec, v in r["given"].items():
            for name in ("model", "nearest_given_frame"):
                m = v[name]
                kept = _f(m.get("class_match")) + (f" ({_f(v.get('true_class_match'))})" if name == "model" else "")
                lines.append(f"| {spec} | {name.replace('_', ' ')} | {_f(m['psnr'])} | {_f(m['ssim'])} | "
                             f"{_f(m.get('frame_fd'))} | {kept} | {_f(m.get('speed_w1'))} | "
                             f"{_f(m.get('acceleration_w1'))} |")
    lines += ["", f"Took {r['seconds']:g} s. Every number is in report.json."]
    return "\n".join(lines) + "\n"


def _free_markdown(r: dict) -> list[str]:
    """The tables of freely generated clips: distributions, identity, motion."""
    lines = ["## Distributions", "", "| metric | model | real-vs-real floor |", "|---|---:|---:|"]
    ff, vf = r["frame_fd"], r["video_fd"]
    rows = [("per-frame FD (lower is better)", ff["generated"]["fd"], ff["floor"]["fd"]),
            ("per-frame precision (higher is better)", ff["generated"]["precision"], ff["floor"]["precision"]),
            ("per-frame recall (higher is better)", ff["generated"]["recall"], ff["floor"]["recall"]),
            ("video FD (lower is better)", vf["generated"]["fd"], vf["floor"]["fd"]),
            ("video classifier: class accuracy", vf["generated"].get("class_accuracy"),
             vf["floor"].get("class_accuracy"))]
    lines += [f"| {label} | {_f(a)} | {_f(b)} |" for label, a, b in rows]
    idn = r["identity"]
    lines += ["", "## Identity consistency", "",
              "The frame classifier's class of every frame: the share of clips whose class never changes, the "
              "mean share of a clip's frames in its most frequent class, and the share of frames in the class "
              "asked for (the floor: the clip's label).", "",
              "| | constant class | modal share | class asked for |", "|---|---:|---:|---:|"]
    for name in ("generated", "floor", "reference"):
        v = idn[name]
        lines.append(f"| {name} | {_f(v['constant'])} | {_f(v['modal_share'])} | {_f(v.get('class_match'))} |")
    mo = r["motion"]
    lines += ["", "## Motion", "",
              "The intensity-weighted centroid of every frame (pixels below 32 ignored), in pixels per frame: "
              "a clip that stops moving has speed 0 and counts as static (mean speed < 0.5); the "
              "Wasserstein distances compare the per-step speeds and |accelerations| with the test clips'.", "",
              "| | mean speed | mean abs acceleration | static clips | speed W1 | acceleration W1 |",
              "|---|---:|---:|---:|---:|---:|"]
    for name in ("generated", "floor", "reference", "true_trajectories"):
        if name in mo:
            v = mo[name]
            lines.append(f"| {name.replace('_', ' ')} | {_f(v['mean_speed'])} | {_f(v['mean_abs_acceleration'])} | "
                         f"{_f(v['static'])} | {_f(v.get('speed_w1'))} | {_f(v.get('acceleration_w1'))} |")
    if "tracker_check" in mo:
        tc = mo["tracker_check"]
        lines += ["", f"Tracker check: on {tc['clips']} one-garment test clips the centroid's velocity differs from "
                      f"the true one by at most {_f(tc['max_velocity_error'])} pixels per frame."]
    return lines + [""]


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def _write(report: dict, out: Path, clips: torch.Tensor) -> None:
    from difforge.io.video import save_frames_grid

    out.mkdir(parents=True, exist_ok=True)
    if clips is not None:
        save_frames_grid(clips[:10], out / "samples.png", scale=2 if clips.shape[-1] <= 32 else 1)
    (out / "report.md").write_text(video_markdown(report))
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))


def summary_lines(r: dict) -> list[str]:
    """What the command prints: one line per measure, model vs floor."""
    ff, vf, idn, mo = r["frame_fd"], r["video_fd"], r["identity"], r["motion"]
    lines = [] if ff is None else [f"per-frame FD {ff['generated']['fd']:.4g} (floor {ff['floor']['fd']:.4g}); "
             f"video FD {vf['generated']['fd']:.4g} (floor {vf['floor']['fd']:.4g})",
             f"identity: constant class in {idn['generated']['constant']:.1%} of clips "
             f"(floor {idn['floor']['constant']:.1%})",
             f"motion: mean speed {mo['generated']['mean_speed']:.3g} px/frame "
             f"(floor {mo['floor']['mean_speed']:.3g}), "
             f"static {mo['generated']['static']:.1%}, speed W1 {mo['generated']['speed_w1']:.3g} "
             f"(floor {mo['floor']['speed_w1']:.3g})"]
    for spec, v in r["given"].items():
        m, b = v["model"], v["nearest_given_frame"]
        lines.append(f"given {spec}: PSNR {_f(m['psnr'])} dB, SSIM {_f(m['ssim'])}, frame FD {_f(m['frame_fd'])}, "
                     f"class kept {_f(m.get('class_match'))}, speed W1 {_f(m['speed_w1'])} (nearest given frame: "
                     f"{_f(b['psnr'])} dB, {_f(b['ssim'])}, {_f(b['frame_fd'])}, {_f(b.get('class_match'))}, "
                     f"{_f(b['speed_w1'])})")
    return lines
