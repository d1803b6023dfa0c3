"""Evaluation: a domain classifier and Inception-v3 as feature extractors, FD / KID /
precision-recall / classifier score / conditional accuracy, likelihood (bits/dim), the
memorization audit, and the `evaluate` and training reports; the domain CLIP and its
CLIP score."""

from difforge.eval.classifier import (
    ClassifierConfig,
    DomainClassifier,
    cache_root,
    classifier_dir,
    dataset_key,
    load_classifier,
    load_or_train_classifier,
    train_classifier,
)
from difforge.eval.clip import CLIPConfig, DomainCLIP, clip_score, clip_scores, load_clip, train_clip
from difforge.eval.evaluate import EvalConfig, evaluate, read_npz
from difforge.eval.likelihood import ddpm_vlb, pf_ode_log_likelihood
from difforge.eval.memorization import memorization_audit
from difforge.eval.metrics import (
    classifier_score,
    conditional_accuracy,
    feature_stats,
    frechet_distance,
    frechet_distance_features,
    kernel_inception_distance,
    mmd2_unbiased,
    per_class_fd,
    precision_recall,
)

__all__ = [
    "CLIPConfig",
    "ClassifierConfig",
    "DomainCLIP",
    "DomainClassifier",
    "EvalConfig",
    "cache_root",
    "classifier_dir",
    "clip_score",
    "clip_scores",
    "classifier_score",
    "conditional_accuracy",
    "dataset_key",
    "ddpm_vlb",
    "evaluate",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_features",
    "kernel_inception_distance",
    "load_classifier",
    "load_clip",
    "load_or_train_classifier",
    "memorization_audit",
    "mmd2_unbiased",
    "per_class_fd",
    "pf_ode_log_likelihood",
    "precision_recall",
    "read_npz",
    "train_classifier",
    "train_clip",
]
