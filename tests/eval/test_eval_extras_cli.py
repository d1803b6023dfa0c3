"""`train --eval-every`, `report` and `evaluate --bpd/--bpd-ode` with memorization, end to end
on a tiny digits model."""

import json

import pytest

from cli_runner import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("extras")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFORGE_CACHE", str(root / "cache"))
        assert run(["train-classifier", "--dataset", "digits", "--epochs", "5", "--device", "cpu"]) == 0
        assert run(["train", "--dataset", "digits", "--model", "tiny", "--max-steps", "6", "--batch-size", "16",
                    "--sample-every", "0", "--checkpoint-every", "0", "--eval-every", "3", "--eval-samples", "20",
                    "--tensorboard", "--out", str(root / "run"), "--no-progress", "--device", "cpu"]) == 0
    return root


@pytest.fixture
def cache(trained, monkeypatch):
    monkeypatch.setenv("DIFFORGE_CACHE", str(trained / "cache"))
    return trained


def test_eval_every_logs_fd_and_report_plots_it(cache, capsys):
    recs = [json.loads(line) for line in (cache / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "eval_fd" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(r["eval_n"] == 20 and r["eval_fd"] > r["eval_fd_floor"] > 0 for r in evals)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(cache / "run" / "tensorboard"))
    tb.Reload()
    fd = tb.Scalars("eval_fd")  # the same numbers reach TensorBoard
    assert [e.step for e in fd] == [3, 6] and fd[-1].value == pytest.approx(evals[-1]["eval_fd"], rel=1e-6)
    assert run(["report", str(cache / "run")]) == 0
    out = capsys.readouterr().out
    assert "training.png" in out
    md = (cache / "run" / "report" / "training.md").read_text()
    assert "In-training evaluation" in md and "| 6 |" in md
    assert (cache / "run" / "report" / "training.png").stat().st_size > 1000


def test_evaluate_bpd_and_memorization(cache, tmp_path, capsys):
    out = tmp_path / "ev"
    assert run(["evaluate", str(cache / "run"), "--n", "20", "--steps", "2", "--bpd", "4", "--bpd-ode",
                "--bpd-timesteps", "5", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "bits/dim on 4 val images" in text and "near-copies" in text
    r = json.loads((out / "report.json").read_text())
    lk = r["likelihood"]
    assert lk["n"] == 4 and lk["dims"] == 64 and lk["split"] == "val" and lk["vlb"]["timesteps"] == 5
    for est in (lk["vlb"]["large"], lk["vlb"]["small"], lk["ode"]):
        assert 0 < est["bpd"] < 30  # an untrained model: finite, positive bits per 8-bit pixel
    mem = r["memorization"]
    assert mem["pixel"]["n_generated"] == 20 and "classifier" in mem and (out / "memorization.png").is_file()
    assert [row["step"] for row in mem["loss_gap"]] == [6]  # digits: one validation, at the end of the run
    md = (out / "report.md").read_text()
    assert "## Likelihood" in md and "## Memorization audit" in md and "memorization.png" in md
    assert "Train/validation loss over training" in md


def test_bad_options_are_one_line(cache, tmp_path, capsys):
    assert run(["evaluate", str(cache / "run"), "--n", "4", "--bpd-ode", "--out", str(tmp_path)]) == 1
    assert "--bpd-ode needs --bpd N" in capsys.readouterr().err
    assert run(["evaluate", str(cache / "run"), "--n", "4", "--bpd", "-2", "--out", str(tmp_path)]) == 1
    assert "--bpd must be >= 0" in capsys.readouterr().err
    assert run(["train", "--dataset", "digits", "--eval-every", "-1", "--out", str(tmp_path / "r")]) == 1
    assert "train.eval_every must be >= 0" in capsys.readouterr().err
    assert run(["report", str(tmp_path / "nowhere")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_last_in_training_point_is_what_evaluate_reports(cache, tmp_path):
    """Same weights (the final EMA), same seeds, sampler and guidance, same floor images:
    the curve's last FD and floor equal `evaluate --n eval_samples`."""
    last = [json.loads(line) for line in (cache / "run" / "metrics.jsonl").read_text().splitlines()
            if "eval_fd" in line][-1]
    out = tmp_path / "ev"
    assert run(["evaluate", str(cache / "run"), "--n", "20", "--no-memorization", "--out", str(out),
                "--no-progress", "--device", "cpu"]) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["memorization"] is None and r["likelihood"] is None
    assert last["eval_fd"] == pytest.approx(r["metrics"]["classifier"]["fd"], rel=1e-6)
    assert last["eval_fd_floor"] == pytest.approx(r["floor"]["classifier"]["fd"], rel=1e-6)
