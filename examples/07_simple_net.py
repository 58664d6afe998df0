"""Chapter 4, "Adding a Nonlinearity": ``simple_net`` and going deeper.

Two linear layers with a nonlinearity between them can approximate far more than one
linear layer.  The book's ``simple_net`` uses ReLU; Tanh works as well.  A deeper net
of narrower layers reaches the same accuracy with fewer parameters: the book's
argument for depth.  Every model here trains on the fused path (one compiled call per
epoch) and must reach 95% on 3s vs 7s.

    python examples/07_simple_net.py [--backend NAME]
"""
import argparse

import fastsgd as fs
from fastsgd import data

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--backend", default=None, help="kernels to use (default: the fastest)")
backend = parser.parse_args().backend

ds = data.load_embedded()
train_x, train_y = data.select_digits(ds.train_x, ds.train_y, (3, 7))
valid_x, valid_y = data.select_digits(ds.valid_x, ds.valid_y, (3, 7))

models = {
    "simple_net, ReLU": lambda: fs.simple_net(784, 30, 1),
    "simple_net, Tanh": lambda: fs.Sequential(fs.Linear(784, 30), fs.Tanh(), fs.Linear(30, 1)),
    "deeper, 784-16-16-16-1": lambda: fs.Sequential(
        fs.Linear(784, 16), fs.ReLU(), fs.Linear(16, 16), fs.ReLU(),
        fs.Linear(16, 16), fs.ReLU(), fs.Linear(16, 1)),
}
sizes, accuracies = {}, {}
for name, make in models.items():
    fs.set_seed(0)
    dls = fs.DataLoaders.from_arrays(train_x, train_y, valid_x, valid_y, bs=64, seed=0)
    model = make()
    learn = fs.Learner(dls, model, fs.mnist_loss, fs.SGD(1.0), metrics=[fs.batch_accuracy],
                       backend=backend, show=False)
    assert learn.fused is True, f"{name} should train fused, not: {learn.fused}"
    history = learn.fit(8)
    sizes[name] = sum(p.value.size for p in model.parameters())
    accuracies[name] = history[-1]["batch_accuracy"]
    print(f"{name:24s} {sizes[name]:6d} parameters  fused {learn.fused}  "
          f"accuracy {accuracies[name]:.2%} after {len(history)} epochs")

for name, accuracy in accuracies.items():
    assert accuracy >= 0.95, f"{name} should reach 95% on 3s vs 7s"
deep, shallow = "deeper, 784-16-16-16-1", "simple_net, ReLU"
assert sizes[deep] < sizes[shallow] and accuracies[deep] >= accuracies[shallow] - 0.01
print(f"the deeper net matches simple_net with {sizes[deep] / sizes[shallow]:.0%} "
      f"of its parameters")
