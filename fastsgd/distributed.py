"""Data-parallel SGD over MPI processes (mpi4py and Open MPI, the ``mpi`` extra).

    mpiexec -n 4 fastsgd train --distributed --data DIR --digits all
    mpiexec -n 4 python script.py    # with  Learner(..., distributed=fastsgd.MPI())

Every rank runs the same program on its own rows of the data.  Two modes:

* synchronous (the default): every rank draws the same global permutation; each
  computes the mean gradient of its rows of every global batch of ``bs`` rows,
  weighted by its share of the batch's rows, and one ``Allreduce`` per step sums
  them over one flat buffer (all the gradients, the loss and a failure count).
  Every rank then applies the same SGD update, so training equals one process
  training with the global batch size, to float rounding.
* local SGD (``sync_every=k``): each rank takes SGD steps on its own rows alone
  and the ranks average their weights and velocities every ``k`` steps and at the
  end of each epoch.

Data is either the same on every rank (plain ``DataLoaders``; each global batch is
split evenly over the ranks) or sharded: ``MPI.dataloaders`` takes this rank's
rows alone, the data set being the ranks' rows in rank order (the command reads
only its rows of the IDX files).  Validation is split over the ranks the same way
and its sums reduced.

An error on one rank, in a step or another collective, reaches every rank through
that collective and is raised on all of them as ``DistributedError`` naming the
rank.  Anywhere else, ``fastsgd train`` prints it and ends the job (MPI_Abort); a
script's uncaught exception does the same.  A rank that dies (SIGKILL) makes
``mpiexec`` end the job.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import zlib

import numpy as np

from . import backends
from .learner import TrainingDiverged
from .loaders import DataLoader, DataLoaders

__all__ = ["MPI", "ShardLoader", "DistributedError", "batch_share", "shard_range"]

#: Exit code of ``fastsgd train --distributed`` on an error (as the command's own).
EXIT_ERROR = 2


class DistributedError(RuntimeError):
    """An error raised alike on every rank; the message names the rank it came from."""


def shard_range(n: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s rows of ``n`` split evenly over ``size`` ranks (sizes differ by at most one)."""
    return slice(n * rank // size, n * (rank + 1) // size)


def batch_share(batch_rows: int, rank: int, size: int) -> tuple[slice, float]:
    """Rank ``rank``'s slice of a batch of ``batch_rows`` rows and the weight of its mean
    gradient: its share of the rows, so that the weighted means sum to the batch's mean."""
    part = shard_range(batch_rows, rank, size)
    return part, (part.stop - part.start) / batch_rows


class ShardLoader(DataLoader):
    """A ``DataLoader`` over this rank's rows ``offset .. offset + len(x)`` of a data set of
    ``total`` rows spread over the ranks.

    ``n``, ``len`` and ``next_order`` are those of the whole data set (``bs`` is the
    global batch size), so a Learner schedules the same steps as on one process;
    iterating gives this rank's rows in order.
    """

    def __init__(self, x, y, bs: int, shuffle: bool, seed: int | None, offset: int, total: int):
        super().__init__(x, y, bs, shuffle, seed)
        self.bs, self.offset, self.total = int(bs), int(offset), int(total)

    def __len__(self):
        return math.ceil(self.total / self.bs)

    @property
    def n(self) -> int:
        """Rows of the whole data set."""
        return self.total

    def next_order(self) -> np.ndarray:
        """The next pass's order of the whole data set's rows."""
        return self._rng.permutation(self.total) if self.shuffle else np.arange(self.total)

    def __iter__(self):
        for start in range(0, len(self.x), self.bs):
            yield self.x[start:start + self.bs], self.y[start:start + self.bs]


class _Rows:
    """Rows x, y in order in batches of ``bs``, as ``Learner.validate`` reads a DataLoader."""

    def __init__(self, x, y, bs):
        self.x, self.y, self.bs, self.n = x, y, bs, len(x)

    def __iter__(self):
        for start in range(0, self.n, self.bs):
            yield self.x[start:start + self.bs], self.y[start:start + self.bs]


class _Steps:
    """One fused step on rows of a DataLoader, gathered into reused buffers."""

    def __init__(self, program, dl, size):
        self.program, self.dl = program, dl
        backend = program.backend
        self.x = backend.empty((size, dl.x.shape[1]), np.float32)
        self.y = backend.empty((size, *dl.y.shape[1:]), dl.y.dtype)

    def _gather(self, rows):
        m, backend = len(rows), self.program.backend
        x, y = self.x[:m], self.y[:m]
        backend.take_rows(self.dl.x, rows, out=x)
        backend.take_rows(self.dl.y, rows, out=y)
        return x, y

    def run(self, rows, lr, grads, momentum=0.0, weight_decay=0.0, velocities=None) -> float:
        """One SGD step on ``rows`` (``LayerProgram.step``); returns their loss."""
        return self.program.step(*self._gather(rows), lr, grads, momentum, weight_decay,
                                 velocities)

    def gradient(self, rows, grads) -> float:
        """The rows' loss and mean gradient into ``grads`` (``LayerProgram.gradient``)."""
        return self.program.gradient(*self._gather(rows), grads)


class _Program:
    """A ``LayerProgram`` whose ``run(lrs)`` trains the epoch over all the ranks."""

    def __init__(self, dist, learn, program):
        self.dist, self.learn, self.program = dist, learn, program

    def run(self, lrs) -> np.ndarray:
        return self.dist.run_epoch(self.learn, self.program, lrs)


_hook_installed = False


def _abort_on_uncaught(comm):
    """Make an uncaught exception end the whole job, not leave the other ranks waiting."""
    global _hook_installed
    if _hook_installed:
        return
    previous = sys.excepthook

    def hook(kind, value, traceback):
        previous(kind, value, traceback)
        sys.stderr.flush()
        comm.Abort(1)

    sys.excepthook, _hook_installed = hook, True


def _by_rank(values) -> str:
    """Each distinct value and the ranks that have it, e.g. "None on rank 0; 4 on ranks 1, 2"."""
    groups: list[tuple[object, list[int]]] = []
    for rank, value in enumerate(values):
        for seen, ranks in groups:
            if seen == value:
                ranks.append(rank)
                break
        else:
            groups.append((value, [rank]))
    return "; ".join(f"{value} on rank{'s' * (len(ranks) > 1)} "
                     f"{', '.join(map(str, ranks))}" for value, ranks in groups)


def _rates(lrs) -> str:
    """Step rates as a short text that differs when any rate does."""
    if not len(lrs):
        return "no steps"
    return (f"{len(lrs)} steps at {lrs[0]:.4g}..{lrs[-1]:.4g} "
            f"(crc32 {zlib.crc32(np.ascontiguousarray(lrs).tobytes()):08x})")


def _message(exc) -> str:
    """``exc`` as one line."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return " ".join(str(exc).split()) or type(exc).__name__


class MPI:
    """Data-parallel training over the ranks of an MPI communicator (mpi4py).

    ``sync_every``: None for exact synchronous SGD, or k for local SGD averaging
    weights and velocities every k steps.  ``comm`` defaults to ``COMM_WORLD``;
    then an uncaught exception on any rank aborts the whole job.  Pass the object
    as ``Learner(..., distributed=...)`` on every rank.  ``comm_seconds`` adds up
    the time spent in the per-step reductions.
    """

    def __init__(self, sync_every: int | None = None, comm=None):
        if sync_every is not None and (isinstance(sync_every, bool) or
                                       not isinstance(sync_every, (int, np.integer)) or
                                       sync_every < 1):
            raise ValueError(f"sync_every: expected a positive integer or None, got {sync_every!r}")
        if comm is None:
            try:
                from mpi4py import MPI as mpi
            except ImportError:
                raise RuntimeError("distributed training needs mpi4py: pip install "
                                   "'fastsgd[mpi]' and run under mpiexec") from None
            comm = mpi.COMM_WORLD
            _abort_on_uncaught(comm)
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.sync_every = None if sync_every is None else int(sync_every)
        self.comm_seconds = 0.0

    def __repr__(self):
        return f"MPI(rank {self.rank} of {self.size}, {self.mode})"

    @property
    def is_root(self) -> bool:
        """Whether this is rank 0, the one that prints and writes files."""
        return self.rank == 0

    @property
    def mode(self) -> str:
        """"sync" or "local sgd"."""
        return "sync" if self.sync_every is None else "local sgd"

    def settings(self) -> dict:
        """World size and mode, JSON-ready."""
        return {"world_size": self.size, "mode": self.mode, "sync_every": self.sync_every}

    def rows(self, n: int) -> slice:
        """This rank's share of ``n`` rows: the slice to keep of data every rank has."""
        return shard_range(n, self.rank, self.size)

    # ------------------------------------------------------------ collectives
    def _sum(self, buf):
        """Sum ``buf`` over the ranks, in place."""
        from mpi4py import MPI as mpi
        t0 = time.perf_counter()
        self.comm.Allreduce(mpi.IN_PLACE, buf, op=mpi.SUM)
        self.comm_seconds += time.perf_counter() - t0

    def _bcast(self, buf):
        """Rank 0's ``buf`` on every rank, in place."""
        self.comm.Bcast(buf, root=0)

    def _allgather(self, obj) -> list:
        return self.comm.allgather(obj)

    def _finalize(self):
        """End MPI on this rank, with every other rank (a collective)."""
        from mpi4py import MPI as mpi
        if self.comm is mpi.COMM_WORLD and not mpi.Is_finalized():
            mpi.Finalize()

    def abort(self, code: int):
        """End every rank of the job now with exit code ``code``."""
        self.comm.Abort(code)

    @contextlib.contextmanager
    def _reduced(self, buf):
        """Run the block, then sum ``buf`` over the ranks; its last slot counts the ranks
        where the block raised, and then every rank raises ``DistributedError``."""
        failure = None
        try:
            yield
        except (Exception, KeyboardInterrupt) as exc:
            failure = exc
        buf[-1] = failure is not None
        self._sum(buf)
        if buf[-1]:
            messages = self._allgather(None if failure is None else _message(failure))
            rank = next(r for r, m in enumerate(messages) if m is not None)
            raise DistributedError(f"rank {rank}: {messages[rank]}") from failure

    def agreed(self):
        """A block run on every rank: when it raises on any, ``DistributedError`` on all."""
        return self._reduced(np.zeros(1))

    def check_same(self, settings: dict):
        """Raise ``DistributedError`` on every rank unless every rank passed equal
        ``settings`` ({name: value}, values comparable with ``==``): one collective,
        so a setting that differs ends the job before any step that depends on it.  The
        message names the first setting that differs and each rank's value."""
        everyone = self._allgather(settings)
        for name in settings:
            values = [theirs.get(name) for theirs in everyone]
            if any(value != values[0] for value in values):
                raise DistributedError(f"ranks disagree on {name}: {_by_rank(values)}; "
                                       f"every rank needs the same")

    # ------------------------------------------------------------------ data
    def dataloaders(self, train_x, train_y, valid_x, valid_y, bs: int = 64,
                    seed: int | None = None, valid_bs: int | None = None) -> DataLoaders:
        """``DataLoaders.from_arrays`` of this rank's rows: the data set is the ranks' rows
        in rank order (``bs`` the global batch size, ``seed`` the same on every rank)."""
        everyone = np.array(self._allgather([len(train_x), len(valid_x)]), np.int64)
        offsets, totals = everyone[:self.rank].sum(axis=0), everyone.sum(axis=0)
        with self.agreed():
            train = ShardLoader(train_x, train_y, bs, True, seed, offsets[0], totals[0])
            valid = ShardLoader(valid_x, valid_y, valid_bs or max(bs, 1024), False, None,
                                offsets[1], totals[1])
            return DataLoaders.checked(train, valid)

    def load_data(self, args):
        """``fastsgd train``'s data, this rank's rows of it: (name, train_x, train_y,
        valid_x, valid_y) with ``--digits`` selected.  Reads only these rows of --data."""
        from . import data
        with self.agreed():
            if args.data:
                name = f"mnist ({args.data})"
                train = _read_rows(args.data, "train", self.rank, self.size)
                valid = _read_rows(args.data, "t10k", self.rank, self.size)
            else:
                dataset = data.load_embedded()
                name = dataset.name
                part = self.rows(len(dataset.train_x))
                train = dataset.train_x[part], dataset.train_y[part]
                part = self.rows(len(dataset.valid_x))
                valid = dataset.valid_x[part], dataset.valid_y[part]
            train_x, train_y = data.select_digits(*train, args.digits)
            valid_x, valid_y = data.select_digits(*valid, args.digits)
        counts = np.array(self._allgather((len(train_x), len(valid_x)))).sum(axis=0)
        for part, count in zip(("training", "validation"), counts):
            if count == 0:
                raise DistributedError(f"--digits: the {part} set of {name} holds none of "
                                       f"{','.join(map(str, args.digits))}")
        return name, train_x, train_y, valid_x, valid_y

    # ------------------------------------------------------- Learner's hooks
    def bind(self, learn):
        """Prepare ``learn`` on this rank (``Learner`` calls it): the same settings checked
        on every rank, rank 0's initial weights everywhere, and rank 0 alone printing."""
        params = learn.model.parameters()
        dl = learn.dls.train
        with self.agreed():
            if not all(isinstance(p.value, np.ndarray) and p.value.flags.c_contiguous
                       for p in params):
                raise ValueError(f"distributed training runs on the CPU backends, not "
                                 f"{learn.backend.name!r}")
            if dl.bs < self.size:
                raise ValueError(f"bs: the global batch size {dl.bs} is smaller than the "
                                 f"{self.size} ranks")
        self.check_same({
            "sync_every": self.sync_every, "model": " ".join(repr(learn.model).split()),
            "parameter shapes": [tuple(p.value.shape) for p in params],
            "backend": learn.backend.name, "dtype": str(params[0].value.dtype) if params else None,
            "bs": dl.bs, "training rows": dl.n, "validation rows": learn.dls.valid.n,
            "lr": learn.opt.lr, "momentum": learn.opt.momentum,
            "weight_decay": learn.opt.weight_decay, "loss": repr(learn.loss_func)})
        for p in params:
            self._bcast(p.value)
        if not self.is_root:
            learn.show, learn.progress = False, False

    def program(self, learn, program):
        """The program ``Learner`` trains its epochs with: ``program`` (a ``LayerProgram``)
        with each epoch spread over the ranks."""
        if program is None:
            raise DistributedError(f"distributed training runs on the fused path; this "
                                   f"Learner trains layer by layer: {learn.fused}")
        return _Program(self, learn, program)

    def run_epoch(self, learn, program, lrs) -> np.ndarray:
        """Train one epoch over all the ranks with step rates ``lrs``; returns each step's
        loss over the whole batch, stopping after the first that is not finite."""
        program.bind()
        dl = learn.dls.train
        lrs = np.asarray(lrs, np.float64)
        self.check_same({"epochs": learn.n_epochs, "epoch": learn.epoch,
                         "the epoch's learning rates (the schedule)": _rates(lrs)})
        order = np.ascontiguousarray(dl.next_order(), dtype=np.int64)
        self._bcast(order)                        # rank 0's order, whatever the seeds
        if len(lrs) != math.ceil(len(order) / dl.bs):
            raise ValueError(f"lrs: expected {math.ceil(len(order) / dl.bs)} rates, got {len(lrs)}")
        with backends.skip_value_checks():       # the data was checked once, losses are
            if self.sync_every is None:
                return self._synchronous(program, dl, learn.opt, order, lrs)
            return self._local(program, dl, learn.opt, order, lrs)

    def validate(self, learn) -> dict:
        """``learn.validate()`` over all the ranks' validation rows."""
        from .callbacks import metric_name
        dl = learn.dls.valid
        lo, hi, shift = self._own_range(dl)
        names = ["valid_loss", *(metric_name(m) for m in learn.metrics)]
        buf = np.zeros(len(names) + 2)                # sums | rows | failures
        with self._reduced(buf):
            if hi > lo:
                rows = _Rows(dl.x[lo - shift:hi - shift], dl.y[lo - shift:hi - shift], dl.bs)
                local = learn.validate(rows)
                buf[:len(names)] = [local[name] * rows.n for name in names]
            buf[len(names)] = hi - lo
        return {name: float(buf[i] / buf[len(names)]) for i, name in enumerate(names)}

    # ---------------------------------------------------------------- epochs
    def _own_range(self, dl) -> tuple[int, int, int]:
        """(first, end, shift): this rank's rows are [first, end) of the whole data set,
        at ``row - shift`` in its ``dl.x``."""
        if isinstance(dl, ShardLoader):
            return dl.offset, dl.offset + len(dl.x), dl.offset
        part = self.rows(len(dl.x))
        return part.start, part.stop, 0

    def _synchronous(self, program, dl, opt, order, lrs) -> np.ndarray:
        """Per step: the weighted mean gradient of this rank's rows, one Allreduce of
        [gradients | loss | failures], the same update on every rank."""
        backend, n_params, bs = program.backend, program.n_params, dl.bs
        buf = np.zeros(n_params + 2, np.float32)
        grads = buf[:n_params]
        velocities = program.velocities if opt.momentum else None
        steps = _Steps(program, dl, bs)
        sharded = isinstance(dl, ShardLoader)
        first, end, shift = self._own_range(dl)
        losses = []
        for step, lr in enumerate(lrs):
            batch = order[step * bs:(step + 1) * bs]
            if sharded:
                rows = batch[(batch >= first) & (batch < end)] - shift
                weight = len(rows) / len(batch)
            else:
                part, weight = batch_share(len(batch), self.rank, self.size)
                rows = batch[part]
            with self._reduced(buf):
                buf[:] = 0
                if len(rows):
                    loss = steps.gradient(rows, grads)
                    if weight != 1:
                        grads *= np.float32(weight)
                    buf[n_params] = loss * weight
            losses.append(float(buf[n_params]))
            if not math.isfinite(losses[-1]):
                break
            backend.sgd_update(program.params, grads, float(lr), opt.momentum,
                               opt.weight_decay, velocities)
        program.grads[...] = grads                # the last step's gradient, as on one process
        return np.array(losses)

    def _local(self, program, dl, opt, order, lrs) -> np.ndarray:
        """Local SGD: each rank steps on its own rows (in the global order, split into as
        many steps as the epoch has); weights and velocities averaged every
        ``sync_every`` steps and at the end, weighted by the ranks' rows."""
        first, end, shift = self._own_range(dl)
        own = order[(order >= first) & (order < end)] - shift
        n_steps, n_params = len(lrs), program.n_params
        weight = np.float32(len(own) / len(order))
        blocks = [program.params] + ([program.velocities] if opt.momentum else [])
        velocities = program.velocities if opt.momentum else None
        buf = np.zeros(n_params * len(blocks) + 1, np.float32)
        stats = np.zeros(2 * n_steps + 1)             # loss * rows | rows | failures
        steps = _Steps(program, dl, max(1, math.ceil(len(own) / n_steps)))
        for start in range(0, n_steps, self.sync_every):
            with self._reduced(buf):
                for step in range(start, min(start + self.sync_every, n_steps)):
                    rows = own[len(own) * step // n_steps:len(own) * (step + 1) // n_steps]
                    if len(rows):
                        loss = steps.run(rows, float(lrs[step]), program.grads, opt.momentum,
                                         opt.weight_decay, velocities)
                        stats[step], stats[n_steps + step] = loss * len(rows), len(rows)
                for i, block in enumerate(blocks):
                    np.multiply(block, weight, out=buf[i * n_params:(i + 1) * n_params])
            for i, block in enumerate(blocks):
                block[...] = buf[i * n_params:(i + 1) * n_params]
        with self._reduced(stats):
            pass
        sums, counts = stats[:n_steps], stats[n_steps:2 * n_steps]
        mean = sums.sum() / counts.sum()
        return np.divide(sums, counts, out=np.full(n_steps, mean), where=counts > 0)

    # ------------------------------------------------------------ the command
    @contextlib.contextmanager
    def guard(self):
        """Around a rank's whole run: an error every rank raised passes on rank 0 and
        exits quietly elsewhere; one on this rank alone is printed, naming the rank, and
        ends the whole job."""
        try:
            yield
        except (DistributedError, TrainingDiverged):
            self._finalize()
            if self.is_root:
                raise
            raise SystemExit(0) from None         # rank 0 reports it and sets the exit code
        except BaseException as exc:
            print(f"fastsgd train: error: rank {self.rank}: {_message(exc)}", file=sys.stderr,
                  flush=True)
            self.abort(130 if isinstance(exc, KeyboardInterrupt) else EXIT_ERROR)


def run_cli(args, run) -> int:
    """``fastsgd train --distributed``: ``run(args, dist)`` on every rank, with rank 0 alone
    printing (warnings included) and writing --save, --json and --plot."""
    dist = MPI(sync_every=args.sync_every)
    with dist.guard():
        if dist.is_root:
            return run(args, dist)
        args.save = args.json = args.plot = None
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), \
                contextlib.redirect_stderr(quiet):
            return run(args, dist)


def _read_rows(folder, split: str, rank: int, size: int):
    """Rank ``rank``'s share of the images (float32 features in [0, 1]) and labels (int64)
    of ``split`` ("train" or "t10k") of an MNIST folder, reading only those rows."""
    from . import data
    return data.read_mnist_rows(folder, split, lambda n: shard_range(n, rank, size))
