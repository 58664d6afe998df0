"""Chapter 4, "An End-to-End SGD Example": the speed of a roller coaster.

Twenty noisy speed readings over the top of a hump follow a quadratic in time.  We
recover its coefficients with SGD's seven steps: initialise, predict, loss, gradient,
step, repeat, stop.  First by hand on the kernels (``linear_forward``, ``mse_forward``,
``mse_backward``, ``linear_backward``, ``sgd_update``), then with the trainer.  Time is
rescaled to [-1, 1] so a large step size is stable; the model is ``Linear(2, 1)`` on
the features t**2 and t, its bias playing the constant.  Both must land within 2% of
the least-squares fit.

    python examples/03_sgd_quadratic.py [--backend NAME]
"""
import argparse

import numpy as np

import fastsgd as fs

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--backend", default=None, help="kernels to use (default: the fastest)")
backend = parser.parse_args().backend
k = fs.backends.get(backend)

rng = np.random.default_rng(0)
time = np.arange(20.0)
speed = 0.75 * (time - 9.5) ** 2 + 1 + rng.normal(0, 3, 20)     # the hidden quadratic, noised
t = (time - 9.5) / 9.5                                           # time rescaled to [-1, 1]
features = np.stack([t ** 2, t], axis=1).astype(np.float32)     # (20, 2)
target = speed.astype(np.float32)[:, None]                       # (20, 1)
design = np.column_stack([features, np.ones(20)]).astype(np.float64)
best = np.linalg.lstsq(design, speed, rcond=None)[0]             # (a, b, c): the exact fit
print(f"least squares: speed = {best[0]:.3f} t^2 {best[1]:+.3f} t {best[2]:+.3f}")

# 1. initialise the parameters at random
w = rng.standard_normal((2, 1)).astype(np.float32)
b = rng.standard_normal(1).astype(np.float32)
print(f"1 init:     a, b, c = {w[0, 0]:.3f}, {w[1, 0]:.3f}, {b[0]:.3f}")
lr, previous = 0.5, np.inf
for step in range(1000):                                          # 6. repeat ...
    preds = k.linear_forward(features, w, b)                      # 2. predict
    loss = k.mse_forward(preds, target)                           # 3. loss
    if previous - loss < 1e-8 * loss:                             # 7. ... stop when no better
        break
    dpreds = k.mse_backward(preds, target)                        # 4. gradient, of the loss
    _, dw, db = k.linear_backward(features, w, dpreds, need_dx=False)   # ... and of w, b
    k.sgd_update(w, dw, lr)                                       # 5. step
    k.sgd_update(b, db, lr)
    previous = loss
    if step == 0:
        print(f"2 predict:  first predictions {np.round(preds[:3, 0], 2)} "
              f"for speeds {np.round(target[:3, 0], 2)}")
        print(f"3 loss:     mse {loss:.2f}")
        print(f"4 gradient: d loss / d(a, b, c) = {dw[0, 0]:.2f}, {dw[1, 0]:.2f}, {db[0]:.2f}")
        print(f"5 step:     a, b, c -= {lr} * gradient")
    elif step % 20 == 0:
        print(f"6 repeat:   step {step:3d}  mse {loss:.4f}")
by_hand = np.array([w[0, 0], w[1, 0], b[0]])
print(f"7 stop:     the loss stopped falling at step {step}: mse {loss:.4f}, "
      f"a, b, c = {np.round(by_hand, 3)}")

# The same with the trainer: full-batch DataLoaders, mse, SGD with momentum.
fs.set_seed(0)
dls = fs.DataLoaders.from_arrays(features, target, features, target, bs=20, seed=0)
model = fs.Sequential(fs.Linear(2, 1))
learn = fs.Learner(dls, model, fs.mse, fs.SGD(0.2, momentum=0.9), backend=backend, show=False)
learn.fit(200)
layer = model.layers[0]
trained = np.concatenate([k.to_numpy(layer.w.value)[:, 0], k.to_numpy(layer.b.value)])
print(f"trainer: {len(learn.recorder.history)} epochs, final mse "
      f"{learn.recorder.history[-1]['valid_loss']:.4f}, a, b, c = {np.round(trained, 3)}")

for name, found in (("by hand", by_hand), ("trainer", trained)):
    assert (np.abs(found - best) <= 0.02 * np.abs(best)).all(), \
        f"SGD {name} should recover the least-squares coefficients within 2%"
# Back in the original time units, t = (time - 9.5) / 9.5: speed = A time^2 + B time + C
square, linear, constant = trained
A, B, C = square / 9.5 ** 2, (linear - 2 * square) / 9.5, square - linear + constant
print(f"in seconds: speed = {A:.3f} time^2 {B:+.3f} time {C:+.3f} "
      f"(before the noise: 0.750 time^2 -14.250 time +68.688)")
