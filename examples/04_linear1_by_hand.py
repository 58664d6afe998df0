"""Chapter 4, "Putting It All Together": ``linear1`` trained by hand on the kernels.

One weight per pixel and a bias, the book's loop written out: for every mini-batch,
``linear_forward`` (predict), ``mnist_loss_forward`` (sigmoid, then how far from the
target), ``mnist_loss_backward`` and ``linear_backward`` (gradients), ``sgd_update``
(step).  After each epoch the validation accuracy is printed; it must rise.

    python examples/04_linear1_by_hand.py [--backend NAME]
"""
import argparse

import numpy as np

import fastsgd as fs
from fastsgd import data

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--backend", default=None, help="kernels to use (default: the fastest)")
k = fs.backends.get(parser.parse_args().backend)

ds = data.load_embedded()
train_x, train_y = data.select_digits(ds.train_x, ds.train_y, (3, 7))   # 3 -> 1.0, 7 -> 0.0
valid_x, valid_y = data.select_digits(ds.valid_x, ds.valid_y, (3, 7))
rng = np.random.default_rng(0)
w = rng.standard_normal((784, 1)).astype(np.float32)      # init: random, as in the book
b = rng.standard_normal(1).astype(np.float32)
bs, lr = 64, 1.0


def accuracy():
    return k.binary_accuracy(k.linear_forward(valid_x, w, b), valid_y)   # sigmoid(p) > 0.5


history = [accuracy()]
print(f"backend {k.name}, batch size {bs}, lr {lr}; before training: accuracy {history[0]:.2%}")
for epoch in range(20):
    losses = []
    order = rng.permutation(len(train_x))
    for start in range(0, len(order), bs):
        idx = order[start:start + bs]
        xb, yb = train_x[idx], train_y[idx]
        preds = k.linear_forward(xb, w, b)                          # (B, 1)
        losses.append(k.mnist_loss_forward(preds, yb))
        dpreds = k.mnist_loss_backward(preds, yb)                   # d loss / d preds
        _, dw, db = k.linear_backward(xb, w, dpreds, need_dx=False)
        k.sgd_update(w, dw, lr)                                     # w -= lr * dw
        k.sgd_update(b, db, lr)
    history.append(accuracy())
    print(f"epoch {epoch}: train mnist_loss {np.mean(losses):.4f}, "
          f"valid accuracy {history[-1]:.2%}")

assert history[-1] > history[0] + 0.2, "training should lift the accuracy well above the start"
assert history[-1] >= 0.95, "linear1 should pass 95% on 3s vs 7s"
print(f"linear1 by hand: accuracy {history[0]:.2%} -> {history[-1]:.2%}")
