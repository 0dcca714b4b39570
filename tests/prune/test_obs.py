"""The OBS core of recis.prune against closed forms computed directly (numpy / inverses)."""

from __future__ import annotations

import numpy as np
import torch

from recis.prune.obs import (
    HessianAccumulator,
    block_errors,
    column_errors,
    damped_inverse,
    head_columns,
    magnitude_channels,
    magnitude_heads,
    obs_remove,
    prune_channels,
    prune_heads,
)


def _layer(seed: int = 0, out: int = 5, width: int = 8, rows: int = 64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=g, dtype=torch.float64)
    x[:, 1] += 0.8 * x[:, 0]  # correlated inputs: the update has something to move
    w = torch.randn(out, width, generator=g, dtype=torch.float64)
    return x, w


def test_hessian_is_two_xtx_over_rows_and_accumulates() -> None:
    x, _ = _layer()
    acc = HessianAccumulator(1, x.shape[1])
    acc.add(x[None, :40])
    acc.add(x[None, 40:])
    np.testing.assert_allclose(acc.h[0].numpy(), 2 * x.T.numpy() @ x.numpy() / 64, rtol=1e-12)


def test_obs_update_of_one_column_is_the_closed_form() -> None:
    x, w = _layer()
    h = 2 * x.T @ x
    hinv = damped_inverse(h[None], damp=0.0)[0]
    q = 3
    new_w, _ = obs_remove(w[None], hinv[None], torch.tensor([[q]]))
    # by hand, numpy: delta = -W[:, q] / [H^-1]_qq * [H^-1]_q,:
    hi = np.linalg.inv(h.numpy())
    expected = w.numpy() - np.outer(w.numpy()[:, q] / hi[q, q], hi[q])
    np.testing.assert_allclose(new_w[0].numpy(), expected, atol=1e-10)
    assert np.all(new_w[0, :, q].numpy() == 0)
    # and it is the least-squares optimum of the remaining columns: no other W does better
    keep = [j for j in range(8) if j != q]
    y = x.numpy() @ w.numpy().T
    best, *_ = np.linalg.lstsq(x.numpy()[:, keep], y, rcond=None)
    np.testing.assert_allclose(new_w[0].numpy()[:, keep], best.T, atol=1e-8)


def test_obs_error_of_a_column_is_the_loss_increase() -> None:
    x, w = _layer(1)
    h = 2 * x.T @ x
    hinv = damped_inverse(h[None], damp=0.0)
    err = column_errors(w[None], hinv)[0]
    for q in (0, 5):
        new_w, _ = obs_remove(w[None], hinv, torch.tensor([[q]]))
        d = (new_w[0] - w) @ x.T  # output change [out, n]
        # H = 2 X^T X: the error is twice the squared change of the outputs
        np.testing.assert_allclose(2 * float((d**2).sum()), float(err[q]), rtol=1e-8)


def test_grouped_cholesky_head_error_equals_the_direct_inverse() -> None:
    g = torch.Generator().manual_seed(2)
    groups, out, heads, hd = 3, 6, 4, 3
    x = torch.randn(groups, 50, heads * hd, generator=g, dtype=torch.float64)
    w = torch.randn(groups, out, heads * hd, generator=g, dtype=torch.float64)
    acc = HessianAccumulator(groups, heads * hd)
    acc.add(x)
    hinv = damped_inverse(acc.h, damp=0.01)
    err = block_errors(w, hinv, head_columns(heads, hd, groups))  # [G, heads]
    for gi in range(groups):
        for h in range(heads):
            q = slice(h * hd, (h + 1) * hd)
            wq = w[gi][:, q].numpy()
            direct = np.trace(wq @ np.linalg.inv(hinv[gi][q, q].numpy()) @ wq.T)
            np.testing.assert_allclose(float(err[gi, h]), direct, rtol=1e-10)


def test_joint_removal_equals_sequential_single_removals() -> None:
    x, w = _layer(3)
    hinv = damped_inverse((2 * x.T @ x)[None], damp=0.0)
    joint, _ = obs_remove(w[None], hinv, torch.tensor([[2, 6]]))
    w1, h1 = obs_remove(w[None], hinv, torch.tensor([[2]]))
    seq, _ = obs_remove(w1, h1, torch.tensor([[6]]))
    np.testing.assert_allclose(joint.numpy(), seq.numpy(), atol=1e-10)


