"""Long videos from a 16-frame model: autoregressive against hierarchical sampling.

Makes N videos of --length frames (class-balanced labels, video i seeded i) from one video
model under each scheme of `difforge.tasks.long_video` with the same context, and scores
them as `evaluate-video` scores clips, over the whole video and per quarter of it (the
failure Flexible Diffusion Models report for autoregressive sampling is videos that stop
moving as they go on):

- identity: the Fashion-MNIST domain classifier's class of every frame's garment window;
  the share of videos whose class never changes, the modal share, the share of frames in
  the class asked for;
- motion: the centroid tracker's mean speed, the share of static videos (mean speed under
  0.5 pixels per frame) and the speed / |acceleration| 1-Wasserstein distances to the
  test clips' per-step values;
- the per-frame FD of all frames against the test clips' frames.

Records the wall clock and CPU seconds of each scheme, the machine, its threads and load.

    OMP_NUM_THREADS=1 python benchmarks/long_video.py RUN --n 20 --out benchmarks/results/long_video.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import machine_record, write_record  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def scores(clf, videos, labels, reference, ref_feats) -> dict:
    """Identity, motion and frame FD of uint8 videos (N, C, L, H, W), whole and by quarter."""
    from difforge.eval import metrics as M
    from difforge.eval import video_metrics as V
    from difforge.eval.video import frame_features

    n, _, length = videos.shape[:3]
    feats, logits = frame_features(clf, videos)
    classes = V.frame_classes(logits, n, length)
    tracks = V.centroids(videos)
    ref_tracks = V.centroids(reference)
    out = {"identity": V.identity_consistency(classes, len(clf.class_names)),
           "motion": {**V.motion_stats(tracks), **V.motion_distances(tracks, ref_tracks)},
           "frame_fd": M.frechet_distance_features(ref_feats, feats)}
    out["identity"]["class_match"] = float((classes == labels.numpy()[:, None]).mean())
    quarter = length // 4
    out["by_quarter"] = []
    for q in range(4):
        part = slice(q * quarter, (q + 1) * quarter)
        tr = tracks[:, part]
        out["by_quarter"].append({
            "frames": [q * quarter, (q + 1) * quarter - 1],
            "class_match": float((classes[:, part] == labels.numpy()[:, None]).mean()),
            "identity": V.identity_consistency(classes[:, part], len(clf.class_names)),
            "mean_speed": float(V.speeds(tr).mean()), "static": V.motion_stats(tr)["static"],
            "speed_w1": V.motion_distances(tr, ref_tracks)["speed_w1"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a video run or exported video model (stunet)")
    ap.add_argument("--n", type=int, default=20, help="videos per scheme")
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--context", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, help="guidance scale [default: sample-video's]")
    ap.add_argument("--schemes", nargs="+", default=["autoregressive", "hierarchical"])
    ap.add_argument("--classifier", help="the Fashion-MNIST domain classifier [default: the cached one]")
    ap.add_argument("--grid", type=Path, help="also write a PNG: the first videos of each scheme, a row each")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    import torch

    from difforge.config import DataConfig
    from difforge.data import load_dataset
    from difforge.eval.classifier import load_or_train_classifier
    from difforge.eval.evaluate import class_balanced_labels, data_config_for
    from difforge.eval.video import frame_features
    from difforge.hub import resolve_model_dir
    from difforge.io.space import to_uint8
    from difforge.pipeline import load_pipeline
    from difforge.tasks.long_video import plan, sample_long_video

    result = {"machine_before": machine_record(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "model": a.model, "n": a.n, "length": a.length, "context": a.context, "sampler": "ddim",
              "steps": a.steps, "cfg": a.cfg, "schemes": {}}
    pipe = load_pipeline(a.model)
    data = data_config_for(Path(resolve_model_dir(a.model)), pipe.card)
    bundle = load_dataset(data)
    reference = bundle.test if bundle.test is not None else bundle.val
    clf = load_or_train_classifier(DataConfig(dataset="fashion-mnist", path=data.path), a.classifier)
    ref_feats = frame_features(clf, reference.images)[0]
    result["reference"] = {"clips": len(reference), "frames": reference.frames}
    labels = class_balanced_labels(a.n, pipe.num_classes)
    made = {}
    for scheme in a.schemes:
        stages = plan(scheme, a.length, pipe.card.frames, a.context)
        t0, c0 = time.perf_counter(), cpu_seconds()
        videos = to_uint8(sample_long_video(pipe, a.length, a.n, labels, scheme=scheme, context=a.context,
                                            steps=a.steps, cfg=a.cfg))
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        made[scheme] = videos
        result["schemes"][scheme] = {"windows": len(stages), "seconds": round(seconds, 1),
                                     "cpu_seconds": round(cpu, 1), **scores(clf, videos, labels, reference.images,
                                                                            ref_feats)}
        print(scheme, json.dumps(result["schemes"][scheme]["identity"]),
              json.dumps({k: result["schemes"][scheme]["motion"][k] for k in ("mean_speed", "static", "speed_w1")}),
              flush=True)
        write_record(a.out, result)
    result["reference_scores"] = scores(clf, reference.images[: a.n * 4], reference.labels[: a.n * 4],
                                        reference.images, ref_feats)  # real 16-frame clips, for scale
    if a.grid:
        from difforge.io.video import save_frames_grid

        rows = torch.cat([made[s][:3] for s in a.schemes])
        save_frames_grid(rows, a.grid, scale=1)
        result["grid"] = str(a.grid)
    write_record(a.out, result)


if __name__ == "__main__":
    main()
