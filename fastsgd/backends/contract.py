"""The kernel contract: one validated front door to every backend's kernels.

Dimension letters used throughout fastsgd:
    B  batch size           I  in-features of a linear layer
    O  out-features         C  classes
    M, K, N                 a generic matmul (M, K) @ (K, N) -> (M, N)

Conventions:
    * A linear layer computes ``y = x @ w + b`` with ``x (B, I)``, ``w (I, O)``,
      ``b (O,)``: weights are stored (in, out), so the forward pass is a plain
      row-major matmul and no transposed copy is ever made.
    * Arrays are C-contiguous float32 (the ``numpy`` reference also takes float64,
      for gradient checks).  Integer class labels are int64.
    * Every kernel takes optional ``out=`` arrays; given them, a call allocates
      nothing.  Kernels return their outputs.

A backend module (``numpy_ref``, ``numba_cpu``, ...) provides the *implementations*
named in ``KERNELS`` (``spec.py``) with outputs passed last and always preallocated.
``Backend`` wraps such a module and its array adapter (``arrays.py``: host NumPy
arrays by default, device arrays for ``cuda``): each public method checks its
arguments through the adapter (raising ``TypeError`` or ``ValueError`` naming the
argument), allocates missing outputs, then calls the implementation.  Every check
and every error message is here, once for every device.  Shape, dtype, layout,
overlap and index-range checks are always on, so no implementation is handed an
array that makes compiled code read or write out of bounds; only the NaN/Inf scan
can be switched off (``skip_value_checks``).  Plain NumPy arguments of the matmul
family take a faster lane with the same checks (``host_lane.py``), where C's products
scan their outputs after the call instead of their inputs before it.
"""
from __future__ import annotations

import numpy as np

from . import host_lane, program
from .arrays import HOST, host_all_finite
from .kind_methods import KindMethods
from .spec import (
    _VALUE_CHECKS,
    KERNELS,
    OPTIONAL_KERNELS,
    SIGNATURES,
    activation_signatures,
    bind_dims,
    bounded_number,
    host_array,
    loss_signatures,
    missing_kernels,
    overlap_error,
    same,
    sgd_scalars,
    skip_value_checks,
    value_checks_enabled,
)

__all__ = ["Backend", "KERNELS", "OPTIONAL_KERNELS", "missing_kernels", "skip_value_checks",
           "value_checks_enabled"]

