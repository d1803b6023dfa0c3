"""How good is a model, honestly: sample N images (or read them from an .npz), compare them
with the real held-out split, and put every number next to its real-vs-real floor.

Protocol (`evaluate`):
- reference set: the dataset's test split (Fashion-MNIST), else its validation split;
- generated set: N images, class-balanced for a conditional model, image i seeded seed + i;
  for a text-to-image model, one per caption of N training images drawn at random (so the
  prompts follow the captions' own proportions);
- floor: N *real* training images with the same class counts (for a text model, the very
  images whose captions were the prompts), scored exactly as the generated ones: what a
  perfect generator would get at this N (FD is biased upwards at small N, so only the gap
  to the floor means something);
- feature spaces: the domain classifier (`eval.classifier`, trained once per dataset) and,
  when weights are at hand, Inception-v3 (`eval.inception`, the standard FID protocol);
- FD uses the whole reference set; precision/recall a random reference subset of N
  (k-NN radii depend on the set size); KID random subsets of min(1000, N);
- a text model of fashion-colour also samples its three prompt sets (`eval.prompts`) and
  measures garment, colour, size and position from the pixels, next to the same
  measurement on the real reference images (the ceiling).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from difforge.config import DataConfig
from difforge.data import load_dataset
from difforge.defaults import DEFAULT_SAMPLER
from difforge.eval import metrics as M

REPORT_FORMAT = "difforge-eval"


@dataclass(frozen=True)
class EvalConfig:
    """What to sample and how to score it."""

    n: int = 1000  # generated images (and floor images)
    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None  # None: the sampler's default (difforge.pipeline.DEFAULT_STEPS)
    grid: str | None = None  # None: the sampler's default grid
    cfg: float | None = None  # guidance scale; None: the pipeline's default for conditional models
    cfg_interval: tuple[float, float] | None = None  # guided noise levels; None: the pipeline's default
    eta: float | None = None
    seed: int = 0  # image i uses seed + i; the floor and reference subsets use `seed` too
    ema: bool = True
    cfg_sweep: tuple[float, ...] = ()  # guidance scales to sample and score, N images each
    k: int = 3  # neighbours for the precision/recall radii
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    batch_size: int = 100
    bpd: int = 0  # test images to measure bits/dim on (eval/bpd.py); 0: skip
    bpd_ode: bool = False  # also the probability-flow ODE likelihood (slower)
    bpd_timesteps: int | None = 100  # VLB timesteps, stratified; None: all T - 1 (exact sum)
    memorization: bool = True  # nearest-training-neighbour audit (eval/memorization.py)
    prompts_per_set: int | None = None  # text models of fashion-colour: prompts per set; None: N (at most the set)


def class_balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """n labels, each class n // K or n // K + 1 times, sorted (one grid row per class)."""
    return (torch.arange(n) % num_classes).sort().values


