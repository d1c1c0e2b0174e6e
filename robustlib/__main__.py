"""Command line: ``python -m robustlib run --profile quick``, ``python -m robustlib estimate --profile
paper-cifar10 --device cuda``, ``python -m robustlib book --profile quick`` and ``python -m robustlib profiles``.

A bad input is one line on stderr (``error: ...``) and exit status 2, before any notebook starts. Ctrl-C or
SIGTERM stops a run cleanly (exit 130 or 143) and says what was kept.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from .io import RobustlibError
from .profiles import PROFILES
from .run import run_sequence

_stopped_by = "SIGINT"


def _stop(signum, frame):
    """Ctrl-C and SIGTERM alike: ``KeyboardInterrupt``, after which what nbclient and asyncio log about the
    kernel being stopped (a dead kernel, an orphaned task) is noise."""
    global _stopped_by
    _stopped_by = signal.Signals(signum).name
    for name in ("papermill", "asyncio", "traitlets"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    raise KeyboardInterrupt


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise RobustlibError(f"cannot read --overrides-file {path} ({why}); pass a readable YAML file such as "
                             f"one holding '{{epochs: 5}}'") from None


def _overrides(text: str | None, path: str | None) -> dict:
    import yaml

    out: dict = {}
    for source, label in ((_read(path) if path else None, path), (text, "--overrides")):
        if not source:
            continue
        try:
            value = yaml.safe_load(source)
        except yaml.YAMLError as e:
            raise RobustlibError(f"{label} is not valid YAML ({str(e).splitlines()[0]}); "
                                 f"write it like '{{epochs: 5, lr: 0.01}}'") from None
        if not isinstance(value, dict):
            raise RobustlibError(f"{label} must be a YAML mapping such as '{{epochs: 5}}', got {value!r}")
        out.update(value)
    return out


def _estimate(args) -> int:
    from . import estimate
    from .config import setup
    from .launch import check_batch, parse_nproc

    if args.batches < 1:
        raise RobustlibError(f"--batches {args.batches} is invalid: time at least 1 batch per kind of work")
    cfg = setup(args.profile, device=args.device, run_dir=args.run_dir, smoke=args.smoke, create=False,
                overrides=_overrides(args.overrides, args.overrides_file))
    nproc = parse_nproc(args.nproc, "--nproc") if args.nproc is not None else 1   # this machine need not have them
    check_batch(nproc, cfg.profile.batch_size)
    only = [str(n)[:2] for n in args.only] if args.only else None
    done = estimate.finished_runs(cfg)
    print(f"estimating profile {cfg.profile.name!r}{' (smoke)' if cfg.smoke else ''} on {cfg.device}"
          f"{f': {len(done)} finished run(s) in {cfg.run_dir} are not counted' if done else ''} ...", flush=True)
    table = estimate.estimate(cfg, only=only, batches=args.batches, done=done, progress=args.verbose, nproc=nproc)
    print(estimate.summary(table))
    if nproc > 1:
        print(f"training: {nproc} processes, each timed at batch {cfg.profile.batch_size // nproc}, then one "
              f"all-reduce of the whole gradient per update (timed once per model where the device allows, see the "
              f"exchange rows; DDP's overlap with the backward pass and its buckets not modelled: an estimate); one "
              f"torchrun start (timed once) per training run, evaluation table and probe call; the evaluation tables' "
              f"and probes' attacks split among the processes, the rest in one process")
    if args.csv:
        from .io import write_csv
        write_csv(args.csv, table)
        print(f"work items: {args.csv}")
    return 0


def _book(args) -> int:
    from .book import build_book, default_run_dir, site_size

    if args.run_dir:
        run_dir, advice = args.run_dir, None
    else:
        run_dir = default_run_dir(args.profile, args.smoke)
        advice = (f"python -m robustlib run --profile {args.profile} --smoke" if run_dir.name.endswith("-smoke")
                  else f"make run PROFILE={args.profile}")
    index = build_book(run_dir, args.out, advice=advice)
    pages = len(list(index.parent.glob("*.html")))
    print(f"book: {index} ({pages} pages, {site_size(index.parent) / 1e6:.1f} MB; opens offline in a browser)")
    return 0


def main(argv: list[str] | None = None) -> int:
    global _stopped_by
    parser = argparse.ArgumentParser(prog="python -m robustlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the notebook sequence with papermill",
                         description="Execute notebooks/NN_*.ipynb in order for one profile; executed copies, "
                                     "metrics, checkpoints and figures go to the run directory.")
    run.add_argument("--profile", default="quick", help="quick (default), fashion, paper-mnist or paper-cifar10")
    run.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    run.add_argument("--run-dir", default=None, help="default: runs/<profile>")
    run.add_argument("--data-root", default=None, help="default: data/")
    run.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks, e.g. --only 02")
    run.add_argument("--overrides", default=None, help="profile fields as YAML, e.g. '{epochs: 5}'")
    run.add_argument("--overrides-file", default=None, help="the same, from a YAML file")
    run.add_argument("--smoke", action="store_true", default=None, help="the tiny test setting (seconds per notebook)")
    run.add_argument("--retrain", action="store_true", help="train again even if the run directory has checkpoints")
    run.add_argument("--log-output", action="store_true", help="stream the notebooks' output to this terminal")
    run.add_argument("--no-estimate", action="store_true", help="start without printing the predicted wall time")
    run.add_argument("--nproc", default=None, help="train each run, and attack each evaluation table's images, with this many "
                                                  "processes under torchrun, one GPU each on CUDA (default: "
                                                  "$ROBUSTLIB_NPROC or 1)")
    est = sub.add_parser("estimate", help="predict the wall time of the notebooks on a device",
                         description="Count the work of notebooks 00-06 from the profile and time each kind of "
                                     "work for a few batches on the device; print the predicted wall time per "
                                     "notebook and in total. Runs already finished in the run directory are not "
                                     "counted. Writes nothing.")
    for flag in ("--profile", "--device", "--run-dir", "--overrides", "--overrides-file", "--nproc"):
        est.add_argument(flag, default=run.get_default(flag[2:].replace("-", "_")),
                         help=next(a.help for a in run._actions if flag in a.option_strings))
    est.add_argument("--only", nargs="+", metavar="NN", help="estimate only these notebooks, e.g. --only 03 04")
    est.add_argument("--smoke", action="store_true", default=None, help="the tiny test setting")
    est.add_argument("--batches", type=int, default=3, help="batches timed per kind of work (default 3)")
    est.add_argument("--csv", default=None, help="also write every work item with its count and seconds here")
    est.add_argument("--verbose", action="store_true", help="a line per kind of work as it is timed")
    book = sub.add_parser("book", help="render a run's executed notebooks and report as a static HTML site",
                          description="Write index.html, one page per executed notebook and the report, with "
                                      "MathJax copied in so that math shows offline, to <run dir>/book.")
    book.add_argument("--profile", default="quick", help="the run directory runs/<profile> (default quick)")
    book.add_argument("--run-dir", default=None, help="another run directory (overrides --profile)")
    book.add_argument("--smoke", action="store_true", default=None, help="runs/<profile>-smoke, the smoke run's")
    book.add_argument("--out", default=None, help="the site's folder (default: <run dir>/book); replaced whole")
    sub.add_parser("profiles", help="list the profiles")
    args = parser.parse_args(argv)
    _stopped_by = "SIGINT"
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.command == "profiles":
            for p in PROFILES.values():
                print(f"{p.name:<14} {p.description}")
            return 0
        for sig in handlers:
            signal.signal(sig, _stop)
        if args.command == "estimate":
            return _estimate(args)
        if args.command == "book":
            return _book(args)
        run_sequence(args.profile, device=args.device, run_dir=args.run_dir, data_root=args.data_root,
                     only=args.only, overrides=_overrides(args.overrides, args.overrides_file), smoke=args.smoke,
                     retrain=args.retrain, log_output=args.log_output, estimate=not args.no_estimate,
                     nproc=args.nproc)
        return 0
    except RobustlibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how = "interrupted (Ctrl-C)" if _stopped_by == "SIGINT" else f"stopped by {_stopped_by}"
        if getattr(e, "run_dir", None) is None:
            print(f"{how} before the run started; nothing was written", file=sys.stderr)
        else:
            done = ", ".join(s[:2] for s in e.completed) or "none"
            print(f"{how}; completed notebooks: {done}; completed epochs are checkpointed in "
                  f"{e.run_dir / 'checkpoints'}; run the same command to resume", file=sys.stderr)
        return 143 if _stopped_by == "SIGTERM" else 130
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
