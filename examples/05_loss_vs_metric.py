"""Chapter 4, "Calculating Gradients" and "Sigmoid": why accuracy is not the loss.

Accuracy only changes when a prediction crosses the threshold, so a small change of a
weight almost never changes it: its gradient is zero almost everywhere and SGD could
not move.  ``mnist_loss`` moves with every weight: it measures *how* confident each
prediction is, after ``sigmoid`` squashes the raw scores into (0, 1).

    python examples/05_loss_vs_metric.py [--backend NAME]
"""
import argparse

import numpy as np

import fastsgd as fs
from fastsgd import data

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--backend", default=None, help="kernels to use (default: the fastest)")
k = fs.backends.get(parser.parse_args().backend)

# Sigmoid squashes any score into (0, 1), smoothly and monotonically.
scores = np.array([-10, -4, -1, 0, 1, 4, 10], np.float32)
print("score   ", "  ".join(f"{s:6.1f}" for s in scores))
print("sigmoid ", "  ".join(f"{s:6.4f}" for s in k.sigmoid_forward(scores)))

# The book's three predictions: the loss says how far each is from its target.
targets = np.array([1, 0, 1], np.float32)
good = np.array([2.0, -0.4, -1.5], np.float32)                  # raw scores; the last is wrong
better = np.array([2.0, -0.4, -1.0], np.float32)                # the wrong one less wrong
for name, p in (("scores", good), ("nudged", better)):
    print(f"{name} {p}: mnist_loss {k.mnist_loss_forward(p, targets):.4f}, "
          f"accuracy {k.binary_accuracy(p, targets):.4f}")
assert k.mnist_loss_forward(better, targets) < k.mnist_loss_forward(good, targets)
assert k.binary_accuracy(better, targets) == k.binary_accuracy(good, targets)

# Random pixel weights on real images: nudge one weight and compare.
ds = data.load_embedded()
x, y = data.select_digits(ds.train_x, ds.train_y, (3, 7))
rng = np.random.default_rng(0)
w = rng.standard_normal((784, 1)).astype(np.float32)
b = np.zeros(1, np.float32)
pixel = int(np.argmax(x.mean(axis=0)))                           # an often-inked pixel
nudged = w.copy()
nudged[pixel] += 1e-3


def evaluate(weights):
    preds = k.linear_forward(x, weights, b)
    return k.binary_accuracy(preds, y), k.mnist_loss_forward(preds, y), preds


acc, loss, preds = evaluate(w)
acc2, loss2, _ = evaluate(nudged)
print(f"weight of pixel {pixel}: {w[pixel, 0]:.4f} -> {nudged[pixel, 0]:.4f}")
print(f"accuracy    {acc:.6f} -> {acc2:.6f}  (change {acc2 - acc:+.2e}: gradient zero)")
print(f"mnist_loss  {loss:.6f} -> {loss2:.6f}  (change {loss2 - loss:+.2e})")

_, dw, _ = k.linear_backward(x, w, k.mnist_loss_backward(preds, y), need_dx=False)
slope = (loss2 - loss) / 1e-3
print(f"d mnist_loss / d w[{pixel}]: kernels {dw[pixel, 0]:+.4e}, finite difference {slope:+.4e}")
assert acc2 == acc, "a tiny weight change should leave the accuracy where it was"
assert loss2 != loss, "the loss should feel the same change"
assert abs(slope - dw[pixel, 0]) <= 0.05 * abs(dw[pixel, 0]), "the kernel gradient is the slope"
