"""Training report: the train/val gap from metrics.jsonl, resume duplicates, bad files."""

import json

import pytest

from difforge.eval.training_report import loss_gap, read_metrics, series, summary_lines, write_run_report


def write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def records():
    out = []
    for step in range(10, 101, 10):  # two "epochs" of 50 steps, train loss = step / 1000
        out.append({"step": step, "epoch": step / 50, "loss": step / 1000, "lr": 0.1 - step / 2000, "img_per_s": 1.0})
        if step % 50 == 0:
            out.append({"step": step, "epoch": step / 50, "val_loss": 0.2, "val_loss_ema": 0.25})
    out.append({"step": 100, "eval_fd": 3.0, "eval_kid": 0.01, "eval_fd_floor": 0.5, "eval_n": 20})
    return out


def test_gap_per_epoch_is_val_minus_mean_train(tmp_path):
    rows = loss_gap(read_metrics(write(tmp_path / "m.jsonl", records())))
    assert [r["step"] for r in rows] == [50, 100]
    assert rows[0]["train_loss"] == pytest.approx((0.01 + 0.02 + 0.03 + 0.04 + 0.05) / 5)
    assert rows[1]["train_loss"] == pytest.approx((0.06 + 0.07 + 0.08 + 0.09 + 0.10) / 5)
    assert rows[1]["gap"] == pytest.approx(0.2 - 0.08) and rows[1]["val_loss_ema"] == 0.25
    assert rows[0]["train_records"] == 5 and rows[0]["epoch"] == 1.0


def test_resumed_records_replace_earlier_ones_and_truncated_tail_is_skipped(tmp_path):
    recs = records() + [{"step": 90, "loss": 1.0}, {"step": 100, "loss": 1.0}]  # after a resume from step 80
    m = read_metrics(write(tmp_path / "m.jsonl", recs, tail='{"step": 110, "lo'))
    steps, values = series(m, "loss")
    assert steps == list(range(10, 101, 10)) and values[-2:] == [1.0, 1.0]


def test_bad_metrics_files_are_named(tmp_path):
    bad = write(tmp_path / "m.jsonl", records()[:2], tail="not json\n" + json.dumps({"step": 3}) + "\n")
    with pytest.raises(ValueError, match=r"m.jsonl:3: not a JSON record"):
        read_metrics(bad)
    with pytest.raises(ValueError, match="integer 'step'"):
        read_metrics(write(tmp_path / "n.jsonl", [{"loss": 1}]))
    with pytest.raises(FileNotFoundError, match="is this a run directory"):
        read_metrics(tmp_path / "none.jsonl")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        write_run_report(tmp_path / "run")


def test_report_writes_png_and_markdown(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write(run / "metrics.jsonl", records())
    s = write_run_report(run)
    assert s["eval"] == [{"step": 100, "fd": 3.0, "kid": 0.01}] and s["eval_fd_floor"] == 0.5
    md = (run / "report" / "training.md").read_text()
    assert "| 2 | 100 | 0.08 | 0.2 | 0.25 | 0.12 |" in md and "floor at the same N: FD 0.5" in md
    from PIL import Image

    assert Image.open(run / "report" / "training.png").size[0] > 900


def test_summary_lines_give_the_last_epochs_gap(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write(run / "metrics.jsonl", records())
    summary = write_run_report(run)
    assert summary_lines(summary) == ["last epoch: train loss 0.08, val loss 0.2 (gap +0.12)"]
    assert summary_lines({**summary, "loss_gap": []}) == []  # no epoch finished yet
