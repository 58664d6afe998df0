"""Chapter 4, "Calculating Gradients" and "An End-to-End SGD Example", as the book writes it.

The book's code with ``torch``'s names taken from fastsgd: the gradient of ``x**2``
by ``requires_grad_`` and ``backward``; then the speed of a roller coaster, twenty
noisy readings over the top of a hump, fitted by a quadratic ``a*t**2 + b*t + c``
with SGD's seven steps (initialise, predict, loss, gradient, step, repeat, stop).
Each gradient is checked against the kernels' ``mse_backward`` chained by hand, and
the loss must fall.

    python examples/03_sgd_quadratic.py [--steps 10] [--backend NAME]
"""
import argparse

import numpy as np

import fastsgd as fs

torch = fs
tensor = fs.tensor

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=10, help="SGD steps after the first (book: 10)")
parser.add_argument("--backend", default=None, help="kernels to use (default: the fastest)")
args = parser.parse_args()
k = fs.backends.get(args.backend)


def f(x): return x**2


xt = tensor(3.).requires_grad_()
yt = f(xt)
yt.backward()
print("d(x**2)/dx at 3:", xt.grad)
assert xt.grad.item() == 6.0


def f(x): return (x**2).sum()


xt = tensor([3., 4., 10.]).requires_grad_()
yt = f(xt)
yt.backward()
print("d(sum(x**2))/dx at [3, 4, 10]:", xt.grad)
assert xt.grad.tolist() == [6.0, 8.0, 20.0]

# The end-to-end example
torch.manual_seed(42)
time = torch.arange(0, 20).float()
speed = torch.randn(20)*3 + 0.75*(time-9.5)**2 + 1


def f(t, params):
    a, b, c = params
    return a*(t**2) + (b*t) + c


def mse(preds, targets): return ((preds-targets)**2).mean()


# Step 1: initialise the parameters
params = torch.randn(3).requires_grad_()
orig_params = params.clone()
print(f"1 init:     a, b, c = {np.round(params.tolist(), 3)}")
# Step 2: calculate the predictions
preds = f(time, params)
print(f"2 predict:  first predictions {np.round(preds[:3].tolist(), 2)} for speeds "
      f"{np.round(speed[:3].tolist(), 2)}")
# Step 3: calculate the loss
loss = mse(preds, speed)
print(f"3 loss:     mse {loss.item():.2f}")
# Step 4: calculate the gradients
loss.backward()
print(f"4 gradient: {params.grad}")
# ... the same gradient by hand on the kernels: d mse / d preds, then the chain rule
features = np.stack([(time**2).numpy(), time.numpy(), np.ones(20, np.float32)], axis=1)
dpreds = k.mse_backward(preds.numpy(), speed.numpy())
by_hand = features.T @ dpreds
assert np.allclose(params.grad.numpy(), by_hand, rtol=1e-4), (params.grad, by_hand)
print(f"            the kernels' mse_backward, chained by hand: {np.round(by_hand, 2)}")
# Step 5: step the weights
lr = 1e-5
params.data -= lr * params.grad.data
params.grad = None
preds = f(time, params)
print(f"5 step:     mse after one step {mse(preds, speed).item():.2f}")


def apply_step(params, prn=True):
    preds = f(time, params)
    loss = mse(preds, speed)
    loss.backward()
    params.data -= lr * params.grad.data
    params.grad = None
    if prn: print(f"6 repeat:   mse {loss.item():.2f}")  # noqa: E701 - the book's line
    return preds


# Step 6: repeat the process
losses = []
with fs.use_backend(args.backend):
    for i in range(args.steps):
        losses.append(mse(apply_step(params), speed).item())
# Step 7: stop
assert losses[-1] < losses[0] and all(b <= a + 1e-3 for a, b in zip(losses, losses[1:])), losses
print(f"7 stop:     after {args.steps} steps the loss fell from {losses[0]:.2f} to "
      f"{losses[-1]:.2f}; a, b, c = {np.round(params.tolist(), 3)} "
      f"(from {np.round(orig_params.tolist(), 3)})")
