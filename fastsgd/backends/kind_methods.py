"""The methods named after each registry kind's kernels (``relu_forward``,
``mse_backward``, ...), derived from the registry records: ``contract.Backend``
inherits them, and each calls the generic ``activation_*`` / ``loss_*`` method."""
from . import program


class KindMethods:
    """``Backend``'s methods named after the kernels of each activation and loss kind."""


def _activation_methods(kind):
    """``Backend.<kind.forward>(x, out=None)`` and ``Backend.<kind.backward>(saved, dy,
    dx=None)``: ``activation_forward`` / ``activation_backward`` of a registry record."""
    def forward(self, x, out=None):
        return self.activation_forward(kind.name, x, out)

    def backward(self, saved, dy, dx=None):
        return self.activation_backward(kind.name, saved, dy, dx)

    saved = "x, the forward input" if kind.saves == "x" else "y, the forward output"
    _install(kind, forward, f"The {kind.name} layer of x, elementwise (``activation_forward``);"
             f"  x (any shape) -> out (x's shape).",
             backward, f"dL/dx of the {kind.name} layer from dy, reading {saved};  all of one "
             f"shape.")


def _loss_methods(kind):
    """``Backend.<kind.forward>(...)`` and ``Backend.<kind.backward>(..., out=None)``:
    ``loss_forward`` / ``loss_backward`` of a registry record, under its kernels'
    parameter names."""
    if kind.targets == "labels":
        def forward(self, logits, labels) -> float:
            return self.loss_forward(kind.name, logits, labels)

        def backward(self, logits, labels, dlogits=None):
            return self.loss_backward(kind.name, logits, labels, dlogits)
    else:
        def forward(self, preds, targets) -> float:
            return self.loss_forward(kind.name, preds, targets)

        def backward(self, preds, targets, dpreds=None):
            return self.loss_backward(kind.name, preds, targets, dpreds)

    shapes = {"binary": "preds (B,) or (B, 1) and 0/1 targets of the same length",
              "labels": "logits (B, C) and int64 labels (B,) in [0, C)",
              "real": "preds (B,) or (B, O) and float targets alike"}[kind.targets]
    _install(kind, forward, f"The mean {kind.name} loss (``loss_forward``);  {shapes}.",
             backward, f"The gradient of {kind.forward} (``loss_backward``), shaped like its "
             f"first input.")


def _install(kind, forward, forward_doc, backward, backward_doc):
    """Make ``forward`` and ``backward`` the methods named after ``kind``'s kernels."""
    for method, name, doc in ((forward, kind.forward, forward_doc),
                              (backward, kind.backward, backward_doc)):
        method.__name__, method.__qualname__, method.__doc__ = name, f"Backend.{name}", doc
        setattr(KindMethods, name, method)


for _kind in program.activations():
    _activation_methods(_kind)
for _kind in program.LOSSES.values():
    _loss_methods(_kind)
del _kind
