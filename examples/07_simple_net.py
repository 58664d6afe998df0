"""Chapter 4, "Adding a Nonlinearity": ``simple_net`` as the book writes it, then deeper.

The book's code with ``torch`` and fastai's names taken from fastsgd: ``simple_net``
by hand (``res.max(tensor(0.0))`` is its ReLU) trained through autograd, then
``nn.Sequential`` trained by ``Learner(dls, simple_net, opt_func=SGD,
loss_func=mnist_loss, metrics=batch_accuracy).fit(40, 0.1)``.  The book's own
``mnist_loss`` trains through autograd; ``fs.mnist_loss``, the same loss as kernels,
trains the same model on the fused path (one compiled call per epoch) to the same
result.  Last, going deeper: Tanh works as well as ReLU, and a deeper net of
narrower layers reaches the same accuracy with fewer parameters.  Every model must
reach 95% on 3s vs 7s.

    python examples/07_simple_net.py [--data MNIST_DIR] [--epochs 40] [--backend NAME]
"""
import argparse

import fastsgd as fs
from fastsgd import SGD, DataLoader, DataLoaders, Learner, nn
from fastsgd.data import book_sample

torch = fs
tensor = fs.tensor

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", default=None, help="MNIST folder (default: the embedded set)")
parser.add_argument("--epochs", type=int, default=40, help="epochs of the Learner's fit")
parser.add_argument("--backend", default=None, help="kernels to use (default: the fastest)")
args = parser.parse_args()
backend = args.backend
torch.manual_seed(42)

three_tensors, seven_tensors, valid_3, valid_7 = book_sample(args.data)
train_x = torch.cat([torch.stack(three_tensors), torch.stack(seven_tensors)]).float()/255
train_x = train_x.view(-1, 28*28)
train_y = tensor([1]*len(three_tensors) + [0]*len(seven_tensors)).unsqueeze(1)
valid_x = torch.cat([torch.stack(valid_3), torch.stack(valid_7)]).float().view(-1, 28*28)/255
valid_y = tensor([1]*len(valid_3) + [0]*len(valid_7)).unsqueeze(1)
dl = DataLoader(list(zip(train_x, train_y)), batch_size=256)
valid_dl = DataLoader(list(zip(valid_x, valid_y)), batch_size=256)
dls = DataLoaders(dl, valid_dl)


def init_params(size, std=1.0): return (torch.randn(size)*std).requires_grad_()


def mnist_loss(predictions, targets):
    predictions = predictions.sigmoid()
    return torch.where(targets==1, 1-predictions, predictions).mean()


def batch_accuracy(xb, yb):
    preds = xb.sigmoid()
    correct = (preds>0.5) == yb
    return correct.float().mean()


# simple_net by hand: two linear layers and a ReLU between them
w1 = init_params((28*28, 30))
b1 = init_params(30)
w2 = init_params((30, 1))
b2 = init_params(1)


def simple_net(xb):
    res = xb@w1 + b1
    res = res.max(tensor(0.0))
    res = res@w2 + b2
    return res


# ... computes what nn.Sequential computes, gradients included, given the same weights
model = nn.Sequential(nn.Linear(28*28, 30), nn.ReLU(), nn.Linear(30, 1))
with torch.no_grad():
    for mine, its in zip([w1, b1, w2, b2], model.parameters()):
        mine.data = its.data.clone()
with fs.use_backend(backend):
    for net in (simple_net, model):
        mnist_loss(net(valid_x), valid_y).backward()
gap = max((mine.grad - its.grad).abs().max().item()
          for mine, its in zip([w1, b1, w2, b2], model.parameters()))
print(f"simple_net by hand and nn.Sequential: largest gradient difference {gap:.2g}")
assert gap < 1e-5

results = {}
for loss_func in (mnist_loss, fs.mnist_loss):
    torch.manual_seed(42)
    simple_net = nn.Sequential(
        nn.Linear(28*28, 30),
        nn.ReLU(),
        nn.Linear(30, 1)
    )
    learn = Learner(dls, simple_net, opt_func=SGD,
                    loss_func=loss_func, metrics=batch_accuracy, backend=backend,
                    show=loss_func is mnist_loss)
    learn.fit(args.epochs, 0.1)
    where = "fused" if learn.fused is True else "autograd"
    results[f"Learner, {where}"] = learn.recorder.values[-1][2]
    print(f"Learner(simple_net) on the {where} path: accuracy "
          f"{learn.recorder.values[-1][2]:.2%}; learn.fused: {learn.fused}")
assert abs(results["Learner, fused"] - results["Learner, autograd"]) <= 0.01, \
    "the book's mnist_loss through autograd and fs.mnist_loss fused should train alike"

# Going deeper, on the fused path: the arrays of the same images
train_x, train_y = train_x.numpy(), train_y.numpy().reshape(-1)
valid_x, valid_y = valid_x.numpy(), valid_y.numpy().reshape(-1)
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
    history = learn.fit(max(args.epochs // 5, 4))
    sizes[name] = sum(p.value.size for p in model.parameters())
    accuracies[name] = history[-1]["batch_accuracy"]
    print(f"{name:24s} {sizes[name]:6d} parameters  fused {learn.fused}  "
          f"accuracy {accuracies[name]:.2%} after {len(history)} epochs")

for name, accuracy in {**results, **accuracies}.items():
    assert accuracy >= 0.95, f"{name} should reach 95% on 3s vs 7s"
deep, shallow = "deeper, 784-16-16-16-1", "simple_net, ReLU"
assert sizes[deep] < sizes[shallow] and accuracies[deep] >= accuracies[shallow] - 0.01
print(f"the deeper net matches simple_net with {sizes[deep] / sizes[shallow]:.0%} "
      f"of its parameters")
