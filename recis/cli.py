"""The ``recis`` command line.

recis train CONFIG.yaml [--set a.b=value ...] [--resume RUN_DIR | --overwrite]
recis eval CONFIG.yaml --checkpoint DIR [--set ...]
recis plot RUN_DIR
recis doctor
recis split INPUT --out DIR --by random|time|leave-last-out|group [...]
recis init TRAIN --label COL [--eval FILE] [--out CONFIG.yaml] [--model dlrm|deepfm|deepbow] [...]
recis vocab build CONFIG.yaml [--set ...]
recis prune RUN_DIR --ratio R --out DIR [--calibration FILE] [--schedule S] [--method M] [--align N] [--finetune-steps N]
recis export RUN_DIR --out DIR [--format export|torchscript|onnx] [--int8-embeddings] [--keep K] [--delta]
             [--split-towers] [--items FILES] [--index flat|ivf] [--nlist N] [--nprobe N]
recis serve DIR [--port P] [--host H] [--batch-ms MS] [--threads N]
recis synthesize CONFIG | --model DIR --queries FILE --items FILE --pairs FILE --out FILE [...]

Every error is one line ``recis: error: ...`` on stderr and a non-zero exit status
(2: recis's own errors and bad arguments, 1: anything else, named by its type, 130:
Ctrl-C); ``--debug``, anywhere on the command line, prints the traceback before it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
import warnings
from typing import NoReturn

from recis.errors import RecisError


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other recis error (subcommand
    parsers are of this class too: argparse makes them of their parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"recis: error: {message} (see: {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="recis", description="recis: sparse-dense training for recommendation and search."
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of an error (accepted anywhere on the command line)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_train_eval(sub)
    help = "what is installed (torch, fbgemm, torchrec, CUDA, native ops, extras), what is missing"
    sub.add_parser("doctor", help=help, description=help)
    pl = sub.add_parser(
        "plot", help="write PNG curves of a run", description="write PNG curves of a run"
    )
    pl.add_argument("run_dir", help="run directory (holds metrics.jsonl)")
    _add_split(sub)
    _add_init(sub)
    _add_vocab(sub)
    _add_prune(sub)
    _add_serving(sub)
    _add_synthesize(sub)
    return p


def _add_synthesize(sub: argparse._SubParsersAction) -> None:
    """``recis synthesize``: query-rewrite synthesis (issue 19), docs/models/retrieval_rl.md."""
    from recis.retrieval_rl.synth_command import add_arguments

    help = "rewrite long-tail queries, retrieve, curate: query-item pairs with provenance"
    add_arguments(sub.add_parser("synthesize", help=help, description=help))


def _add_train_eval(sub: argparse._SubParsersAction) -> None:
    """``recis train`` and ``recis eval``: a YAML config, ``--set`` overrides, ``--launcher``."""

    def add(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("config", help="YAML run config")
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field, e.g. --set train.max_steps=100 (repeatable)",
        )
        return sp

    tr = add("train", "train a model from a YAML config")
    tr.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its newest checkpoint, or from the checkpoint "
        "RUN_DIR/checkpoints/step-N given instead (writes into RUN_DIR)",
    )
    tr.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the previous run in run_dir (its checkpoints/, metrics.jsonl, tb/, "
        "eval.json, config.yaml, plots/; nothing else is removed)",
    )
    ev = add("eval", "evaluate a checkpoint on the config's eval data")
    ev.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint folder (run_dir/checkpoints/NAME), single-process or distributed",
    )
    for sp in (tr, ev):
        sp.add_argument(
            "--launcher",
            choices=["auto", "none", "torchrun", "horovod"],
            default=None,
            help="how the processes were started (default: config distributed.launcher, "
            "'auto' detects torchrun / horovodrun from the environment); see "
            "docs/distributed.md",
        )


def _add_serving(sub: argparse._SubParsersAction) -> None:
    """``recis export`` and ``recis serve``: see recis.export, recis.serve, docs/serving.md."""
    help = "export a trained run as the next published version of an export folder"
    ep = sub.add_parser("export", help=help, description=help)
    ep.add_argument(
        "run_dir", help="trained run directory (config.yaml, checkpoints/; or a relevance-LLM run)"
    )
    ep.add_argument("--out", required=True, help="export folder (versions, latest)")
    ep.add_argument("--format", choices=["export", "torchscript", "onnx"], default="export")
    ep.add_argument("--int8-embeddings", action="store_true", help="row-wise INT8 tables")
    ep.add_argument("--keep", type=int, help="keep this many newest versions")
    ep.add_argument(
        "--checkpoint",
        help="checkpoint folder (default: best, final or newest); relevance LLM: a stage name "
        "or model directory (default: the last trained stage)",
    )
    ep.add_argument("--delta", action="store_true", help="only rows changed since latest")
    ep.add_argument(
        "--split-towers", action="store_true", help="export the towers apart (two_tower: always)"
    )
    ep.add_argument("--items", help="item / product corpus files (default: the run's train data)")
    ep.add_argument("--index", choices=["flat", "ivf"], default="flat", help="faiss item index")
    ep.add_argument("--nlist", type=int, help="IVF lists (default sqrt(items))")
    ep.add_argument("--nprobe", type=int, help="IVF lists searched per query (default 8)")
    help = "serve the latest READY version of an export folder over HTTP"
    sp = sub.add_parser("serve", help=help, description=help)
    sp.add_argument("out", help="export folder (written by recis export)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--poll", type=float, default=1.0, help="seconds between looks at latest")
    sp.add_argument("--batch-ms", type=float, default=0.0, help="batch requests within (ms)")
    sp.add_argument("--threads", type=int, default=1, help="intra-op threads per request")


def _serving(args: argparse.Namespace) -> None:
    if args.command == "serve":
        from recis.serve import serve

        serve(args.out, args.host, args.port, args.poll, args.batch_ms, args.threads)
        return
    from recis.export import ExportOptions, export_run
    from recis.export.index import IndexOptions

    options = ExportOptions(
        args.format, args.int8_embeddings, args.keep, args.checkpoint, delta=args.delta
    )
    options.split_towers, options.items = args.split_towers, args.items
    options.index = IndexOptions(args.index, args.nlist, args.nprobe)
    print(f"published {export_run(args.run_dir, args.out, options)}")


def _add_prune(sub: argparse._SubParsersAction) -> None:
    """``recis prune``: SlimGPT structured pruning, see recis.prune and docs/pruning.md."""
    help = "prune a trained run's transformer layers (heads, FFN channels) into a smaller run"
    pp = sub.add_parser("prune", help=help, description=help)
    pp.add_argument("run_dir", help="trained run directory (config.yaml, checkpoints/)")
    pp.add_argument("--ratio", type=float, required=True, help="share of heads/channels removed")
    pp.add_argument("--out", required=True, help="new run directory for the pruned model")
    pp.add_argument("--calibration", nargs="+", help="calibration file(s) (default: data.train)")
    pp.add_argument("--samples", type=int, default=256, help="calibration rows")
    pp.add_argument("--schedule", choices=["uniform", "incremental"], default="uniform")
    pp.add_argument("--method", choices=["slimgpt", "magnitude", "obs-select"], default="slimgpt")
    pp.add_argument(
        "--align", type=int, default=8, help="kept widths in multiples of this (1: exact counts)"
    )
    pp.add_argument("--checkpoint", help="checkpoint folder (default: best, final or newest)")
    pp.add_argument(
        "--finetune-steps", type=int, default=0, help="recovery fine-tune steps (0: none)"
    )
    pp.add_argument(
        "--finetune-lr-scale", type=float, default=0.1, help="of the run's learning rates"
    )


def _prune(args: argparse.Namespace) -> None:
    from recis.prune.finetune import FinetuneOptions
    from recis.prune.run import prune_run
    from recis.prune.slimgpt import PruneOptions

    options = PruneOptions(args.ratio, method=args.method, schedule=args.schedule, align=args.align)
    tune = None
    if args.finetune_steps:
        tune = FinetuneOptions(args.finetune_steps, args.finetune_lr_scale)
    report = prune_run(
        args.run_dir, args.out, options, args.calibration, args.samples, args.checkpoint, tune
    )
    ratio = report.params_after / max(1, report.params_before)
    print(
        f"pruned {len(report.layers)} layers in {report.seconds:.1f}s: dense parameters "
        f"{report.params_before} -> {report.params_after} ({ratio:.3f}) -> {args.out}"
    )


def _add_vocab(sub: argparse._SubParsersAction) -> None:
    """``recis vocab build``: see recis.io.vocab and docs/text.md."""
    help = (
        "subword vocabularies of the config's text features and statistics of its lexical"
        " features (fitted on the train files)"
    )
    vp = sub.add_parser("vocab", help=help, description=help)
    vsub = vp.add_subparsers(dest="vocab_command", required=True)
    help = "train and save every tokenizer.json and lexical statistics file the schema names"
    bp = vsub.add_parser("build", help=help, description=help)
    bp.add_argument("config", help="YAML run config")
    bp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _vocab(cfg, only_missing: bool) -> None:
    """Build the schema's vocabularies and fit its lexical features' statistics (all, or
    those missing: the step at train start)."""
    from recis.errors import ConfigError
    from recis.io.lexical import fit_lexical_stats, lexical_features
    from recis.io.vocab import build_vocabularies, vocab_features

    paths = [*vocab_features(cfg.data.schema_.text), *lexical_features(cfg.data.schema_.dense)]
    if not only_missing and not paths:
        raise ConfigError(
            "data.schema: no text feature has a tokenizer of kind vocab and no dense feature"
            " is lexical"
        )
    missing = [p for p in paths if not os.path.isfile(p)]
    if only_missing and not missing:
        return
    from recis.train.runner import prepare_data

    train_path, _, _ = prepare_data(cfg)
    for path, size in build_vocabularies(cfg.data, train_path, only_missing).items():
        if not only_missing or path in missing:
            print(f"vocabulary: {size} pieces -> {path}", flush=True)
    for path, pairs in fit_lexical_stats(cfg.data, train_path, only_missing).items():
        print(f"lexical statistics: {pairs} pairs -> {path}", flush=True)


def _add_split(sub: argparse._SubParsersAction) -> None:
    """``recis split``: see recis.split_command, recis.io.split and docs/evaluation.md."""
    from recis.split_command import HELP, add_arguments

    add_arguments(sub.add_parser("split", help=HELP, description=HELP))


def _add_init(sub: argparse._SubParsersAction) -> None:
    """``recis init``: see recis.init_command, recis.recipe and docs/data.md (recis init)."""
    from recis.init_command import HELP, add_arguments

    add_arguments(sub.add_parser("init", help=HELP, description=HELP))


def _init(args: argparse.Namespace) -> None:
    from recis.init_command import main

    main(args)


def _split(args: argparse.Namespace) -> None:
    from recis.split_command import main

    main(args)


def _print_result(result: dict) -> None:
    width = max(len(k) for k in result) if result else 0
    print("evaluation:")
    for k, v in result.items():
        if v is None:  # a metric that does not apply (e.g. AUC with one class)
            v = "n/a"
        print(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")


def _print_unevaluated(run_dir: str) -> None:
    """What a run without eval data trained: its steps and last training loss, and how to
    get an evaluation (instead of an empty ``evaluation:``)."""
    from recis.train.runlog import read_records

    train = [r for r in read_records(run_dir) if r.get("split") == "train" and "loss" in r]
    last = train[-1] if train else None
    done = f"; trained {last['step']} steps, last training loss {last['loss']:.4f}" if last else ""
    print(f"  none: no data.eval (recis init --eval FILE, or recis split makes one){done}")


def _interrupted(result: dict, run_dir: str, launcher: str = "none") -> int:
    """One line for a run stopped by SIGINT / SIGTERM: where its checkpoint is, how to go on;
    the exit status is 128 + the signal number (130, 143)."""
    name = str(result.get("stopped", "sigterm")).upper()
    print(
        f"recis: stopped by {name}: checkpoint {result['checkpoint']}; resume with: "
        f"recis train {run_dir}/config.yaml --resume {run_dir}"
        + (f" (under {launcher}, as this run)" if launcher != "none" else ""),
        file=sys.stderr,
    )
    return 130 if name == "SIGINT" else 143


def _resumed(cfg, resume: str | None):  # noqa: ANN001, ANN202
    """``cfg`` writing where ``--resume RESUME`` will write: the run directory given, or the
    one holding the checkpoint folder ``RUN_DIR/checkpoints/step-N`` given."""
    if resume is None:
        return cfg
    import dataclasses
    from pathlib import Path

    target = Path(resume)
    run_dir = target.parent.parent if target.parent.name == "checkpoints" else target
    return dataclasses.replace(cfg, run_dir=str(run_dir))


def _launcher(cfg, args: argparse.Namespace) -> str:
    """The launcher for this run: --launcher, else the config's, with ``auto`` resolved."""
    from recis.distributed.context import detect_launcher

    chosen = args.launcher or cfg.distributed.launcher  # train and eval both take --launcher
    return detect_launcher() if chosen == "auto" else chosen