class Backend(KindMethods):
    """A backend's kernels under the contract's names.

    Obtain one with ``fastsgd.backends.get(name)``.  Every method validates its
    arguments before any compiled code runs.  ``dtypes`` lists the float types the
    backend computes in.
    """

    def __init__(self, name: str, impl, dtypes=(np.float32,), arrays=HOST):
        missing = missing_kernels(impl)
        if missing:
            raise TypeError(f"backend {name!r} does not implement the contract: {missing}")
        self.name = name
        self.dtypes = tuple(np.dtype(d) for d in dtypes)
        #: The array adapter (``arrays.py``): every check on an argument goes through it.
        self.arrays = arrays
        self._impl = impl
        #: Kernels the implementation offers without its own second check, for arguments
        #: the host lane accepted (``c_ext.PRECHECKED``).
        self._prechecked = getattr(impl, "PRECHECKED", {}) if arrays is HOST else {}

    def __repr__(self):
        return f"<fastsgd backend {self.name!r}>"

    @property
    def module(self):
        """The backend module whose implementations this backend calls."""
        return self._impl

    def supports(self, kernel: str) -> bool:
        """Whether this backend implements ``kernel`` (a name of ``KERNELS`` or ``OPTIONAL_KERNELS``)."""
        return kernel in KERNELS or (kernel in OPTIONAL_KERNELS and hasattr(self._impl, kernel))

    # ----------------------------------------------------------- arrays
    def asarray(self, x, dtype=np.float32):
        """``x`` as a C-contiguous array this backend computes on (a copy only if needed)."""
        return self.arrays.asarray(x, np.dtype(dtype))

    def to_numpy(self, x) -> np.ndarray:
        """A NumPy array holding the values of backend array ``x``."""
        return x if isinstance(x, np.ndarray) else self.arrays.to_numpy(x)

    def empty(self, shape, dtype=np.float32):
        """An uninitialised backend array."""
        return self.arrays.empty(shape, np.dtype(dtype))

    def zeros(self, shape, dtype=np.float32):
        """A zero-filled backend array."""
        return self.arrays.zeros(shape, np.dtype(dtype))

    def take_rows(self, src, idx, out):
        """``out[r] = src[idx[r]]``: gather a batch.

        src (N, F) or (N,) float32 or int64; idx (R,) int64; out (R, F) or (R,)
        of src's dtype.  Indices outside [0, N) raise ``IndexError``; inside
        ``skip_value_checks`` a device backend does not check them (the
        DataLoader's come from a permutation) and gives zero rows instead.
        """
        src = self._array("src", src)
        idx = self._array("idx", idx)
        if src.ndim not in (1, 2):
            raise ValueError(f"src: expected a 1-D or 2-D array, got shape {tuple(src.shape)}")
        if idx.dtype != np.int64 or idx.ndim != 1:
            raise TypeError(f"idx: expected a 1-D int64 array, got {idx.dtype} "
                            f"of shape {tuple(idx.shape)}")
        out = self._out("out", out, (idx.shape[0], *src.shape[1:]), src.dtype)
        self._apart([("out", out)], [("src", src), ("idx", idx)])
        if (_VALUE_CHECKS.get() and idx.shape[0]
                and self.arrays.count_outside(idx, 0, src.shape[0])):
            raise IndexError(f"idx: expected indices in [0, {src.shape[0]})")
        if idx.shape[0] and src.size:
            self.arrays.take_rows(src, idx, out)
        return out

    # ---------------------------------------------------- matmul, linear
    def matmul(self, a, b, out=None):
        """``out = a @ b``;  a (M, K), b (K, N) -> out (M, N)."""
        return self._product("matmul", (a, b, out))

    def matmul_backward_input(self, dy, w, dx=None):
        """``dx = dy @ w.T`` without a transposed copy;  dy (B, O), w (I, O) -> dx (B, I)."""
        return self._product("matmul_backward_input", (dy, w, dx))

    def matmul_backward_weight(self, x, dy, dw=None):
        """``dw = x.T @ dy`` without a transposed copy;  x (B, I), dy (B, O) -> dw (I, O)."""
        return self._product("matmul_backward_weight", (x, dy, dw))

    def bias_backward(self, dy, db=None):
        """``db = dy.sum(axis=0)``;  dy (B, O) -> db (O,)."""
        return self._product("bias_backward", (dy, db))

    def linear_forward(self, x, w, b, out=None):
        """``out = x @ w + b``;  x (B, I), w (I, O), b (O,) -> out (B, O)."""
        return self._product("linear_forward", (x, w, b, out))

    def linear_backward(self, x, w, dy, dx=None, dw=None, db=None, need_dx=True):
        """Gradients of ``y = x @ w + b``;  x (B, I), w (I, O), dy (B, O).

        Returns ``(dx (B, I), dw (I, O), db (O,))``; with ``need_dx=False`` (the
        first layer) ``dx`` is not computed and ``None`` is returned in its place.
        """
        return self._product("linear_backward", (x, w, dy, dx, dw, db),
                             skip=() if need_dx else ("dx",))

    def _product(self, kernel, args, skip=()):
        """Check matmul-family ``kernel``'s ``args`` against ``SIGNATURES``, call it.

        Its inputs are floats of one dtype with the declared shapes; each output is
        allocated when None (or left None when named in ``skip``), else checked, and
        never overlaps an input or another output.  Returns the output, or the
        tuple of them when there are several.
        """
        if self.arrays is HOST:
            lane, scan = _LANES[kernel], _VALUE_CHECKS.get()
            call = self._prechecked.get(kernel)
            after = scan and call is not None and not skip
            outs = host_lane.accept(lane, args, skip, self.dtypes, scan and not after)
            if outs is not None:
                inputs = args[:len(lane.reads)]
                if call is None:
                    getattr(self._impl, kernel)(*inputs, *outs)
                if (call is None or call(*inputs, *outs, after)
                        or host_lane.inputs_finite(lane, args)):
                    return outs[0] if len(outs) == 1 else tuple(outs)
        params = SIGNATURES[kernel]
        arrays, dtype = [], None
        for p, x in zip(params, args):
            if not p.written:
                x = self._float(p.name, x, ndim=len(p.dims), dtype=dtype)
                dtype = x.dtype
                arrays.append((p, x))
        dims = bind_dims([(p, x.shape) for p, x in arrays])
        outs = []
        for p, out in zip(params, args):
            if p.written:
                if p.name in skip:
                    outs.append((p.name, None))
                    continue
                outs.append((p.name, self._out(p.name, out, [dims[d] for d in p.dims], dtype)))
        inputs = [(p.name, x) for p, x in arrays]
        self._apart(outs, inputs)
        outs = [out for _, out in outs]
        getattr(self._impl, kernel)(*(x for _, x in inputs), *outs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    # ------------------------------------------------------ activations
    # Each kind also has its kernels' names as methods (relu_forward; after the class).
    def activation_forward(self, kind, x, out=None):
        """``out`` = the parameter-free layer ``kind`` (a name of ``program.LAYER_KINDS``)
        of ``x``, elementwise; out has x's shape and may be x itself."""
        return self._elementwise(program.layer_kind(kind), "forward", (x, out))

    def activation_backward(self, kind, saved, dy, dx=None):
        """dL/dx of the layer ``kind`` from ``dy``; ``saved`` is what its record says the
        backward reads, the forward's input x or its output y.  All of one shape."""
        return self._elementwise(program.layer_kind(kind), "backward", (saved, dy, dx))

    def _elementwise(self, kind, direction, args):
        """The ``direction`` kernel of activation ``kind`` (a record): its inputs (``x``,
        or the forward's saved ``x`` / ``y`` and ``dy``) of one shape and dtype; its output
        allocated or checked, of that shape, and either exactly an input (in place) or
        apart from them."""
        kernel = getattr(kind, direction)
        params = SIGNATURES.get(kernel) or activation_signatures(kind)[kernel]
        *args, out = args
        inputs = []
        for p, x in zip(params, args):
            if inputs:
                x = self._float(p.name, x, dtype=inputs[0].dtype)
                same(f"{p.name}.shape", x.shape, f"{params[0].name}.shape", inputs[0].shape)
            else:
                x = self._float(p.name, x)
            inputs.append(x)
        name = params[-1].name
        out = self._out(name, out, inputs[0].shape, inputs[0].dtype)
        self._apart([(name, out)], [(p.name, x) for p, x in zip(params, inputs)],
                    in_place=True)
        getattr(self._impl, kernel)(*inputs, out)
        return out

    # ----------------------------------------------------------- losses
    # Each loss kind also has its kernels' names as methods (mse_forward; after the class).
    def loss_forward(self, kind, preds, targets) -> float:
        """The mean loss ``kind`` (a name of ``program.LOSS_KINDS``) of a batch, its inputs
        checked as its record's targets say: "binary" preds (B,) or (B, 1) and targets of
        the same length, each 0 or 1; "labels" logits (B, C) and int64 labels (B,) in
        [0, C); "real" preds (B,) or (B, O) and float targets shaped alike ((B,) ~ (B, 1))."""
        record = program.loss_kind(kind)
        preds, targets, _ = self._loss_inputs(record, preds, targets)
        return float(getattr(self._impl, record.forward)(preds, targets))

    def loss_backward(self, kind, preds, targets, dpreds=None):
        """The gradient of ``loss_forward(kind, preds, targets)`` w.r.t. preds, shaped like
        preds; it may be written over preds itself, except for "labels" losses."""
        record = program.loss_kind(kind)
        names = self._loss_names(record)
        shape = self._array(names[0], preds).shape
        preds, targets, names = self._loss_inputs(record, preds, targets)
        dpreds = self._out(names[2], dpreds, shape, preds.dtype)
        self._apart([(names[2], dpreds)], [(names[0], preds), (names[1], targets)],
                    in_place=record.targets != "labels")
        getattr(self._impl, record.backward)(preds, targets, dpreds.reshape(preds.shape))
        return dpreds

    @staticmethod
    def _loss_names(record) -> list[str]:
        """The names of a loss's inputs and gradient, e.g. ["logits", "labels", "dlogits"]."""
        return [p.name for p in (SIGNATURES.get(record.backward)
                                 or loss_signatures(record)[record.backward])]

    def _loss_inputs(self, record, preds, targets):
        """(preds, targets, their names and the gradient's) as the loss's kernels take them:
        "binary" both (B,), "labels" logits (B, C) and labels (B,), "real" both flat."""
        names = self._loss_names(record)
        pname, tname, _ = names
        if record.targets == "labels":
            return (*self._classes(pname, preds, tname, targets), names)
        if record.targets == "binary":
            return (*self._binary(pname, preds, tname, targets), names)
        preds, targets = self._regression(pname, preds, tname, targets)
        return preds.reshape(-1), targets.reshape(-1), names

    # -------------------------------------------------------- optimizer
    def sgd_update(self, param, grad, lr, momentum=0.0, weight_decay=0.0, velocity=None):
        """One SGD step in place, PyTorch semantics; any shape.

        ``g = grad + weight_decay * param``; with momentum,
        ``velocity = momentum * velocity + g`` and ``g = velocity``;
        then ``param -= lr * g``.  ``velocity`` (shape of param, updated in
        place) is required when ``momentum != 0``.  Returns ``param``.
        """
        param = self._float("param", param, writable=True)
        grad = self._float("grad", grad, dtype=param.dtype)
        same("grad.shape", grad.shape, "param.shape", param.shape)
        lr = bounded_number("lr", lr, low=0.0)
        momentum, weight_decay = sgd_scalars(momentum, weight_decay, velocity,
                                              "sgd_update: velocity is")
        if momentum != 0.0:
            velocity = self._float("velocity", velocity, dtype=param.dtype, writable=True,
                                   check_values=False)
            same("velocity.shape", velocity.shape, "param.shape", param.shape)
        else:
            velocity = None
        self._apart([("param", param), ("velocity", velocity)], [("grad", grad)], in_place=True)
        self._impl.sgd_update(param, grad, lr, momentum, weight_decay, velocity)
        return param

    # ------------------------------------------------------- fused epoch
    def train_epoch(self, layers, loss_kind, x, targets, order, bs, lrs, params, grads,
                    velocities=None, momentum=0.0, weight_decay=0.0, losses=None):
        """One epoch of SGD over a layer program in one call (see ``program.py``).

        layers (L, 4) int64 host table and loss_kind (``program.LOSS_KINDS``) declare
        the program; params, grads (P,) float32 are the flat parameter and gradient
        blocks the table points into, updated in place; velocities (P,) the momentum
        buffers, required when ``momentum != 0`` and unused otherwise.  x (N, I);
        targets: (N,) 0/1 float32 for MNIST_LOSS (one output), (N,) int64 labels in
        [0, O) for CROSS_ENTROPY, (N, O) float32 (or (N,) when O == 1) for MSE; order
        (R,) int64 row indices in [0, N), step s training on rows order[s*bs:(s+1)*bs]
        (R = N for a whole epoch, fewer for a part of one); bs >= 1; lrs (steps,)
        float32 host array of finite rates >= 0, steps = ceil(R / bs); losses (steps,)
        float64 host array.

        Returns the losses of the steps run (a view of ``losses``): all of them, or up
        to and including the first that is not finite, where the epoch stopped before
        that step's update.  Only implemented where ``supports("train_epoch")``.
        """
        if not self.supports("train_epoch"):
            raise NotImplementedError(f"backend {self.name!r} has no fused train_epoch kernel")
        params = self._float("params", params, ndim=1, writable=True, check_values=False)
        n_in, n_out = program.check_layer_table(layers, params.shape[0])
        grads = self._out("grads", grads, params.shape, params.dtype)
        momentum, weight_decay = sgd_scalars(momentum, weight_decay, velocities,
                                              "train_epoch: velocities are")
        if momentum != 0.0:
            velocities = self._out("velocities", velocities, params.shape, params.dtype)
        else:
            velocities = None
        x = self._float("x", x, ndim=2, dtype=params.dtype)
        same("x.shape[1]", x.shape[1], "layers[0] n_in", n_in)
        n = x.shape[0]
        targets = self._program_targets(loss_kind, targets, n, n_out, params.dtype)
        order = self._array("order", order)
        if order.dtype != np.int64 or order.ndim != 1:
            raise ValueError(f"order: expected int64 row indices of shape (R,), got "
                             f"{order.dtype} of shape {tuple(order.shape)}")
        self._index_range("order", order, n, "indices")
        if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1:
            raise ValueError(f"bs: expected a positive integer batch size, got {bs!r}")
        steps = -(-order.shape[0] // int(bs))
        lrs = _host_array("lrs", lrs, np.float32, (steps,), "(ceil(R / bs),)")
        bad = np.flatnonzero(~(np.isfinite(lrs) & (lrs >= 0)))
        if bad.size:  # NaN, infinite or negative: refused as sgd_update refuses its lr
            bounded_number(f"lrs[{bad[0]}]", lrs[bad[0]], low=0.0)
        if losses is None:
            losses = np.zeros(steps, np.float64)
        losses = _host_array("losses", losses, np.float64, (steps,), "(ceil(R / bs),)",
                             writable=True)
        self._apart([("params", params), ("grads", grads), ("velocities", velocities),
                     ("losses", losses)],
                    [("layers", layers), ("x", x), ("targets", targets), ("order", order),
                     ("lrs", lrs)])
        done = int(self._impl.train_epoch(layers, int(loss_kind), x, targets, order,
                                          int(bs), lrs, params, grads, velocities,
                                          np.float32(momentum), np.float32(weight_decay),
                                          losses))
        return losses[:done + 1] if done < steps else losses

    def _program_targets(self, loss_kind, targets, n, n_out, dtype):
        """The one targets array ``train_epoch`` implementations take: labels (N,) int64 for
        a "labels" loss, else floats (N, O)."""
        if loss_kind not in program.LOSS_KINDS.values() or isinstance(loss_kind, bool):
            raise ValueError(f"loss_kind: expected one of {program.LOSS_KINDS}, got {loss_kind!r}")
        record = program.LOSSES[loss_kind]
        if record.targets == "labels":
            return self._indices("targets", targets, n, n_out, "labels",
                                 f"{record.name} expects int64 labels")
        if record.targets == "binary" and n_out != 1:
            raise ValueError(f"loss_kind: {record.name} needs a program with one output, "
                             f"this one has {n_out}")
        targets = self._float("targets", targets, dtype=dtype)
        if targets.ndim == 1 and n_out == 1:
            targets = targets.reshape(n, 1)
        if tuple(targets.shape) != (n, n_out):
            raise ValueError(f"targets: expected shape ({n}, {n_out}) to match x and the "
                             f"program's outputs, got {tuple(targets.shape)}")
        if record.targets == "binary":
            self._binary_values("targets", targets)
        return targets

    # ---------------------------------------------------------- metrics
    def binary_accuracy(self, preds, targets) -> float:
        """Fraction with ``(sigmoid(p) > 0.5) == (t == 1)``;  preds (B,) or (B, 1)."""
        preds, targets = self._binary("preds", preds, "targets", targets)
        return float(self._impl.binary_accuracy(preds, targets))

    def multiclass_accuracy(self, logits, labels) -> float:
        """Fraction with ``argmax(logits, axis=1) == labels``;  logits (B, C), labels (B,)."""
        logits, labels = self._classes("logits", logits, "labels", labels)
        return float(self._impl.multiclass_accuracy(logits, labels))

    # ------------------------------------------------------- validation
    def _array(self, name, x):
        """Reject what is not an array of this backend; a host array given to a device
        backend (a read-only input) is copied over.  Returns the backend array."""
        arrays = self.arrays
        if arrays.is_array(x):
            return x
        if isinstance(x, np.ndarray):
            if not x.flags.c_contiguous:
                raise ValueError(f"{name}: expected a C-contiguous array; "
                                 f"pass np.ascontiguousarray({name})")
            return arrays.to_backend(x)
        raise TypeError(f"{name}: expected {arrays.accepts}, got {type(x).__name__}")

    def _float(self, name, x, ndim=None, dtype=None, writable=False, check_values=True):
        """Check a float input: type, dtype, ndim, layout, non-empty, finite; return it
        as a backend array."""
        arrays = self.arrays
        if not arrays.is_array(x):
            if not isinstance(x, np.ndarray):
                raise TypeError(f"{name}: expected {arrays.accepts}, got {type(x).__name__}")
            if writable:
                raise TypeError(f"{name}: expected {arrays.name} (it is updated in place), "
                                f"got a numpy.ndarray; move it with backend.asarray({name})")
        if dtype is None:
            if x.dtype not in self.dtypes:
                allowed = " or ".join(str(d) for d in self.dtypes)
                raise TypeError(f"{name}: expected dtype {allowed}, got {x.dtype}"
                                f" (backend {self.name!r})")
        elif x.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} to match the other inputs, "
                            f"got {x.dtype}")
        shape = tuple(x.shape)
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{name}: expected a {ndim}-D array, got shape {shape}")
        if x.size == 0:
            raise ValueError(f"{name}: empty array (shape {shape}); "
                             f"expected at least one element")
        host = isinstance(x, np.ndarray)
        if not (x.flags.c_contiguous if host else arrays.contiguous(x)):
            raise ValueError(f"{name}: expected a C-contiguous array; "
                             f"pass np.ascontiguousarray({name})")
        if writable and not arrays.writable(x):
            raise ValueError(f"{name}: expected a writable array (it is updated in place)")
        if check_values and _VALUE_CHECKS.get():
            if not (host_all_finite(x) if host else arrays.all_finite(x)):
                raise ValueError(f"{name}: contains NaN or Inf; expected finite values")
        return x if arrays.is_array(x) else arrays.to_backend(x)

    def _out(self, name, out, shape, dtype):
        """Allocate ``out`` or check the given one (``_apart`` checks its overlaps)."""
        arrays = self.arrays
        shape = tuple(shape)
        if out is None:
            return self.empty(shape, dtype)
        if not arrays.is_array(out):
            got = "a numpy.ndarray" if isinstance(out, np.ndarray) else type(out).__name__
            if arrays.device:
                raise TypeError(f"{name}: expected {arrays.name} (outputs are written on "
                                f"the device), got {got}; allocate it with backend.empty")
            raise TypeError(f"{name}: expected {arrays.accepts}, got {got}")
        if out.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype}, got {out.dtype}")
        if tuple(out.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(out.shape)}")
        if not arrays.contiguous(out):
            raise ValueError(f"{name}: expected a C-contiguous array")
        if not arrays.writable(out):
            raise ValueError(f"{name}: expected a writable array")
        return out

    def _apart(self, written, read, in_place=False):
        """The overlap rule (``spec.overlap_error``) on ``(name, array)`` pairs: no array
        written shares memory with an array read, of whatever dtype, or with another array
        written; with ``in_place`` (elementwise kernels) one may be exactly an input of its
        dtype.  Host arrays beside a device backend's arrays are compared among themselves.
        """
        arrays = self.arrays

        def may_overlap(a, b):
            if arrays.is_array(a) and arrays.is_array(b):
                return arrays.may_overlap(a, b)
            if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
                return bool(np.may_share_memory(a, b))
            return False   # one in host memory, the other on the device

        def exactly(out, x):
            return out.dtype == x.dtype and arrays.same_memory(out, x)

        error = overlap_error(written, read, may_overlap, exactly if in_place else None)
        if error is not None:
            raise error

    def _binary(self, pname, preds, tname, targets):
        """preds (B,) or (B, 1) floats and matching 0/1 targets, both as (B,) views."""
        preds = self._float(pname, preds)
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds.reshape(-1)
        if preds.ndim != 1:
            raise ValueError(f"{pname}: expected shape (B,) or (B, 1), got {tuple(preds.shape)}")
        targets = self._float(tname, targets, dtype=preds.dtype)
        targets = targets.reshape(-1) if targets.ndim == 2 and targets.shape[1] == 1 else targets
        if tuple(targets.shape) != tuple(preds.shape):
            raise ValueError(f"{tname}: expected {preds.shape[0]} targets to match {pname}, "
                             f"got shape {tuple(targets.shape)}")
        self._binary_values(tname, targets)
        return preds, targets

    def _binary_values(self, name, targets):
        if self.arrays.count_not_binary(targets):
            raise ValueError(f"{name}: expected every target to be 0 or 1")

    def _regression(self, pname, preds, tname, targets):
        """preds (B,) or (B, O) floats and real targets of the same shape ((B,) ~ (B, 1))."""
        preds = self._float(pname, preds)
        if preds.ndim not in (1, 2):
            raise ValueError(f"{pname}: expected shape (B,) or (B, O), got {tuple(preds.shape)}")
        targets = self._float(tname, targets, dtype=preds.dtype)
        shape, tshape = tuple(preds.shape), tuple(targets.shape)
        if tshape != shape and not (len(shape) + len(tshape) == 3
                                    and preds.size == targets.size == shape[0]):
            raise ValueError(f"{tname}: expected shape {shape} to match {pname}, got {tshape}")
        return preds, targets

    def _index_range(self, name, indices, high, what="indices"):
        """Every value of int64 ``indices`` (``what``: "indices", "labels") lies in [0, high)."""
        if indices.size and self.arrays.count_outside(indices, 0, high):
            values = self.to_numpy(indices)  # only to name the offending values
            raise ValueError(f"{name}: {what} must lie in [0, {high}), "
                             f"got values from {values.min()} to {values.max()}")

    def _indices(self, name, x, n, high, what, expects):
        """``x`` as an int64 (n,) array of ``what`` in [0, high) (they index memory);
        ``expects`` begins the message when its dtype or shape is wrong."""
        x = self._array(name, x)
        if x.dtype != np.int64 or tuple(x.shape) != (n,):
            raise ValueError(f"{name}: {expects} of shape ({n},), got {x.dtype} "
                             f"of shape {tuple(x.shape)}")
        self._index_range(name, x, high, what)
        return x

    def _classes(self, zname, logits, lname, labels):
        """logits (B, C) floats and labels (B,) int64 in [0, C)."""
        logits = self._float(zname, logits, ndim=2)
        labels = self._array(lname, labels)
        if labels.dtype != np.int64:
            raise TypeError(f"{lname}: expected dtype int64, got {labels.dtype}")
        if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"{lname}: expected shape ({logits.shape[0]},) to match {zname}, "
                             f"got {tuple(labels.shape)}")
        if not self.arrays.contiguous(labels):
            raise ValueError(f"{lname}: expected a C-contiguous array")
        self._index_range(lname, labels, logits.shape[1], "labels")
        return logits, labels


#: The host lane's checks of each matmul-family kernel (``Backend._product``).
_LANES = {kernel: host_lane.plan(SIGNATURES[kernel])
          for kernel in ("matmul", "matmul_backward_input", "matmul_backward_weight",
                         "bias_backward", "linear_forward", "linear_backward")}


def _host_array(name, x, dtype, shape, source, writable=False) -> np.ndarray:
    """A host (NumPy) array of exactly ``dtype`` and ``shape``, C-contiguous."""
    host_array(name, x, dtype)
    if x.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} = {source}, got {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array")
    if writable and not x.flags.writeable:
        raise ValueError(f"{name}: expected a writable array")
    return x
