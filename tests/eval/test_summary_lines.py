"""The terminal summaries of `evaluate` and `train-classifier`, from hand-built reports."""

from difforge.eval.classifier import summary_line
from difforge.eval.report import summary_lines


def _report(**extra):
    metrics = {"fd": 12.345678, "kid": 0.0123456, "precision": 0.81234, "recall": 0.5, "conditional_accuracy": 0.9}
    floor = {"fd": 1.5, "kid": 0.0004, "precision": 0.9, "recall": 0.9}
    unconditional = {k: v for k, v in metrics.items() if k != "conditional_accuracy"}
    r = {"metrics": {"classifier": metrics, "inception": unconditional},
         "floor": {"classifier": floor, "inception": floor}, "inception": {"status": "computed"}, "n": 20}
    return {**r, **extra}


def test_one_line_per_feature_space():
    assert summary_lines(_report()) == [
        "classifier: FD 12.35 (floor 1.5), KID 0.0123 (floor 0.0004), precision 0.812, recall 0.500, accuracy 0.900",
        "inception: FD 12.35 (floor 1.5), KID 0.0123 (floor 0.0004), precision 0.812, recall 0.500",
    ]


def test_inception_status_likelihood_and_memorization():
    r = _report(inception={"status": "skipped: no weights"},
                likelihood={"n": 4, "split": "val", "vlb": {"large": {"bpd": 3.21234}}, "ode": {"bpd": 2.9}},
                memorization={"pixel": {"near_copy_fraction": 0.05, "heldout_fraction": 0.04,
                                        "median_generated": 7.123456, "median_heldout": 7.5}})
    r["metrics"].pop("inception")
    assert summary_lines(r)[1:] == [
        "inception: skipped: no weights",
        "bits/dim on 4 val images: VLB 3.212, ODE 2.9",
        "memorization (pixels): 5.00% near-copies (held-out real: 4.00%); median nearest-training distance 7.123 "
        "(held-out 7.5)",
    ]
    r["likelihood"].pop("vlb")  # a framework without the variational bound
    assert "bits/dim on 4 val images: ODE 2.9" in summary_lines(r)


def test_classifier_summary_line():
    meta = {"test_accuracy": 0.93456, "eval_images": 180, "eval_split": "val", "epochs": 12, "train_seconds": 3.4}
    assert summary_line(meta) == "93.46% accuracy on 180 val images after 12 epochs (3.4 s)"
