"""Chapter 4, "Putting It All Together" and "Creating an Optimizer", as the book writes it.

The book's code with ``torch`` and fastai's names taken from fastsgd: ``linear1``
trained by ``calc_grad`` / ``train_epoch`` with ``requires_grad_`` and
``loss.backward()``; then ``nn.Linear`` with the book's ``BasicOptim``; then with
``SGD``; then the ``Learner``.  Every model must beat 90% validation accuracy.

    python examples/04_linear1_by_hand.py [--data MNIST_DIR] [--epochs 20] [--backend NAME]

``--data`` is a folder of MNIST IDX files (only the t10k files are enough: their
3s and 7s are split 5:1); without it, the embedded set.
"""
import argparse

import fastsgd as fs
from fastsgd import SGD, DataLoader, DataLoaders, Learner, nn
from fastsgd.data import book_sample

torch = fs
tensor = fs.tensor

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", default=None, help="MNIST folder (default: the embedded set)")
parser.add_argument("--epochs", type=int, default=20, help="epochs of each training loop")
parser.add_argument("--backend", default=None, help="kernels to use (default: the fastest)")
args = parser.parse_args()
torch.manual_seed(42)

# The images, as the book reads them: lists of (28, 28) uint8 tensors.
three_tensors, seven_tensors, valid_3, valid_7 = book_sample(args.data)
stacked_threes = torch.stack(three_tensors).float()/255
stacked_sevens = torch.stack(seven_tensors).float()/255
valid_3_tens = torch.stack(valid_3).float()/255
valid_7_tens = torch.stack(valid_7).float()/255

train_x = torch.cat([stacked_threes, stacked_sevens]).view(-1, 28*28)
train_y = tensor([1]*len(three_tensors) + [0]*len(seven_tensors)).unsqueeze(1)
print("train_x", train_x.shape, "train_y", train_y.shape)
dset = list(zip(train_x, train_y))
valid_x = torch.cat([valid_3_tens, valid_7_tens]).view(-1, 28*28)
valid_y = tensor([1]*len(valid_3_tens) + [0]*len(valid_7_tens)).unsqueeze(1)
valid_dset = list(zip(valid_x, valid_y))


def init_params(size, std=1.0): return (torch.randn(size)*std).requires_grad_()


weights = init_params((28*28, 1))
bias = init_params(1)


def linear1(xb): return xb@weights + bias


def mnist_loss(predictions, targets):
    predictions = predictions.sigmoid()
    return torch.where(targets==1, 1-predictions, predictions).mean()


dl = DataLoader(dset, batch_size=256)
valid_dl = DataLoader(valid_dset, batch_size=256)


def calc_grad(xb, yb, model):
    preds = model(xb)
    loss = mnist_loss(preds, yb)
    loss.backward()


def train_epoch(model, lr, params):
    for xb, yb in dl:
        calc_grad(xb, yb, model)
        for p in params:
            p.data -= p.grad*lr
            p.grad.zero_()


def batch_accuracy(xb, yb):
    preds = xb.sigmoid()
    correct = (preds>0.5) == yb
    return correct.float().mean()


def validate_epoch(model):
    accs = [batch_accuracy(model(xb), yb) for xb, yb in valid_dl]
    return round(torch.stack(accs).mean().item(), 4)


with fs.use_backend(args.backend):
    lr = 1.
    params = weights, bias
    before = validate_epoch(linear1)
    for i in range(args.epochs):
        train_epoch(linear1, lr, params)
        print(validate_epoch(linear1), end=' ')
    print()
    results = {"linear1": validate_epoch(linear1)}
    print(f"linear1 by hand: accuracy {before} -> {results['linear1']}")

    # Creating an optimizer: nn.Linear and the book's BasicOptim
    linear_model = nn.Linear(28*28, 1)
    w, b = linear_model.parameters()
    print("nn.Linear parameters", w.shape, b.shape)

    class BasicOptim:
        def __init__(self, params, lr): self.params, self.lr = list(params), lr

        def step(self, *args, **kwargs):
            for p in self.params: p.data -= p.grad.data * self.lr  # noqa: E701 - the book's line

        def zero_grad(self, *args, **kwargs):
            for p in self.params: p.grad = None  # noqa: E701

    opt = BasicOptim(linear_model.parameters(), lr)

    def train_epoch(model):
        for xb, yb in dl:
            calc_grad(xb, yb, model)
            opt.step()
            opt.zero_grad()

    def train_model(model, epochs):
        for i in range(epochs):
            train_epoch(model)
            print(validate_epoch(model), end=' ')
        print()

    train_model(linear_model, args.epochs)
    results["BasicOptim"] = validate_epoch(linear_model)

    linear_model = nn.Linear(28*28, 1)
    opt = SGD(linear_model.parameters(), lr)
    train_model(linear_model, args.epochs)
    results["SGD"] = validate_epoch(linear_model)

dls = DataLoaders(dl, valid_dl)
learn = Learner(dls, nn.Linear(28*28, 1), opt_func=SGD, loss_func=mnist_loss,
                metrics=batch_accuracy, backend=args.backend)
learn.fit(args.epochs, lr=lr)
results["Learner"] = learn.recorder.values[-1][2]
print("learn.fused:", learn.fused)

for name, accuracy in results.items():
    print(f"{name}: validation accuracy {accuracy:.2%}")
    assert accuracy > 0.90, f"{name} should classify 3s and 7s better than 90%"
print("the chapter's linear models: accuracy", ", ".join(f"{a:.2%}" for a in results.values()))
