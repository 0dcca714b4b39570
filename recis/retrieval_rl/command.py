"""``recis train CONFIG`` for Retrieval-GRPO configs (``kind: retrieval_grpo``).

``--resume RUN_DIR`` continues a run (a saved stage is not retrained; GRPO continues from its
newest ``grpo/checkpoint-<step>``); ``--overwrite`` starts over in a used run directory.
"""

from __future__ import annotations

import argparse

from recis.retrieval_rl.config import load_run_config


def main(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, args.overrides)
    if args.resume is not None:
        cfg.run_dir = args.resume
    from recis.retrieval_rl.pipeline import main_train

    return main_train(cfg, resume=args.resume is not None, overwrite=args.overwrite)
