"""RL-trained dense retrieval (issue 19): Retrieval-GRPO with the item index in the loop.

* :mod:`.index` - exact / faiss IVF top-K over the whole pool, refreshed every N steps,
  sharded search with a top-K merge;
* :mod:`.rewards` - reward components (relevance model, quality, exclusivity vs BM25, click)
  and their weighted sum;
* :mod:`.grpo` - group-normalised advantages, the policy over the K retrieved items, the
  clipped loss with a KL anchor; :mod:`.trainer` - the InfoNCE and GRPO stages;
* :mod:`.evaluate` - full-corpus Recall/HR/NDCG@K, head / long-tail, relevance@K;
* :mod:`.pipeline` / :mod:`.command` - ``recis train`` on a ``kind: retrieval_grpo`` config.
* LREM (reason, then embed): :mod:`.lrem` (the causal-LM query tower), :mod:`.lrem_train`
  (SFT + InfoNCE, RL over sampled reasonings sharing :mod:`.grpo`), :mod:`.lrem_router`
  (which queries are hard), :mod:`.lrem_pipeline` - ``recis train`` / ``recis eval`` on a
  ``kind: lrem`` config (:mod:`.lrem_config`).
* Query-rewrite synthesis: :mod:`.synth_rewards` (rewrite rewards, the offline retriever),
  :mod:`.synth_model` (the rewriter on trl), :mod:`.synth` (curation, parquet with provenance),
  :mod:`.synth_run` / :mod:`.synth_command` - ``recis synthesize`` (:mod:`.synth_config`),
  :mod:`.synth_dense` (a trained dual encoder as the retriever); ``data.extra_train`` mixes
  the pairs into a ``retrieval_grpo`` run.

docs/models/retrieval_rl.md describes the method, our readings of the papers, and figures.
"""
