"""``fastsgd lr-find``: fastai's learning-rate finder on the model train would build."""
from __future__ import annotations

import sys

from .. import files
from .building import describe, headline, prepare
from .options import (
    TRAIN_DEFAULTS,
    UsageError,
    check_plot,
    refuse_options_that_do_not_apply,
    write_output,
)


def run_lr_find(args) -> int:
    """``fastsgd lr-find``: print the suggested learning rate; --plot draws the curve.

    The model, data and optimiser are built as ``train`` builds them.  When
    --plot is ``-`` (stdout), the text goes to stderr.
    """
    from .. import SGD, Learner

    given = {key for key in TRAIN_DEFAULTS if getattr(args, key, None) is not None}
    for key in (set(TRAIN_DEFAULTS) & set(vars(args))) - given:      # the defaults of the rest
        setattr(args, key, TRAIN_DEFAULTS[key])
    refuse_options_that_do_not_apply(args, given)
    if args.num_it < 2:
        raise UsageError(f"--num-it: expected at least 2 steps, got {args.num_it}")
    if args.plot:
        check_plot("--plot", args.plot)
    out = sys.stderr if files.is_stdout(args.plot) else sys.stdout
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
        write_output(args.plot, learn.recorder.plot_lr_find, out)
    return 0
