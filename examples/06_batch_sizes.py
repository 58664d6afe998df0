"""Chapter 4, "Stochastic Gradient Descent" and "DataLoaders": three batch sizes.

A step can average the gradient over one image (pure stochastic descent: many cheap,
noisy steps), a mini-batch (the usual choice), or the whole training set (one
precise, costly step per epoch).  The same ``simple_net`` trains with each, and all
three must pass 90% on 3s vs 7s within five epochs.

    python examples/06_batch_sizes.py [--backend NAME]
"""
import argparse

import numpy as np

import fastsgd as fs
from fastsgd import data

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--backend", default=None, help="kernels to use (default: the fastest)")
backend = parser.parse_args().backend

ds = data.load_embedded()
train_x, train_y = data.select_digits(ds.train_x, ds.train_y, (3, 7))
valid_x, valid_y = data.select_digits(ds.valid_x, ds.valid_y, (3, 7))

regimes = (("stochastic", 1, 0.1), ("mini-batch", 64, 1.0), ("full batch", len(train_x), 1.0))
results = {}
for name, bs, lr in regimes:
    fs.set_seed(0)                                              # the same initial weights
    dls = fs.DataLoaders.from_arrays(train_x, train_y, valid_x, valid_y, bs=bs, seed=0)
    learn = fs.Learner(dls, fs.simple_net(784, 30, 1), fs.mnist_loss, fs.SGD(lr),
                       metrics=[fs.batch_accuracy], backend=backend, show=False)
    history = learn.fit(5)
    accuracies = [row["batch_accuracy"] for row in history]
    seconds = np.median([row["seconds"] for row in history])
    results[name] = accuracies[-1]
    print(f"{name:10s}  bs {bs:3d}  {len(dls.train):3d} steps/epoch  lr {lr:<4}  "
          f"{seconds * 1e3:6.1f} ms/epoch  accuracy by epoch "
          + " ".join(f"{a:.1%}" for a in accuracies))

for name, accuracy in results.items():
    assert accuracy >= 0.90, f"{name} descent should pass 90% within five epochs"
print("every batch size learns: " + ", ".join(f"{n} {a:.2%}" for n, a in results.items()))
