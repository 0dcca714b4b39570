"""``recis train CONFIG`` / ``recis eval CONFIG --checkpoint infonce|grpo`` for
Retrieval-GRPO configs (``kind: retrieval_grpo``).

``--resume RUN_DIR`` continues a run (a saved stage is not retrained; GRPO continues from its
newest ``grpo/checkpoint-<step>``); ``--overwrite`` starts over in a used run directory.
"""

from __future__ import annotations

import argparse

from recis.retrieval_rl.config import load_run_config


def main(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, args.overrides)
    from recis.retrieval_rl.pipeline import main_train

    if args.command == "eval":
        return main_train(cfg, False, False, stage=args.checkpoint)
    if args.resume is not None:
        cfg.run_dir = args.resume
    return main_train(cfg, resume=args.resume is not None, overwrite=args.overwrite)
