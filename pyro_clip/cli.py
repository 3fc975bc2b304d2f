"""Command-line interface: ``pyro-clip demo | fit | evaluate | update | report | suite | list``.

Every ``fit`` flag can also come from ``--config file.yaml`` (flags win over the file).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyro_clip.errors import ConfigError, PyroClipError
from pyro_clip.pipeline.config import RunConfig, load_yaml_config, parse_option
from pyro_clip.suite.executors import EXECUTORS
from pyro_clip.utils.noise import third_party_quiet
from pyro_clip.utils.run_dirs import check_overwrite


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option's help that does not state its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or action.required \
                or not action.option_strings or isinstance(action, argparse._HelpAction):
            return text
        if action.default is None or action.default == []:
            return f"{text} (default: none)".strip()
        if action.default is False:
            return f"{text} (default: off)".strip()
        return f"{text} (default: %(default)s)".strip()


def _default(name: str) -> str:
    """`` (default: X)`` for a :class:`RunConfig` field (fit flags default to None so that a
    YAML file can set them; the value a run gets comes from the dataclass)."""
    field = RunConfig.__dataclass_fields__[name]
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return f" (default: {value})"


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of run options (flags override it)")
    p.add_argument("--method", help="adaptation method (pyro-clip list methods)"
                   + _default("method"))
    p.add_argument("--backbone", help="'conse' or 'open_clip:<model>[:<tag or checkpoint>]'"
                   + _default("backbone"))
    p.add_argument("--dataset", help="data set name (pyro-clip list datasets)"
                   + _default("dataset"))
    p.add_argument("--data-root", dest="data_root",
                   help="folder holding the images (default: none; the embedded sets need none)")
    p.add_argument("--split-file", dest="split_file",
                   help="split file: a run's split.json (folder) or a Dassl split_zhou_*.json "
                   "(default: none)")
    p.add_argument("--eval-dataset", dest="eval_datasets", action="append",
                   help="extra evaluation set, repeatable; keywords after a colon, e.g. "
                   "fashion-mnist-c:severity=5 (default: the data set's own shifted "
                   "companions: fashion-mnist-c for fashion-mnist, the ImageNet variants for "
                   "imagenet, none otherwise)")
    p.add_argument("--no-eval-datasets", action="store_true", help="evaluate on test only")
    p.add_argument("--protocol", choices=["few-shot", "base-to-new"],
                   help="evaluation protocol" + _default("protocol"))
    p.add_argument("--shots", type=int, help="training images per class" + _default("shots"))
    p.add_argument("--seed", type=int, help="seed of the few-shot sample and the fit"
                   + _default("seed"))
    p.add_argument("--template", dest="templates", action="append",
                   help="prompt with '{}', repeatable (default: the data set's standard templates)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method hyper-parameter, repeatable (default: the method's defaults)")
    p.add_argument("--batch-size", dest="batch_size", type=int,
                   help="images per encoder batch" + _default("batch_size"))
    p.add_argument("--cache-dir", dest="cache_dir",
                   help="feature cache folder (default: $PYRO_CLIP_CACHE, else ~/.cache/pyro_clip)")
    p.add_argument("--out", help="run folder (default: a fresh runs/<method>-<dataset>-"
                   "<shots>shot-s<seed>, numbered if taken; runs/latest points at it)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow --out to name a finished run, which is replaced (default: off)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars (default: bars on)")
    p.add_argument("--device", help="auto (CUDA when available) | cpu | cuda | cuda:N"
                   + _default("device"))
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                   help="backbone forward precision (autocast); the Bayesian maths keeps float64"
                   + _default("precision"))
    p.add_argument("--workers", type=int,
                   help="image-decoding worker processes (default: from the CPU count)")
    p.add_argument("--skip-corrupt", dest="skip_corrupt", action="store_true", default=None,
                   help="skip unreadable images (counted in config.json data_report) instead "
                        "of stopping (default: off)")


def build_config(args: argparse.Namespace) -> RunConfig:
    """YAML file (if any), then command-line flags on top."""
    data: dict[str, Any] = load_yaml_config(args.config) if args.config else {}
    options = dict(data.pop("options", {}) or {})
    for field in RunConfig.__dataclass_fields__:
        value = getattr(args, field, None)
        if value is not None and field != "options":
            data[field] = value
    if getattr(args, "no_eval_datasets", False):
        data["eval_datasets"] = []
    options.update(parse_option(o) for o in args.opt)
    data["options"] = options
    return RunConfig.from_dict(data).validate()


def cmd_fit(args: argparse.Namespace) -> int:
    from pyro_clip.pipeline.run import run

    cfg = build_config(args)
    if cfg.out is not None:
        check_overwrite(cfg.out, args.overwrite)
    result = run(cfg)
    from pyro_clip.reporting.tables import markdown_table, run_summary

    print(markdown_table([run_summary(result.out)]))
    print(f"outputs in {result.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pyro_clip.pipeline.evaluate import evaluate_run

    metrics = evaluate_run(args.run, args.dataset, args.out, data_root=args.data_root,
                           device=args.device, precision=args.precision)
    print(f"{args.dataset}: accuracy {100 * metrics['accuracy']:.1f}%, ECE {metrics['ece']:.3f}, "
          f"NLL {metrics['nll']:.3f}; outputs in {args.out}")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from pyro_clip.pipeline.update import update_run

    result = update_run(args.run, args.dataset, args.out, split=args.split, shots=args.shots,
                        seed=args.seed, data_root=args.data_root)
    rec = result.method.selected["updates"][-1]
    summary = ", ".join(f"{name} accuracy {100 * m['accuracy']:.1f}%"
                        for name, m in result.metrics.items()
                        if isinstance(m, dict) and "accuracy" in m and name != "base_to_new")
    new = f"; new classes {', '.join(rec['new_classes'])}" if rec["new_classes"] else ""
    print(f"filtered {rec['n_examples']} labelled image(s) into {args.run}{new}; {summary}; "
          f"outputs in {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pyro_clip.reporting.html import write_report

    path = write_report(args.runs, args.out)
    print(f"report written to {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pyro_clip.suite.demo import run_demo

    run_demo(Path(args.out), methods=args.methods, shots=args.shots, seed=args.seed,
             cache_dir=args.cache_dir, workers=args.workers)
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    from pyro_clip.suite import dry_run, load_suite

    suite = load_suite(args.config, data_root=args.data_root, out=args.out,
                       results=args.results, executor=args.executor, address=args.address,
                       workers=args.workers)
    plan = dry_run(suite)  # config errors raise before anything runs
    print(plan.summary())
    if plan.too_large:  # before hours are spent on the runs that fit
        raise ConfigError(
            f"{len(plan.too_large)} run group(s) of {suite.source} cannot run, e.g. "
            f"{plan.too_large[0]}; see the list above: choose smaller structures in "
            "method_options (e.g. kalman: {covariance: kron}) or set device_memory_gib")
    if args.dry_run:
        return 0
    from pyro_clip.suite import run_suite, write_results

    outcome = run_suite(suite, progress=args.progress)
    json_path, md_path = write_results(suite, outcome.runs, outcome.info())
    print(md_path.read_text())
    retried = sum(a > 1 for a in outcome.attempts.values())
    print(f"{len(outcome.seconds)} run(s) in {outcome.wall_seconds:.0f} s "
          f"({suite.executor} executor{f', {retried} retried' if retried else ''}), "
          f"{outcome.skipped} skipped (done before); results in {json_path} and {md_path}")
    if outcome.failures:
        print(f"{len(outcome.failures)} run(s) failed; see error.txt in their folders",
              file=sys.stderr)
        return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "options":
        from pyro_clip.methods import get_method_class, known_methods
        from pyro_clip.methods.options import format_table

        if args.name is None:
            raise ConfigError("name the method: pyro-clip list options <method>; methods: "
                              + ", ".join(known_methods()))
        print(format_table(get_method_class(args.name).OPTIONS, args.name))
        return 0
    if args.name is not None:
        raise ConfigError(f"'pyro-clip list {args.what}' takes no name (only 'list options' "
                          f"does), got {args.name!r}")
    if args.what == "methods":
        from pyro_clip.methods import known_methods

        names = known_methods()
    elif args.what == "datasets":
        from pyro_clip.data.registry import describe_datasets

        names = describe_datasets()
    else:
        from pyro_clip.backbones import known_backbones

        names = known_backbones()
    print("\n".join(names))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-clip", description=__doc__,
                                     formatter_class=_DefaultsFormatter)
    parser.add_argument("--verbose", action="store_true",
                        help="show third-party warnings and library logs too")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="every method on the embedded data, offline; prints a table",
        formatter_class=_DefaultsFormatter)
    demo.add_argument("--out", default="runs/demo",
                      help="folder of the demo's runs and report")
    demo.add_argument("--methods", nargs="*", help="subset of methods (default: all demo methods)")
    demo.add_argument("--shots", type=int, default=16, help="training images per class")
    demo.add_argument("--seed", type=int, default=1, help="seed of the few-shot sample and fits")
    demo.add_argument("--cache-dir", dest="cache_dir", help="feature cache folder (default: "
                      "$PYRO_CLIP_CACHE, else ~/.cache/pyro_clip)")
    demo.add_argument("--workers", type=int, default=None,
                      help="runs in parallel, one process and one torch thread each "
                      "(default: the CPU count, at most 2)")
    demo.set_defaults(func=cmd_demo)

    fit = sub.add_parser(
        "fit", help="fit one method and evaluate it",
        formatter_class=_DefaultsFormatter)
    _add_run_flags(fit)
    fit.set_defaults(func=cmd_fit)

    ev = sub.add_parser(
        "evaluate", help="evaluate a fitted run on another data set",
        formatter_class=_DefaultsFormatter)
    ev.add_argument("run", help="run folder written by 'pyro-clip fit'")
    ev.add_argument("--dataset", required=True, help="data set to evaluate on")
    ev.add_argument("--data-root", dest="data_root", help="folder holding its images")
    ev.add_argument("--out", required=True, help="folder for the evaluation's outputs")
    ev.add_argument("--device", default="auto",
                    help="auto (CUDA when available) | cpu | cuda | cuda:N")
    ev.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                    help="backbone forward precision now, whatever the run was fitted with")
    ev.set_defaults(func=cmd_evaluate)

    up = sub.add_parser(
        "update", formatter_class=_DefaultsFormatter,
        help="add labelled images to a fitted kalman run (no refit; new run folder, the old "
        "one untouched)")
    up.add_argument("run", help="run folder written by 'pyro-clip fit' or 'pyro-clip update'")
    up.add_argument("--dataset", required=True, help="data set holding the new labelled images")
    up.add_argument("--split", default="train", help="its split (default: train)")
    up.add_argument("--shots", type=int,
                    help="images per class to draw (default: every image not yet labelled)")
    up.add_argument("--seed", type=int, help="seed of the --shots draw (default: run seed + 1)")
    up.add_argument("--data-root", dest="data_root")
    up.add_argument("--out", required=True, help="new run folder")
    up.set_defaults(func=cmd_update)

    rep = sub.add_parser(
        "report", help="compare run folders side by side",
        formatter_class=_DefaultsFormatter)
    rep.add_argument("runs", nargs="+", help="run folders (each with metrics.json)")
    rep.add_argument("--out", default="runs/report", help="folder of report.html and its PNGs")
    rep.set_defaults(func=cmd_report)

    su = sub.add_parser(
        "suite", help="run a benchmark suite (YAML) and tabulate mean ± std",
        formatter_class=_DefaultsFormatter)
    su.add_argument("config", help="suite file, e.g. configs/bench/offline.yaml")
    su.add_argument("--dry-run", action="store_true",
                    help="validate every run, list missing data and estimate each run's "
                         "memory (failing runs above the suite's device_memory_gib); "
                         "load no weights")
    su.add_argument("--workers", type=int, default=None,
                    help="local: worker processes; ray: CPUs of a local cluster "
                         "(default: the suite's workers, 1)")
    su.add_argument("--executor", choices=list(EXECUTORS), default=None,
                    help="where runs execute (default: the suite's executor, local)")
    su.add_argument("--address", default=None,
                    help="ray: cluster address, e.g. auto or ray://head:10001 "
                         "(default: $RAY_ADDRESS, else a local cluster)")
    suite_file = " (default: the suite file's)"
    su.add_argument("--data-root", dest="data_root", help="override the suite's data_root"
                    + suite_file)
    su.add_argument("--out", help="override the suite's run folder" + suite_file)
    su.add_argument("--results", help="override the results path stem, .json and .md"
                    + suite_file)
    su.add_argument("--no-progress", dest="progress", action="store_false",
                    help="no progress bars (default: bars on)")
    su.set_defaults(func=cmd_suite)

    ls = sub.add_parser(
        "list", formatter_class=_DefaultsFormatter,
        help="list known methods, data sets, backbones, or a method's options "
        "(pyro-clip list options kalman)")
    ls.add_argument("what", choices=["methods", "datasets", "backbones", "options"])
    ls.add_argument("name", nargs="?", help="the method whose options to list")
    ls.set_defaults(func=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        with third_party_quiet(enabled=not args.verbose):
            return args.func(args)
    except PyroClipError as exc:  # user errors: one clear line, no traceback
        print(f"pyro-clip: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
