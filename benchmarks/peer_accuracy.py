"""Accuracy after a few epochs: fastsgd's fused epoch against PyTorch, same start, same order.

    python benchmarks/peer_accuracy.py --data DIR [--epochs 3] [--bs 64] [--backend c]

DIR is a folder of MNIST-format IDX files (Fashion-MNIST: ``apt-get install
dataset-fashion-mnist``; ``dpkg -L dataset-fashion-mnist`` lists them).  Both train
784-128-10 (ReLU) with softmax cross-entropy and plain SGD at the epoch benchmark's
rate, from the same initial weights, visiting the samples in the same order, on all
the training images; then each is scored on all the test images.  Needs PyTorch.
"""
from __future__ import annotations

import argparse

import numpy as np

from fastsgd.bench import epochs, peers
from fastsgd.data import load_mnist


def accuracy(weights, x, y) -> float:
    """Share of rows of ``x`` whose argmax output under the MLP ``weights`` is ``y``."""
    h = x
    for i in range(0, len(weights), 2):
        h = h @ weights[i] + weights[i + 1]
        if i + 2 < len(weights):
            h = np.maximum(h, 0.0)
    return float(np.mean(np.argmax(h, axis=1) == y))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of MNIST-format IDX files")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--backend", default="c")
    args = parser.parse_args(argv)
    if peers.status("torch") is not True:
        raise SystemExit(f"torch: {peers.status('torch')}")
    ds = load_mnist(args.data)
    data = epochs.EpochData(np.ascontiguousarray(ds.train_x, np.float32),
                            ds.train_y.astype(np.int64),
                            np.ascontiguousarray(ds.valid_x, np.float32),
                            ds.valid_y.astype(np.int64))
    start = epochs.initial_weights()
    ours = epochs.trainer(args.backend, data, start, args.bs)
    theirs = epochs.trainer("torch", data, start, args.bs)
    for _ in range(args.epochs):
        ours.epoch()
        theirs.epoch()
    ours_w = [p.value for p in ours.learn.model.parameters()]
    theirs_w = []
    for layer in theirs.model:
        if hasattr(layer, "weight"):
            theirs_w += [layer.weight.detach().numpy().T, layer.bias.detach().numpy()]
    a, b = accuracy(ours_w, data.vx, data.vy), accuracy(theirs_w, data.vx, data.vy)
    print(f"after {args.epochs} epochs at bs {args.bs} on {len(data.x)} images, "
          f"accuracy on {len(data.vx)} test images:")
    print(f"  fastsgd {args.backend}: {100 * a:.2f}%   torch: {100 * b:.2f}%   "
          f"difference {100 * (a - b):+.2f} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
