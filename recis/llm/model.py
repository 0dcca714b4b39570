"""The causal LM and its tokenizer: a local HF directory, or one built from scratch.

``scratch`` (tests, benchmarks, CPU experiments): a byte-level BPE tokenizer trained with the
``tokenizers`` library on the training text (prompts and completions, so every level name and
step word is in its vocabulary) and a random-initialised Llama of the configured size, saved
together as an HF directory. trl is always given a saved directory: given a model object it
tries to rebuild the reference model from the object's (empty) name.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from recis.errors import CheckpointError
from recis.llm.config import ScratchModelConfig

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def build_scratch(cfg: ScratchModelConfig, texts: Iterable[str], out_dir: str | Path) -> Path:
    """Train a tokenizer on ``texts``, build a random Llama, save both to ``out_dir``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_tokenizer(texts, cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=2 * cfg.hidden_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    out = Path(out_dir)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of an HF directory, with a pad token (the eos when it has none)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot load tokenizer: {err}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, device: str = "cpu", dtype: str = "float32") -> Any:
    """The causal LM of an HF directory on ``device``."""
    from transformers import AutoModelForCausalLM

    try:
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot load model: {err}") from None
    return model.to(device)
