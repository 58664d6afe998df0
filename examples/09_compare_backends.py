"""One model, every backend: the kernel contract at work.

The trainer never names a backend; it calls kernels through one.  Here the same
``simple_net`` trains from the same seed on each available backend (``numpy``, the
reference; ``c`` and ``numba`` on the CPU; ``cuda`` when there is a GPU).  The
accuracies must agree within one point; the time per epoch is what differs.  The
first run of ``numba`` also compiles its kernels (cached afterwards).

    python examples/09_compare_backends.py
"""
import time

import numpy as np

import fastsgd as fs
from fastsgd import data

ds = data.load_embedded()
train_x, train_y = data.select_digits(ds.train_x, ds.train_y, (3, 7))
valid_x, valid_y = data.select_digits(ds.valid_x, ds.valid_y, (3, 7))

accuracies = {}
for name, status in fs.backends.available().items():
    if status is not True:
        print(f"{name:6s} skipped: {status}")
        continue
    fs.set_seed(0)
    dls = fs.DataLoaders.from_arrays(train_x, train_y, valid_x, valid_y, bs=64, seed=0)
    learn = fs.Learner(dls, fs.simple_net(784, 30, 1), fs.mnist_loss, fs.SGD(1.0),
                       metrics=[fs.batch_accuracy], backend=name, show=False)
    started = time.perf_counter()
    history = learn.fit(5)
    first = history[0]["seconds"]                              # includes any compilation
    later = np.median([row["seconds"] for row in history[1:]])
    accuracies[name] = history[-1]["batch_accuracy"]
    print(f"{name:6s} accuracy {accuracies[name]:.2%}  first epoch {first * 1e3:7.1f} ms, "
          f"then {later * 1e3:6.1f} ms/epoch  (fused {learn.fused}, "
          f"{time.perf_counter() - started:.2f} s in all)")

spread = max(accuracies.values()) - min(accuracies.values())
print(f"{len(accuracies)} backends agree: accuracies within {spread * 100:.1f} points")
assert "numpy" in accuracies, "the reference backend is always available"
assert spread <= 0.01, "every backend should train the model to the same accuracy"
