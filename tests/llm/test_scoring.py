"""One-pass serving score: level distribution and cumulative-probability partitioning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recis.errors import ConfigError
from recis.llm.model import load_model, load_tokenizer
from recis.llm.scoring import (
    cumulative_score,
    level_probs,
    level_token_ids,
    relevance_metrics,
)


def test_cumulative_score_equals_a_hand_computation():
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 1.0], [0.7, 0.1, 0.1, 0.1]])
    s = cumulative_score(p)
    # row 1: C_3 = 0.4 < 0.5 <= C_2 = 0.7 -> level 2; (2 + 1 - (0.5 - 0.4) / 0.3) / 4
    # row 2: one-hot level 3 -> middle of band 3: (3 + 1 - 0.5 / 1) / 4
    # row 3: C_1 = 0.3 < 0.5 <= C_0 = 1 -> level 0; (0 + 1 - (0.5 - 0.3) / 0.7) / 4
    want = torch.tensor([(3 - 0.1 / 0.3) / 4, 3.5 / 4, (1 - 0.2 / 0.7) / 4])
    assert torch.allclose(s, want, atol=1e-6)
    # quantile 0.75: the point with a quarter of the probability above it
    q = cumulative_score(p[:1], quantile=0.75)
    assert torch.allclose(q, torch.tensor([(3 + 1 - (0.25 - 0.0) / 0.4) / 4]), atol=1e-6)
    # more mass on higher levels never lowers the score
    assert s[1] > s[0] > s[2]


def test_level_probs_read_one_forward_pass_over_the_level_tokens(tiny):
    model, tok = load_model(tiny.base), load_tokenizer(tiny.base)
    ids = level_token_ids(tok, tiny.task.levels.names)
    exs = tiny.examples[:3]
    probs = level_probs(model, tok, tiny.task, exs, batch_size=3)
    assert probs.shape == (3, 4)
    for i, e in enumerate(exs):  # each alone, no padding: softmax over the 4 level logits
        enc = tok(tiny.task.serving_prefix(e), return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0, -1]
        assert torch.allclose(probs[i], torch.softmax(logits[ids], 0), atol=1e-5)
    m = relevance_metrics(probs, exs, tiny.task)
    labels = np.array([e.label for e in exs])
    assert m["accuracy"] == pytest.approx(float((probs.argmax(1).numpy() == labels).mean()))


def test_a_level_name_of_several_tokens_is_a_config_error(tiny):
    tok = load_tokenizer(tiny.base)
    with pytest.raises(ConfigError, match="levels.names"):
        level_token_ids(tok, ["0", "very relevant indeed"])