def _fail(err: BaseException, debug: bool) -> int:
    """Report ``err`` as one line ``recis: error: ...`` on stderr (after its traceback with
    ``--debug``); returns the exit status: 2 for recis's errors, 130 for Ctrl-C, else 1."""
    if debug:
        traceback.print_exception(err)
    if isinstance(err, KeyboardInterrupt):
        msg, code = "interrupted (Ctrl-C)", 130
    elif isinstance(err, RecisError):
        msg, code = str(err), 2
    else:  # not one of ours: its type says what it is (OSError, RuntimeError from torch, ...)
        msg, code = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__, 1
    print("recis: error: " + re.sub(r"\s*\n\s*", " ", msg.strip()), file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run one ``recis`` command; returns its exit status (errors: see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    argv = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _warning_line
                # torch tells torchrec's developers (once a process, at the first batch) that
                # is_fx_tracing also covers torch.export: nothing a recis user can act on
                logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
            return _main(argv)
    except (Exception, KeyboardInterrupt) as err:
        return _fail(err, debug)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """A warning on the command line: one line ``recis: warning: ...`` (where it was raised
    only with ``--debug``)."""
    text = re.sub(r"\s*\n\s*", " ", str(message).strip())
    print(f"recis: warning: {text}", file=sys.stderr, flush=True)


def _is_relevance_llm(path: str) -> bool:
    """A ``kind: relevance_llm`` config: recis.llm trains and evaluates it (docs/models/
    relevance_llm.md), not the sparse-dense runner."""
    from recis.config import load_yaml
    from recis.llm.config import is_relevance_llm

    return is_relevance_llm(load_yaml(path))


def _is_retrieval_grpo(path: str) -> bool:
    """A ``kind: retrieval_grpo`` config: recis.retrieval_rl trains it (docs/models/
    retrieval_rl.md)."""
    from recis.config import load_yaml
    from recis.retrieval_rl.config import is_retrieval_grpo

    return is_retrieval_grpo(load_yaml(path))


def _is_lrem(path: str) -> bool:
    """A ``kind: lrem`` config (LREM reason-then-embed retrieval, docs/models/retrieval_rl.md)."""
    from recis.config import load_yaml
    from recis.retrieval_rl.lrem_config import is_lrem

    return is_lrem(load_yaml(path))


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _tool(args)
        return _configured(args) if code is None else code
    finally:
        sys.stdout.flush()  # results before the error line, in order


def _tool(args: argparse.Namespace) -> int | None:
    """The exit status of a command that needs no run config; None for one that does."""
    if args.command == "plot":
        from recis.train.plot import plot_run

        for path in plot_run(args.run_dir):
            print(path)
        return 0
    commands = {
        "prune": _prune,
        "split": _split,
        "init": _init,
        "export": _serving,
        "serve": _serving,
    }
    if args.command in commands:  # export, serve: issue 21
        commands[args.command](args)
        return 0
    if args.command == "synthesize":
        from recis.retrieval_rl.synth_command import main as synthesize  # issue 19

        return synthesize(args)
    if args.command == "doctor":
        from recis.doctor import main as doctor

        return doctor()
    if args.command in ("train", "eval") and _is_retrieval_grpo(args.config):
        from recis.retrieval_rl.command import main as retrieval_grpo  # issue 19

        return retrieval_grpo(args)
    if args.command in ("train", "eval") and _is_lrem(args.config):
        from recis.retrieval_rl.lrem_pipeline import main as lrem  # issue 19

        return lrem(args)
    if args.command in ("train", "eval") and _is_relevance_llm(args.config):
        from recis.llm.command import main as relevance_llm  # issue 18
        from recis.retrieval_rl.chunks import DenseChunkRetriever

        return relevance_llm(args, {"dense": DenseChunkRetriever.from_config})
    return None


def _configured(args: argparse.Namespace) -> int:
    """``vocab``, ``train`` and ``eval`` of a recis run config (one process or N)."""
    from recis.config import RunConfig, apply_overrides, complete_run_config, load_yaml, validate

    raw = apply_overrides(load_yaml(args.config), args.overrides)
    # every section but the model's first: a typo there is answered before torch and the
    # model zoo are imported (0.5 s instead of 7 on a 2-core machine)
    cfg = validate(RunConfig, raw)
    import recis.models  # noqa: F401  (registers the zoo's models that the model section needs)

    cfg = complete_run_config(cfg)
    if args.command == "vocab":
        _vocab(cfg, only_missing=False)
        return 0
    if args.command == "train":  # every output path writable, before reading any data
        from recis.config import check_outputs

        check_outputs(_resumed(cfg, args.resume))
        _vocab(cfg, only_missing=True)  # a vocabulary the config names but nobody built yet
    launcher = _launcher(cfg, args)
    # one path for one process and for N (torchrun, horovodrun): recis.distributed.run
    from recis.distributed import run

    if args.command == "train":
        result = run.train(cfg, launcher, resume=args.resume, overwrite=args.overwrite)
        if result is not None and result.get("checkpoint"):  # rank 0, stopped by a signal
            return _interrupted(result, cfg.run_dir, launcher)
        if result is not None:  # rank 0
            _print_result(result)
            if not set(result) - {"skipped_rows"}:
                _print_unevaluated(cfg.run_dir)
            print(f"run directory: {cfg.run_dir}")
    else:
        result = run.evaluate(cfg, args.checkpoint, launcher)
        if result is not None:  # rank 0
            _print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
