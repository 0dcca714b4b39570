"""Generative relevance LLMs trained with reinforcement learning (application layer).

A user points a ``kind: relevance_llm`` config at a local HF causal LM (or a scratch one) and at
labelled (query, item) pairs, and chains stages: SFT -> DPO -> GRPO (TaoSR1), with the
TaoSR-AGRL, TaoSR-SHE and DyKnow-RAG variants of GRPO. The trained model scores a pair in one
forward pass (:mod:`recis.llm.scoring`). See docs/models/relevance_llm.md.

Modules: ``config`` (the run config), ``task`` (examples, prompts, completions), ``rationale``
(rule-written, code-checked steps), ``scoring`` (level distribution, cumulative-probability
score, metrics), ``advantages`` (the group rules' math), ``rewards``, ``grpo`` (the trl
GRPOTrainer subclass), ``stages`` (SFT, DPO, GRPO runners), ``pools`` (RL pools and the
curriculum), ``step_rm`` (TaoSR-SHE's step reward model), ``retrieval`` (BM25 chunks),
``model`` (scratch model and tokenizer), ``pipeline`` (a whole run), ``command`` (the CLI).

Only the CLI and another application (``recis.retrieval_rl``'s query-rewrite synthesis, which
trains its rewriter with these stages) import this package; it needs the ``llm`` extra (trl,
peft, accelerate, datasets) only when a stage runs.
"""
