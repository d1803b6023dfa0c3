"""Every task tells its callback how many sampler steps it takes in all ("total"): what
the progress bars of `difforge inpaint/restore/denoise/upscale/interpolate` count to."""

import pytest
import torch

from difforge import tasks

X = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
LOW = torch.zeros(2, 1, 4, 4)
RUNS = {  # name -> (task call on (pipe, SR3 pipe, callback), its number of sampler steps)
    "restore": (lambda p, sr, cb: tasks.restore(p, X, 0.5, steps=10, callback=cb), None),
    "denoise": (lambda p, sr, cb: tasks.denoise(p, X, 0.1, steps=6, callback=cb), None),
    "denoise-one-step": (lambda p, sr, cb: tasks.denoise(p, X, 0.1, callback=cb), 1),
    "blend": (lambda p, sr, cb: tasks.inpaint(p, X, tasks.make_mask("center", 8, 2), method="blend", steps=6,
                                              callback=cb), 6),
    # 6 steps down, back up 2 levels twice at level 2 and at level 4: 6 + 2 * 2 + 2 * 2
    "repaint": (lambda p, sr, cb: tasks.inpaint(p, X, tasks.make_mask("center", 8, 2), steps=6, jump_length=2,
                                                resample=3, callback=cb), 14),
    "ilvr": (lambda p, sr, cb: tasks.superres_ilvr(p, LOW, 2, steps=7, callback=cb), 7),
    "sr3": (lambda p, sr, cb: tasks.upscale(sr, LOW, 2, steps=5, callback=cb), 5),
    # two inversions over 5 levels (4 steps each), then 5 steps down to 0
    "interpolate": (lambda p, sr, cb: tasks.interpolate(p, X, X.flip(0), 3, steps=5, callback=cb), 13),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_total_is_the_number_of_callbacks(tiny_pipe, make_sr_pipe, name):
    call, expected = RUNS[name]
    seen = []
    call(tiny_pipe, make_sr_pipe(), lambda d: seen.append((d["i"], d["total"])))
    totals = {t for _, t in seen}
    assert totals == {len(seen)}
    if expected is not None:
        assert len(seen) == expected
    steps = [i for i, _ in seen]
    assert steps == sorted(set(steps))  # numbered through the whole task
    if name != "repaint":  # RePaint numbers its moves, the jumps back included
        assert steps == list(range(len(seen)))