def read_npz(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (N, H, W, C) uint8 under `images` (or `arr_0`), optional int `labels` (or
    `arr_1`), as written by `difforge sample --npz`; returned as (N, C, H, W)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--npz {path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable .npz ({str(e).splitlines()[0]})") from None
    key = next((k for k in ("images", "arr_0") if k in data), None)
    if key is None:
        raise ValueError(f"{path}: no 'images' (or 'arr_0') array; found {sorted(data.files)}")
    x = data[key]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: images must be uint8 (N, H, W, C) with C = 1 or 3, got {x.dtype} {x.shape}")
    labels = None
    lkey = next((k for k in ("labels", "arr_1") if k in data), None)
    if lkey is not None:
        y = data[lkey]
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{path}: labels must be integers of shape ({len(x)},), got {y.dtype} {y.shape}")
        labels = torch.from_numpy(y.astype(np.int64))
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), labels


def data_config_for(model_dir: Path, card) -> DataConfig:
    """The data a model was trained on: the run's config.yaml, else the model's config.json."""
    from difforge.config import load_config

    if (model_dir / "config.yaml").is_file():
        return load_config(model_dir / "config.yaml").data
    dataset = card.dataset
    if dataset in (None, "folder"):
        raise ValueError(f"{model_dir} does not say where its training images are; give --data PATH")
    return DataConfig(dataset=dataset)


@contextlib.contextmanager
def _generate_options(pipe, n: int, cfg: EvalConfig, scale: float | None, progress: bool, what: str = "",
                      batches: int | None = None):
    """`pipe.generate`'s keyword arguments for n images (in `batches`, default as one call
    makes them) at guidance `scale`, with a progress bar."""
    from tqdm.auto import tqdm

    options = {} if cfg.eta is None else {"eta": cfg.eta}
    batches = batches or -(-n // cfg.batch_size)
    total = (len(pipe.sigmas(cfg.sampler, cfg.steps, cfg.grid)) - 1) * batches
    desc = f"sample {n}{what} ({cfg.sampler}" + (f", cfg {scale:g})" if scale is not None else ")")
    with tqdm(total=total, desc=desc, unit="step", disable=not progress, dynamic_ncols=True) as bar:
        yield {"cfg": scale, "cfg_interval": cfg.cfg_interval, "sampler": cfg.sampler, "steps": cfg.steps,
               "grid": cfg.grid, "seed": cfg.seed,
               "batch_size": cfg.batch_size, "callback": lambda d: bar.update(1), **options}


def _sample(pipe, n: int, cfg: EvalConfig, scale: float | None, progress: bool,
            prompts: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n images: class-balanced for a class model, one per prompt of `prompts` for a text model."""
    labels = class_balanced_labels(n, pipe.num_classes) if pipe.num_classes else None
    with _generate_options(pipe, n, cfg, scale, progress) as options:
        if prompts is not None:  # training captions, cut to the model's limit as in training
            return pipe.generate(prompts=prompts, truncate_prompts=True, **options)
        return pipe.generate(n=n, labels=labels, **options)


def _caption_draw(train, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str], torch.Tensor | None]:
    """min(n, pool) training images drawn at random; n prompts, their captions in turn; the
    labels of the images the prompts came from (None for unlabelled data)."""
    if train.captions is None:
        raise ValueError(f"{train.name} has no captions to draw a text model's prompts from; compare it with "
                         "its captioned training data (--dataset / --data)")
    idx = np.sort(rng.choice(len(train), min(n, len(train)), replace=False))
    cycle = idx[np.arange(n) % len(idx)]
    labels = None if train.labels is None else train.labels[torch.from_numpy(cycle)]
    return idx, [train.captions[i] for i in cycle], labels


def _matched_indices(pool_labels: torch.Tensor | None, pool_size: int, labels: torch.Tensor | None, n: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Indices into a pool: per class as many as `labels` holds (capped by the pool), else
    min(n, pool_size) at random."""
    if labels is None or pool_labels is None:
        return np.sort(rng.choice(pool_size, min(n, pool_size), replace=False))
    pool = pool_labels.numpy()
    parts = []
    for c, count in zip(*np.unique(labels.numpy(), return_counts=True)):
        idx = np.flatnonzero(pool == c)
        parts.append(rng.choice(idx, min(count, len(idx)), replace=False))
    return np.concatenate(parts)


def _suite(ref: np.ndarray, ref_sub: np.ndarray, x: np.ndarray, cfg: EvalConfig, stats=None) -> dict:
    """FD (against `stats`, a `ReferenceStats`, when given), KID and precision/recall."""
    kid = M.kernel_inception_distance(x, ref, cfg.kid_subsets, cfg.kid_subset_size, seed=cfg.seed)
    pr = M.precision_recall(ref_sub, x, k=cfg.k)
    fd = stats.frechet_distance(x) if stats is not None else M.frechet_distance_features(ref, x)
    return {"fd": fd, "kid": kid.mean, "kid_std": kid.std, "kid_sem": kid.sem,
            "kid_subset_size": kid.subset_size, "precision": pr.precision, "recall": pr.recall}


# A feature space: its name and images -> (features (N, D), class probabilities (N, K) or None).
Extractor = tuple[str, Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray | None]]]


def _extractors(data: DataConfig, bundle, classifier, inception, device, log,
                progress: bool = False) -> tuple[list[Extractor], dict]:
    from difforge.eval.classifier import load_or_train_classifier
    from difforge.eval.inception import InceptionFeatures, default_inception_path

    found, spaces = [], {"classifier": None, "inception": None}
    if bundle.class_names is not None:
        clf = load_or_train_classifier(data, classifier, bundle=bundle, device=device, log=log, progress=progress)
        shape = (clf.meta["channels"], clf.meta["image_size"])
        if clf.class_names != bundle.class_names or shape != (bundle.channels, bundle.native_size):
            raise ValueError(f"classifier {classifier} was trained on other data ({clf.meta['dataset']})")

        def by_classifier(images):
            f, z = clf.features_and_logits(images)
            return f, M.softmax(z)

        found.append(("classifier", by_classifier))
        spaces["classifier"] = {k: clf.meta.get(k) for k in ("dataset", "test_accuracy", "eval_split", "eval_images",
                                                          "feature_dim", "class_names", "epochs", "train_seconds")}
        spaces["classifier"]["dir"] = str(classifier) if classifier else None
        from difforge.eval.reference import weights_digest

        spaces["classifier"]["digest"] = weights_digest(clf.net.state_dict())
    path = inception if inception is not None else default_inception_path()
    if path is not None:
        net = InceptionFeatures(path, device)
        found.append(("inception", lambda images: (net.features(images), net.probs(images))))
        spaces["inception"] = {"status": "computed", "path": str(path)}
    else:
        spaces["inception"] = {"status": "skipped: no Inception-v3 weights (offline); give --inception PATH to a "
                                       "TorchScript inception-2015-12-05.pt for the standard FID"}
    if not found:
        raise ValueError("nothing to measure with: the data has no labels for a domain classifier and no "
                         "Inception weights were given (--inception PATH)")
    return found, spaces


def evaluate(
    model_dir: str | Path | None,
    out: str | Path,
    cfg: EvalConfig = EvalConfig(),
    *,
    data: DataConfig | None = None,
    npz: str | Path | None = None,
    classifier: str | Path | None = None,
    inception: str | Path | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
    reference: str | Path | None = None,
    save_reference: str | Path | None = None,
    garment_classifier: str | Path | None = None,
    clip: str | Path | None = None,
) -> dict:
    """Score a model (or an .npz of samples) and write out/report.json, report.md and plots.
    Returns the report dict (see the module docstring for the protocol). `out` must be new,
    empty, or (with `overwrite`) an earlier report; `classifier`, a classifier or a folder
    to train one into that is new or empty: both are checked before any work.

    FD in the classifier's feature space is measured against `reference` (an .npz of `mu`
    and `sigma`, `eval/reference.py`) when given, else against the reference split, whose
    statistics are cached and, with `save_reference`, written to that file too.

    A text model of fashion-colour is also scored on its prompt sets (`eval.prompts`), with
    the garment classifier in `garment_classifier` (default: the cached one, trained on
    first use; `eval.garment`).

    With `clip` (a folder `difforge train-clip` wrote), a text model's samples are also
    scored by that domain CLIP against their prompts (`eval.clip.clip_score`): the main
    samples next to the same score of the real training images whose captions were the
    prompts, and each prompt set next to the real reference images with their captions
    (the ceiling)."""
    from difforge.eval.classifier import check_classifier_dir, is_classifier_dir
    from difforge.eval.report import write_report
    from difforge.io.outputs import check_output_dir

    t0 = time.perf_counter()
    out = check_output_dir(out, holds="evaluation report", is_ours=lambda p: (p / "report.json").is_file(),
                           overwrite=overwrite)
    for path, what in ((classifier, "--classifier"), (garment_classifier, "--garment-classifier")):
        if path is not None and not is_classifier_dir(path):
            check_classifier_dir(path, what=what)
    _check_arguments(model_dir, npz, cfg)
    _check_reference_files(reference, save_reference)
    pipe, given, model_dir, data = _open_model(model_dir, cfg, data, device)
    text = pipe is not None and pipe.takes_text
    prompt_sets = _check_text_options(pipe, npz, data, cfg, garment_classifier)
    domain_clip = _open_clip(clip, pipe, npz, device)
    if npz is not None:
        images, labels = read_npz(npz)
    elif cfg.n < 2:
        raise ValueError(f"need at least 2 images to compare distributions, got --n {cfg.n}")
    bundle = load_dataset(data)
    ref, ref_split = (bundle.test, "test") if bundle.test is not None else (bundle.val, "val")
    if ref is None or len(ref) < 2:
        raise ValueError("the data has no test split and no validation split to compare with")
    if domain_clip is not None:
        _check_clip_fits(domain_clip, clip, bundle.train)
    extractors, spaces = _extractors(data, bundle, classifier, inception, device, log, progress)
    if reference is not None and spaces["classifier"] is None:
        raise ValueError("--reference holds domain-classifier statistics: the data has no labels for a classifier")

    t_sample = time.perf_counter()
    prompts = drawn = None
    if text and (npz is None or cfg.cfg_sweep):  # the prompts of the main samples and of the sweep's
        drawn, prompts, caption_labels = _caption_draw(bundle.train, cfg.n, np.random.default_rng(cfg.seed))
    if npz is None:
        scale = (cfg.cfg if cfg.cfg is not None else pipe.default_cfg) if pipe.num_classes or text else None
        images, labels = _sample(pipe, cfg.n, cfg, scale, progress, prompts)
        if text:
            labels = caption_labels  # the class of the image each prompt's caption describes
    _check_samples(images, labels, ref, bundle)
    n = len(images)
    sample_seconds = time.perf_counter() - t_sample
    if bundle.class_names is None:
        labels = None

    rng = np.random.default_rng(cfg.seed)
    floor = bundle.train.subset(drawn if drawn is not None and npz is None else
                                _matched_indices(bundle.train.labels, len(bundle.train), labels, n, rng))
    ref_sub = np.sort(rng.choice(len(ref), min(n, len(ref)), replace=False))
    stats_of = functools.partial(_reference_stats, data=data, split=ref_split, reference=reference,
                                 save_reference=save_reference, log=log)
    metrics, floors, feats, stats = _scores(extractors, ref, images, labels, floor, ref_sub, cfg, spaces, stats_of,
                                            log)
    per_class = _per_class(feats["classifier"], ref, floor, labels, bundle.class_names) \
        if labels is not None and "classifier" in feats else []
    main_scale = cfg.cfg if cfg.cfg is not None or pipe is None else pipe.default_cfg
    following, garments = None, None
    if prompt_sets:
        garments = _garment_classifier(data, bundle, garment_classifier, device, log)
        following = _prompt_following(pipe, cfg, garments, ref, ref_split, main_scale, progress, log, domain_clip)
        following["garment_classifier"] = garments.describe(garment_classifier)
    sweep_labels = labels if prompts is None or bundle.class_names is None else caption_labels
    sweep = _cfg_sweep(pipe, cfg, extractors, feats, stats, ref_sub, sweep_labels,
                       images if npz is None else None, main_scale, progress, prompts, garments, following,
                       domain_clip)
    likelihood, memorization = _extra_measures(pipe, cfg, images, bundle, ref, ref_split, ref_sub, extractors,
                                               out, model_dir, log, progress)
    report = _report_dict(
        model=None if model_dir is None else str(given), npz=npz, n=n, floor=floor, data=data, ref=ref,
        ref_split=ref_split, bundle=bundle, pipe=pipe, cfg=cfg, main_scale=main_scale, sample_seconds=sample_seconds,
        ref_sub=ref_sub, spaces=spaces, metrics=metrics, floors=floors, per_class=per_class, sweep=sweep,
        likelihood=likelihood, memorization=memorization)
    if text:
        report["sampling"] = report["sampling"] and {**report["sampling"], "prompts": "captions of training images"}
        report["prompt_following"] = following if following is not None else {"status": _no_prompt_sets(npz, data)}
    if domain_clip is not None:
        report["clip_score"] = _clip_report(domain_clip, clip, images, prompts, floor)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_report(report, Path(out), images, labels)
    return report


def _open_model(model_dir, cfg: EvalConfig, data: DataConfig | None, device):
    """The pipeline of `model_dir` (None with --npz alone), the name the user gave, its
    folder (a Hub id resolved to its cache folder) and the data to compare with."""
    pipe, given = None, model_dir
    if model_dir is not None:
        from difforge.hub import resolve_model_dir
        from difforge.pipeline import load_pipeline

        pipe = load_pipeline(model_dir, ema=cfg.ema, device=device)
        if pipe.takes_clips:
            raise ValueError(f"{model_dir} is a video model: use `difforge evaluate-video`")
        model_dir = resolve_model_dir(model_dir)
        if cfg.cfg_sweep and not (pipe.num_classes or pipe.takes_text):
            raise ValueError("--cfg-sweep needs a class-conditional or text-to-image model; this one is "
                             "unconditional")
    if data is None:
        if pipe is None:
            raise ValueError("with --npz and no model, say which data to compare with (--dataset or --data)")
        data = data_config_for(Path(model_dir), pipe.card)
    return pipe, given, model_dir, data


def _open_clip(clip, pipe, npz, device):
    """The domain CLIP of --clip, loaded before any work; one-line refusals where it does not apply."""
    if clip is None:
        return None
    if pipe is None or npz is not None:
        raise ValueError("--clip scores samples drawn here against their prompts: it does not apply to --npz samples")
    if not pipe.takes_text:
        raise ValueError(f"--clip scores images against their prompts: it applies to text-to-image models; this is "
                         f"{_kind(pipe)}")
    from difforge.eval.clip import load_clip

    try:
        return load_clip(clip, device)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--clip: {e}") from None


def _check_clip_fits(domain_clip, path, train) -> None:
    c, s = domain_clip.net.arch.channels, domain_clip.image_size
    if (train.channels, train.size) != (c, s):
        raise ValueError(f"--clip {path} takes {c}x{s}x{s} images; this model's are "
                         f"{train.channels}x{train.size}x{train.size}")


def _clip_report(domain_clip, path, images, prompts, floor) -> dict:
    """The CLIP score of the main samples against their prompts, and of the real training
    images whose captions were the prompts (the floor) against those captions."""
    from difforge.eval.clip import clip_score

    return {"clip": str(path), "text_encoder": domain_clip.net.arch.text_encoder,
            "samples": clip_score(domain_clip, images, prompts),
            "floor": clip_score(domain_clip, floor.images, floor.captions), "n": len(images)}


def _check_text_options(pipe, npz, data: DataConfig, cfg: EvalConfig, garment_classifier) -> bool:
    """Refuse the prompt-set options where they do not apply, before any work; whether the
    prompt sets are to be sampled (a text model of fashion-colour, samples drawn here)."""
    from difforge.data.fashion_colour import NAME as FASHION_COLOUR

    applies = pipe is not None and pipe.takes_text and data.dataset == FASHION_COLOUR
    for given, option in ((cfg.prompts_per_set is not None, "--prompts-per-set"),
                          (garment_classifier is not None, "--garment-classifier")):
        if given and not applies:
            raise ValueError(f"{option} applies to text-to-image models of fashion-colour only (its prompt sets); "
                             f"this is {_kind(pipe)} on {data.dataset}")
        if given and npz is not None:
            raise ValueError(f"{option} scores prompt sets sampled here: it does not apply to --npz samples")
    if cfg.prompts_per_set is not None and cfg.prompts_per_set < 1:
        raise ValueError(f"--prompts-per-set must be >= 1, got {cfg.prompts_per_set}")
    return applies and npz is None


def _kind(pipe) -> str:
    if pipe is None:
        return "no model"
    return "a text-to-image model" if pipe.takes_text else \
        "a class-conditional model" if pipe.num_classes else "an unconditional model"


def _no_prompt_sets(npz, data: DataConfig) -> str:
    if npz is not None:
        return "skipped: --npz samples carry no prompts of the prompt sets"
    return f"skipped: the prompt sets are fashion-colour's; this model's data is {data.dataset}"


def _garment_classifier(data: DataConfig, bundle, directory, device, log):
    from difforge.eval.garment import load_or_train_garment_classifier

    return load_or_train_garment_classifier(data, directory, bundle=bundle, device=device, log=log)


def _prompt_sets(pipe, cfg: EvalConfig, garments, scale: float, progress: bool, clip=None) -> dict:
    """The three prompt sets sampled at guidance `scale` and measured (`eval.prompts`)."""
    from difforge.eval.prompts import PROMPT_SETS, prompt_following

    per_set = cfg.prompts_per_set or cfg.n
    sizes = [min(per_set, len(make())) for make in PROMPT_SETS.values()]
    batches = sum(-(-k // cfg.batch_size) for k in sizes)
    with _generate_options(pipe, sum(sizes), cfg, scale, progress, " prompts", batches) as options:
        return prompt_following(pipe, garments, per_set=per_set, clip=clip, **options)


def _prompt_following(pipe, cfg: EvalConfig, garments, ref, ref_split: str, scale: float, progress: bool,
                      log, clip=None) -> dict:
    """The prompt sets at the main guidance scale, and the ceiling: the same measurement on
    the real reference images (and with `clip`, their CLIP score against their captions)."""
    from difforge.eval.prompts import real_image_accuracy

    if log:
        log("prompt following: sampling the seen, held-out-pair and paraphrase prompts")
    ceiling = None if ref.attributes is None else {"split": ref_split, "n": len(ref),
                                                   "accuracy": real_image_accuracy(ref, garments)}
    if ceiling is not None and clip is not None and ref.captions is not None:
        from difforge.eval.clip import clip_score

        ceiling["clip_score"] = clip_score(clip, ref.images, ref.captions)
    return {"cfg": scale, "ceiling": ceiling, "sets": _prompt_sets(pipe, cfg, garments, scale, progress, clip)}


def _extra_measures(pipe, cfg: EvalConfig, images, bundle, ref, ref_split, ref_sub, extractors, out, model_dir, log,
                    progress: bool = False):
    """The optional measures: test-set bits/dim (--bpd) and memorization (--memorization)."""
    likelihood = memorization = None
    if cfg.bpd:
        from difforge.eval.bpd import test_set_bits_per_dim

        bits = test_set_bits_per_dim(pipe, ref.images[: cfg.bpd], ode=cfg.bpd_ode,
                                     timesteps=cfg.bpd_timesteps, seed=cfg.seed, log=log, progress=progress)
        likelihood = {"split": ref_split, **bits}
    if cfg.memorization:
        memorization = _memorization(images, bundle, ref.images[ref_sub], ref_split, extractors, out, model_dir, log)
    return likelihood, memorization


def _interval_record(pipe, cfg: EvalConfig) -> list[float] | str | None:
    """The guided noise levels of the report: [lo, hi], "all", or None (no guidance)."""
    if not (pipe.num_classes or pipe.takes_text):
        return None
    interval = cfg.cfg_interval if cfg.cfg_interval is not None else pipe.default_cfg_interval
    if interval is None or (interval[0] == 0 and interval[1] == float("inf")):
        return "all"
    return [float(v) for v in interval]


def _report_dict(*, model, npz, n, floor, data, ref, ref_split, bundle, pipe, cfg: EvalConfig, main_scale,
                 sample_seconds, ref_sub, spaces, metrics, floors, per_class, sweep, likelihood, memorization) -> dict:
    """report.json's content (the module docstring describes the protocol)."""
    return {
        "format": REPORT_FORMAT,
        "version": 1,
        "model": model,
        "npz": None if npz is None else str(npz),
        "n": n,
        "floor_n": len(floor),
        "data": {**asdict(data), "reference_split": ref_split, "reference_count": len(ref),
                 "train_count": len(bundle.train), "class_names": bundle.class_names},
        "sampling": None if npz is not None else {
            "sampler": cfg.sampler, "steps": len(pipe.sigmas(cfg.sampler, cfg.steps, cfg.grid)) - 1,
            "grid": cfg.grid, "cfg": main_scale if pipe.num_classes or pipe.takes_text else None,
            "cfg_interval": _interval_record(pipe, cfg), "eta": cfg.eta,
            "seed": cfg.seed, "ema": cfg.ema, "conditional": bool(pipe.num_classes), "text": pipe.takes_text,
            "seconds": round(sample_seconds, 1)},
        "protocol": {"k": cfg.k, "kid_subsets": cfg.kid_subsets,
                     "kid_subset_size": min(cfg.kid_subset_size, n, len(ref)),
                     "precision_recall_reference": len(ref_sub), "fd_reference": len(ref)},
        "classifier": spaces["classifier"],
        "inception": spaces["inception"],
        "metrics": metrics,
        "floor": floors,
        "per_class": per_class,
        "cfg_sweep": sweep,
        "likelihood": likelihood,
        "memorization": memorization,
        "seconds": None,
    }


def _check_samples(images: torch.Tensor, labels: torch.Tensor | None, ref, bundle) -> None:
    """Enough images, of the real ones' shape, with labels among the data's classes."""
    if len(images) < 2:
        raise ValueError(f"need at least 2 images to compare distributions, got {len(images)}")
    if tuple(images.shape[1:]) != tuple(ref.images.shape[1:]):
        raise ValueError(f"generated images are {'x'.join(map(str, images.shape[1:]))} but the real ones "
                         f"{'x'.join(map(str, ref.images.shape[1:]))}")
    if (labels is not None and bundle.num_classes
            and not 0 <= int(labels.min()) <= int(labels.max()) < bundle.num_classes):
        raise ValueError(f"labels {int(labels.min())}..{int(labels.max())} out of range 0..{bundle.num_classes - 1}")


def _check_arguments(model_dir, npz, cfg: EvalConfig) -> None:
    """What can be refused from the arguments alone, before any work."""
    if model_dir is None and npz is None:
        raise ValueError("give a run or model directory, or --npz FILE with --dataset/--data")
    if cfg.cfg_sweep and model_dir is None:
        raise ValueError("--cfg-sweep needs a model to sample from")
    if cfg.bpd < 0:
        raise ValueError(f"--bpd must be >= 0, got {cfg.bpd}")
    if cfg.bpd and model_dir is None:
        raise ValueError("--bpd needs a model to measure, not only --npz samples")


def _scores(extractors, ref, images, labels, floor, ref_sub, cfg: EvalConfig, spaces: dict, stats_of, log):
    """Per feature space: the suite for the samples and for the real-vs-real floor, the
    classifier score, the conditional accuracy. Returns (metrics, floors, features, FD
    statistics); `spaces["classifier"]["fd_reference"]` says where the statistics came from."""
    metrics, floors, feats, stats = {}, {}, {}, {}
    for name, fn in extractors:
        if log:
            log(f"scoring in the {name} feature space")
        (ref_f, _), (fake_f, fake_p), (floor_f, floor_p) = fn(ref.images), fn(images), fn(floor.images)
        feats[name] = (ref_f, fake_f, floor_f, fake_p)
        if name == "classifier":
            stats[name], spaces[name]["fd_reference"] = stats_of(ref_f, digest=spaces[name]["digest"])
        metrics[name] = _suite(ref_f, ref_f[ref_sub], fake_f, cfg, stats.get(name))
        floors[name] = _suite(ref_f, ref_f[ref_sub], floor_f, cfg, stats.get(name))
        if fake_p is not None:
            key = "classifier_score" if name == "classifier" else "inception_score"
            metrics[name][key] = M.classifier_score(fake_p)[0]
            floors[name][key] = M.classifier_score(floor_p)[0]
        if name == "classifier":
            if labels is not None:
                metrics[name]["conditional_accuracy"] = M.conditional_accuracy(fake_p, labels.numpy())
            floors[name]["conditional_accuracy"] = M.conditional_accuracy(floor_p, floor.labels.numpy())
    return metrics, floors, feats, stats


def _cfg_sweep(pipe, cfg: EvalConfig, extractors, feats, stats, ref_sub, labels, images, main_scale,
               progress, prompts=None, garments=None, following=None, clip=None) -> list[dict]:
    """FD, KID, precision, recall, accuracy and classifier score at each guidance scale of
    the sweep (`images`, already sampled at `main_scale`, are reused there); for a text
    model of fashion-colour, the prompt sets' accuracies too (`following` at `main_scale`);
    with a domain `clip`, the CLIP scores of the samples and of each prompt set."""
    sweep = []
    for s in cfg.cfg_sweep:
        reuse = images is not None and s == main_scale
        imgs = images if reuse else _sample(pipe, cfg.n, cfg, s, progress, prompts)[0]
        row: dict = {"cfg": s}
        for name, fn in extractors:
            ref_f = feats[name][0]
            f, p = fn(imgs)
            suite = _suite(ref_f, ref_f[ref_sub], f, cfg, stats.get(name))
            prefix = "" if name == "classifier" else "inception_"
            row.update({prefix + key: v for key, v in suite.items() if key in ("fd", "kid", "precision", "recall")})
            if name == "classifier":
                if labels is not None:
                    row["conditional_accuracy"] = M.conditional_accuracy(p, labels.numpy())
                row["classifier_score"] = M.classifier_score(p)[0]
        if clip is not None:
            from difforge.eval.clip import clip_score

            row["clip_score"] = clip_score(clip, imgs, prompts)
        if following is not None:
            sets = following["sets"] if s == following["cfg"] else _prompt_sets(pipe, cfg, garments, s, progress,
                                                                                 clip)
            row["prompt_sets"] = {name: r["accuracy"] for name, r in sets.items()}
            if clip is not None:
                row["prompt_set_clip_scores"] = {name: r["clip_score"] for name, r in sets.items()}
        sweep.append(row)
    return sweep


def _memorization(images, bundle, heldout, heldout_split: str, extractors, out, model_dir, log) -> dict:
    """The nearest-training-image audit, and for a run its train/validation loss gap."""
    from difforge.eval.memorization import memorization_audit

    if log:
        log("memorization audit: nearest training images")
    by_clf = dict(extractors).get("classifier")
    memorization = memorization_audit(images, bundle.train.images, heldout, out=Path(out),
                                      features=None if by_clf is None else (lambda im: by_clf(im)[0]))
    memorization["heldout_split"] = heldout_split
    metrics_file = Path(model_dir) / "metrics.jsonl" if model_dir is not None else None
    if metrics_file is not None and metrics_file.is_file():  # a run: its train/validation loss gap too
        from difforge.eval.training_report import loss_gap, read_metrics

        memorization["loss_gap"] = loss_gap(read_metrics(metrics_file))
    return memorization


def _check_reference_files(reference, save_reference) -> None:
    """--reference readable and --save-reference writable, before any work."""
    from difforge.eval.reference import load_reference
    from difforge.io.outputs import check_output_file

    if reference is not None:
        load_reference(reference)
    if save_reference is not None:
        check_output_file(save_reference, what="--save-reference", suffixes=(".npz",))


def _reference_stats(ref_f: np.ndarray, *, data: DataConfig, digest: str, split: str, reference, save_reference,
                     log):
    """The classifier space's FD statistics and where they came from (eval/reference.py)."""
    from difforge.eval.classifier import cache_root, dataset_key
    from difforge.eval.reference import reference_stats

    return reference_stats(ref_f, dataset=dataset_key(data), classifier=digest, split=split, root=cache_root(),
                           given=reference, save=save_reference, log=log)


def _per_class(feats: tuple, ref, floor, labels: torch.Tensor, class_names: list[str]) -> list[dict]:
    """FD per class (generated and floor vs the reference images of that class) and the
    share of generated images the classifier puts in their requested class."""
    ref_f, fake_f, floor_f, fake_p = feats
    y = labels.numpy()
    fd = M.per_class_fd(ref_f, ref.labels.numpy(), fake_f, y, len(class_names))
    fd_floor = M.per_class_fd(ref_f, ref.labels.numpy(), floor_f, floor.labels.numpy(), len(class_names))
    pred = fake_p.argmax(1)
    return [{"class": c, "name": name, "n": int((y == c).sum()), "fd": fd[c], "floor_fd": fd_floor[c],
             "accuracy": float((pred[y == c] == c).mean()) if (y == c).any() else None}
            for c, name in enumerate(class_names)]