def test_head_pruning_picks_the_head_that_costs_nothing() -> None:
    x, w = _layer(4, width=12)
    w = w.clone()
    w[:, 6:9] = 1e-6  # head 2 of 4 (head_dim 3) contributes nothing
    hinv = damped_inverse((2 * x.T @ x)[None])
    removed, _ = prune_heads(w[None], hinv, head_dim=3, remove=1)
    assert removed.tolist() == [2]
    assert magnitude_heads(w[None], 3, 1).tolist() == [2]


def test_slimgpt_update_beats_selection_only_and_magnitude() -> None:
    x, w = _layer(5, out=6, width=16, rows=200)
    x[:, 8:] *= 0.1  # small inputs: magnitude of W alone misjudges these channels
    hinv = damped_inverse((2 * x.T @ x)[None])
    y = x @ w.T

    def loss(new_w: torch.Tensor) -> float:
        return float(((x @ new_w[0].T - y) ** 2).sum())

    removed, updated = prune_channels(w[None], hinv, remove=6)
    _, selected = prune_channels(w[None], hinv, remove=6, update=False)
    mag = magnitude_channels(w[None], 6)
    masked = w.clone()
    masked[:, mag[0]] = 0.0
    assert removed.shape == (1, 6)
    assert np.all(updated[0][:, removed[0]].numpy() == 0)
    assert loss(updated) < loss(selected) <= loss(masked[None])


def test_schedules_keep_the_overall_ratio_and_grow_with_depth() -> None:
    from recis.prune.schedule import layer_ratios, removal_counts

    assert layer_ratios(0.3, 4) == [0.3] * 4
    inc = layer_ratios(0.3, 6, "incremental")
    assert abs(sum(inc) / 6 - 0.3) < 1e-12
    assert inc[0] == 0.15 and all(a < b for a, b in zip(inc, inc[1:]))
    # logarithmic: the steps shrink with depth
    steps = [b - a for a, b in zip(inc, inc[1:])]
    assert all(a > b for a, b in zip(steps, steps[1:]))
    # one layer: the ratio rounded, one unit always kept
    assert removal_counts([0.3], [8]) == [2] and removal_counts([0.99], [4]) == [3]


def test_removal_counts_keep_the_models_share_where_layers_round_down() -> None:
    from recis.prune.schedule import layer_ratios, removal_counts

    # 30% of 8 heads rounds to 2 (25%) in each layer; the model loses 7 of 24 (29%), the
    # extra head in the deepest of the tied layers
    assert removal_counts([0.3] * 3, [8] * 3) == [2, 2, 3]
    assert removal_counts([0.3] * 2, [256] * 2) == [77, 77]  # nothing to carry: as round()
    assert removal_counts([0.5] * 3, [8] * 3) == [4, 4, 4]
    # the largest remainder wins before depth; one unit always stays
    assert removal_counts([0.45, 0.3], [8, 8]) == [4, 2]
    assert removal_counts([0.99, 0.99], [2, 2]) == [1, 1]
    inc = layer_ratios(0.3, 5, "incremental")
    counts = removal_counts(inc, [64] * 5)
    assert sum(counts) == round(0.3 * 64 * 5) and counts == sorted(counts)


def test_aligned_counts_keep_whole_vectors_and_the_models_share() -> None:
    from recis.prune.schedule import align_steps, removal_counts

    # heads of 4 columns with align 8 go in pairs, of 8 or 16 columns one by one
    assert align_steps(8, [4, 8, 16, 12]) == [2, 1, 1, 2] and align_steps(1, [4]) == [1]
    assert align_steps(16, [4, 8]) == [4, 2]
    # 30% of three FFNs of 256 in steps of 8: 76.8 asked each (153.6 in all), 72 each by
    # whole steps, the deeper layer gets 8 more (152); kept 184 and 176, both multiples of 8
    assert removal_counts([0.3] * 2, [256] * 2, [8, 8]) == [72, 80]
    # 30% of 8 heads x 3 in pairs: 7.2 asked, 6 by whole pairs; a pair more (8) is closer
    assert removal_counts([0.3] * 3, [8] * 3, [2] * 3) == [2, 2, 4]
    # the same in fours (head width 4, align 16): 0 by whole steps, then 4, 8 (|8 - 7.2| <
    # |4 - 7.2|); the shallowest stays whole
    assert removal_counts([0.3] * 3, [8] * 3, [4] * 3) == [0, 4, 4]
    # a layer with fewer than two steps of units, or not a whole number of them: step 1
    assert removal_counts([0.5, 0.5], [8, 12], [8, 8]) == [4, 6]
    counts = removal_counts([0.3] * 4, [128] * 4, [16] * 4)  # 153.6 asked
    assert all(c % 16 == 0 for c in counts) and abs(sum(counts) - 0.3 * 512) <= 8
