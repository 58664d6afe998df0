"""Chapter 4, "Stochastic Gradient Descent": a weight for every pixel.

Instead of comparing with an ideal image, give every pixel a weight and score an
image by ``(x * w).sum() + b``: high for a 3, low for a 7.  For a whole batch this is
one matrix product, ``x @ w + b``, which is the ``linear_forward`` kernel.  This script
scores images with random weights three ways (NumPy by hand, ``matmul``,
``linear_forward``) and checks they agree; random weights classify little better than a
coin, which is why they must be learned (the next scripts).

    python examples/02_pixel_weights.py [--backend NAME]
"""
import argparse

import numpy as np

import fastsgd as fs
from fastsgd import data

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--backend", default=None, help="kernels to use (default: the fastest)")
k = fs.backends.get(parser.parse_args().backend)
print(f"backend: {k.name}")

ds = data.load_embedded()
x, y = data.select_digits(ds.train_x, ds.train_y, (3, 7))       # x (800, 784), y 1.0 for a 3
rng = np.random.default_rng(0)
w = rng.standard_normal((784, 1)).astype(np.float32)            # one weight per pixel
b = rng.standard_normal(1).astype(np.float32)

by_hand = (x[0] * w[:, 0]).sum() + b[0]                         # one image, elementwise
print(f"image 0 (a {'3' if y[0] else '7'}): (x * w).sum() + b = {by_hand:.4f}")

with_matmul = k.matmul(x[:1], w)[0, 0] + b[0]                   # (1, 784) @ (784, 1)
print(f"image 0 with matmul:              {with_matmul:.4f}")

preds = k.linear_forward(x, w, b)                               # every image at once: (800, 1)
print(f"all {len(x)} images with linear_forward: preds {preds.shape}, "
      f"image 0 -> {preds[0, 0]:.4f}")

reference = x.astype(np.float64) @ w.astype(np.float64) + b
error = np.abs(preds - reference).max() / np.abs(reference).max()
print(f"largest difference from NumPy (float64), relative: {error:.2e}")
assert abs(by_hand - preds[0, 0]) <= 1e-4 * abs(reference).max()
assert abs(with_matmul - preds[0, 0]) <= 1e-4 * abs(reference).max()
assert error < 1e-5, "the kernels should compute x @ w + b"

accuracy = k.binary_accuracy(preds, y)                          # a 3 when the score is > 0
print(f"accuracy of random weights: {accuracy:.2%} (nothing learned yet)")
