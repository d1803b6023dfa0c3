"""FD / KID during training (`difforge train --eval-every N`).

Every N steps the EMA weights sample `eval_samples` images (class-balanced, image i seeded
i, DDIM 50 steps and guidance 3: the defaults of `difforge evaluate`, so the last point of
the curve is what `evaluate --n eval_samples` reports) and they are scored in the domain
classifier's feature space against the reference split (test, else validation) with the
protocol of `eval.evaluate`. The real-vs-real floor at the same N (that many training
images, same class counts) is computed once and logged with every evaluation.
Logged keys: eval_fd, eval_kid, eval_kid_std, eval_fd_floor, eval_kid_floor, eval_n,
eval_seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from difforge.eval import metrics as M
from difforge.models.card import ModelCard

KID_SUBSETS = 50


class InTrainingEval:
    """Built once before training (trains and caches the domain classifier on first use);
    called with the EMA network, returns the metrics to log."""

    def __init__(self, data, bundle, card: ModelCard, device: torch.device, n: int = 500, seed: int = 0,
                 log: Callable[[str], None] | None = print, autoencoder: nn.Module | None = None):
        from difforge.eval.classifier import load_or_train_classifier
        from difforge.eval.evaluate import _matched_indices, class_balanced_labels

        if bundle.class_names is None:
            raise ValueError("--eval-every needs labelled data: FD is measured with a domain classifier")
        if n < 2:
            raise ValueError(f"eval_samples must be >= 2, got {n}")
        ref = bundle.test if bundle.test is not None else bundle.val
        if ref is None or len(ref) < 2:
            raise ValueError("--eval-every needs a test or validation split to compare with")
        self.card, self.device, self.n, self.seed = card, device, n, seed
        self.autoencoder = autoencoder  # a latent model's (its samples are decoded to images)
        self.clf = load_or_train_classifier(data, bundle=bundle, device=device, log=log)
        if self.clf.class_names != bundle.class_names:
            raise ValueError(f"the cached domain classifier was trained on other data ({self.clf.meta['dataset']})")
        self.labels = class_balanced_labels(n, card.num_classes) if card.num_classes else None
        self.ref = self.clf.features(ref.images)
        rng = np.random.default_rng(seed)
        floor_labels = class_balanced_labels(n, bundle.num_classes)
        floor = bundle.train.subset(_matched_indices(bundle.train.labels, len(bundle.train), floor_labels, n, rng))
        self.floor = self._score(self.clf.features(floor.images))

    def _score(self, feats: np.ndarray) -> dict:
        kid = M.kernel_inception_distance(feats, self.ref, KID_SUBSETS, min(1000, len(feats)), seed=self.seed)
        return {"fd": M.frechet_distance_features(self.ref, feats), "kid": kid.mean, "kid_std": kid.std}

    @torch.no_grad()
    def __call__(self, net: nn.Module) -> dict:
        from difforge.pipeline import DEFAULT_CFG, DEFAULT_SAMPLER, Pipeline

        t0 = time.perf_counter()
        was_training = net.training
        net.eval()
        try:
            pipe = Pipeline(self.card.denoiser(net), self.card, self.device, autoencoder=self.autoencoder)
            images, _ = pipe.generate(n=self.n, labels=self.labels,
                                      cfg=DEFAULT_CFG if self.labels is not None else None,
                                      sampler=DEFAULT_SAMPLER, seed=self.seed)
        finally:
            net.train(was_training)
        m = self._score(self.clf.features(images))
        return {"eval_fd": m["fd"], "eval_kid": m["kid"], "eval_kid_std": m["kid_std"],
                "eval_fd_floor": self.floor["fd"], "eval_kid_floor": self.floor["kid"], "eval_n": self.n,
                "eval_seconds": time.perf_counter() - t0}
