"""``selfsup`` command line: pretrain, eval, demo, list. Errors are one line naming the file or option."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, Sequence

from .config_args import add_run_flags, config_from_args, preset_names
from .export import add_parser as add_export_parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..data import DataError
    from ..engine.checkpoint import CheckpointError
    from ..engine.rundir import RunDirError
    from ..engine.trainer import TrainingError
    from ..errors import ConfigError
    from ..registry import UnknownNameError

    return (ConfigError, DataError, CheckpointError, RunDirError, TrainingError, UnknownNameError)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Exit code 0, or REQUEUE_EXIT_CODE (3) after the requeue signal: checkpointed, requeue the job (every rank
    under torchrun exits with the same code; docs/distributed.md, "Clusters: preemption and restarts")."""
    from ..api import pretrain
    from ..engine.signals import REQUEUE_EXIT_CODE

    cfg = config_from_args(args, cpu_defaults=True)
    res = pretrain(cfg, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    code = REQUEUE_EXIT_CODE if res.stopped == "requeue" else 0
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports
        return code
    print(f"{res.stopped}: {res.steps} steps ({res.epochs:.2f} epochs) in {res.wall_s:.0f}s, "
          f"{res.images_per_s:.0f} images/s, final loss {res.final_loss:.4f} → {res.run_dir}")
    return code


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation.protocols import parse_option_args
    from ..evaluation.runner import evaluate_run

    evaluate_run(args.run, args.protocol or ["knn", "linear"], eval_data=args.eval_train or args.eval_data,
                 eval_test=args.eval_test, device=args.device,
                 baseline=not args.no_baseline, seeds=args.seeds, epochs=args.epochs, fractions=args.fractions,
                 options=parse_option_args(args.set), selection=args.selection)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..api import pretrain
    from ..evaluation.runner import evaluate_run
    from .config_args import load_config_arg

    cfg = config_from_args(args, base=load_config_arg("demo-mnist"))
    print(f"demo: pretraining {cfg.method.name} ({cfg.backbone.name} width {cfg.backbone.width}) on "
          f"{cfg.data.path} for {cfg.train.epochs} epochs → {args.out}", flush=True)
    res = pretrain(cfg, args.out, overwrite=args.overwrite, resume=False, quiet=args.quiet)
    print(f"pretrained {res.steps} steps in {res.wall_s:.0f}s ({res.images_per_s:.0f} images/s); evaluating "
          "the pretrained backbone and its random-init baseline:", flush=True)
    evaluate_run(args.out, ["knn", "linear"], device=cfg.train.device)
    print(f"results: {args.out}/eval.json, curves: {args.out}/metrics.jsonl")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ..registry import AUGMENT_PRESETS, BACKBONES, DATASETS, EVALUATORS, METHODS

    regs = {"methods": METHODS, "backbones": BACKBONES, "datasets": DATASETS, "protocols": EVALUATORS,
            "augmentations": AUGMENT_PRESETS}
    if args.json:
        out: dict[str, Any] = {k: {e.name: e.help for e in r} for k, r in regs.items()}
        out["presets"] = preset_names()
        print(json.dumps(out, indent=2))
        return 0
    for title, reg in regs.items():
        print(f"{title}:")
        for e in reg:
            print(f"  {e.name:<16} {e.help}")
    print("presets (--config NAME):")
    for p in preset_names():
        print(f"  {p}")
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``selfsup pretrain: error: argument --epochs: invalid int value:
    'x' (see selfsup pretrain --help)``) instead of the usage block and the error; subcommands inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="selfsup", description="Self-supervised visual representation learning.")
    sub = p.add_subparsers(dest="command", required=True)

    pt = sub.add_parser("pretrain", help="pretrain an encoder without labels")
    add_run_flags(pt)
    pt.add_argument("--out", required=True, help="run directory")
    pt.add_argument("--resume", nargs="?", const="auto", default=None, choices=["auto"],
                    help="continue the run in --out from its newest readable checkpoint (a damaged one is skipped "
                         "with a warning); starts fresh when --out has no checkpoint yet, so one command line serves the "
                         "first launch and every restart (torchrun --max-restarts, a requeued job). `--resume` = "
                         "`--resume auto`")
    pt.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    pt.add_argument("--quiet", action="store_true")
    pt.set_defaults(fn=cmd_pretrain)

    ev = sub.add_parser("eval", help="evaluate a run (and its random-init baseline)")
    ev.add_argument("run", help="run directory")
    ev.add_argument("--protocol", action="append", help="knn, linear, ... (repeatable; default knn and linear)")
    ev.add_argument("--eval-data", help="evaluate on other labelled data with its own test split (transfer)")
    ev.add_argument("--eval-train", help="labelled folder or .npz the protocols train on (with --eval-test)")
    ev.add_argument("--eval-test", help="labelled folder or .npz the protocols are measured on")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--no-baseline", action="store_true", help="skip the random-init baseline")
    ev.add_argument("--seeds", type=int, default=1, help="repeats per protocol, reported as mean ± std")
    ev.add_argument("--epochs", type=int, help="epochs of trained protocols (linear-aug, mlp, finetune, ...)")
    ev.add_argument("--fractions", type=lambda v: [float(f) for f in v.split(",")], metavar="F,F",
                    help="label fractions of the semi protocol (default 0.01,0.1)")
    ev.add_argument("--selection", metavar="FILE", help="semi: train on the images of this selection file "
                    "(selfsup select) instead of random stratified fractions")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="protocol option, e.g. --set k=10 or --set finetune.lr_backbone=0.01")
    ev.set_defaults(fn=cmd_eval)

    de = sub.add_parser("demo", help="pretrain SimCLR on the embedded MNIST-5k and evaluate it against random init")
    add_run_flags(de)
    de.add_argument("--out", default="runs/demo")
    de.add_argument("--overwrite", action="store_true")
    de.add_argument("--quiet", action="store_true")
    de.set_defaults(fn=cmd_demo)

    from .compare import add_compare_parser
    add_compare_parser(sub)

    ls = sub.add_parser("list", help="list methods, backbones, datasets, protocols and presets")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=cmd_list)
    from .viz import add_parser as add_viz_parser
    add_viz_parser(sub)
    add_export_parser(sub)
    from .report import add_parser as add_report_parser
    add_report_parser(sub)
    from .study import add_parser as add_study_parser
    add_study_parser(sub)
    from .embed import add_parser as add_embed_parsers  # embed, neighbors
    add_embed_parsers(sub)
    from . import classify, select, shard
    select.add_parser(sub)
    classify.add_parsers(sub)
    shard.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"selfsup: warning: {msg}\n"
    try:
        return args.fn(args)
    except _user_errors() as e:
        print(f"selfsup: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # the environment, not a bug: a file that cannot be read or written, a full disk
        if e.filename is None and e.strerror is None:
            raise
        where = f"{e.filename}: " if e.filename is not None else ""
        print(f"selfsup: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


def one_line(message: str) -> str:
    """A user error is one stderr line: newlines of quoted input (a key, a path) are shown escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


if __name__ == "__main__":
    sys.exit(main())
