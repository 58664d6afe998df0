"""``fastsgd lr-find``: fastai's learning-rate finder on the model train would build."""
from __future__ import annotations

import sys

from .. import files
from .building import describe, headline, prepare
from .options import UsageError, check_plot


def run_lr_find(args) -> int:
    """``fastsgd lr-find``: print the suggested learning rate; --plot draws the curve.

    The model, data and optimiser are built as ``train`` builds them.  When
    --plot is ``-`` (stdout), the text goes to stderr.
    """
    from .. import SGD, Learner

    if args.num_it < 2:
        raise UsageError(f"--num-it: expected at least 2 steps, got {args.num_it}")
    if args.plot:
        check_plot("--plot", args.plot)
    out = sys.stderr if args.plot == files.STDOUT else sys.stdout
    run = prepare(args)
    learn = Learner(run.dls, run.model, run.loss, SGD(run.lr, run.momentum, args.wd),
                    backend=run.backend, show=False,
                    progress=False if args.no_progress else None)
    print(f"{headline(run.name, args)}, {run.dls.train.n} train, model {describe(run.model)}, "
          f"backend {run.backend.name}, momentum {run.momentum}", file=out, flush=True)
    suggestion = learn.lr_find(num_it=args.num_it)
    found = learn.recorder.lr_find
    print(f"suggested lr {suggestion:.3g} (lowest smoothed loss {found.smoothed.min():.4g} at lr "
          f"{10 * suggestion:.3g}, {len(found.lrs)} steps)", file=out, flush=True)
    if args.plot:
        learn.recorder.plot_lr_find(args.plot)
    return 0
