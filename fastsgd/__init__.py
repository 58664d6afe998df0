"""fastsgd: hand-written kernels for training neural networks with SGD.

Kernels live in backends (``fastsgd.backends.get("numba").matmul(a, b)``); the
trainer API below uses the book's / fastai's names, and tensors with autograd use
PyTorch's (``fastsgd.tensor``, ``fastsgd.nn``): ``import fastsgd as torch`` runs the
book's chapter 4.
"""
from . import backends
from .callbacks import (Callback, CancelEpochException, CancelFitException, EarlyStopping,
                        LRFinder, ProgressCallback, Recorder, SaveBest)
from .distributed import MPI
from .layers import (Linear, Module, Parameter, ReLU, Sequential, Sigmoid, Tanh, load_model,
                     save_model, simple_net)
from .learner import DataLoader, DataLoaders, Learner, TrainingDiverged
from .losses import Loss, batch_accuracy, cross_entropy, mnist_loss, mse
from .optim import SGD, constant_lr, cosine_lr
from .random import set_seed
from .tensor import (Tensor, abs, arange, cat, enable_grad, exp, is_grad_enabled, linspace, log,
                     manual_seed, no_grad, ones, ones_like, rand, randn, relu, sigmoid, stack, tanh,
                     tensor, use_backend, where, zeros, zeros_like)
from . import nn  # noqa: E402 - after the layers it names

__version__ = "0.1.0"

__all__ = [
    "backends", "Linear", "ReLU", "Sigmoid", "Tanh", "Sequential", "simple_net", "save_model",
    "load_model", "DataLoader", "DataLoaders", "Learner", "TrainingDiverged", "Loss", "mnist_loss",
    "cross_entropy", "mse", "batch_accuracy", "SGD", "constant_lr", "cosine_lr", "set_seed",
    "Callback", "CancelFitException", "CancelEpochException", "Recorder", "ProgressCallback",
    "EarlyStopping", "SaveBest", "LRFinder",
    "MPI", "Module", "Parameter", "nn",
    "Tensor", "tensor", "arange", "randn", "rand", "zeros", "ones", "zeros_like", "ones_like",
    "linspace", "stack", "cat", "where", "exp", "log", "sigmoid", "relu", "tanh", "abs",
    "manual_seed", "no_grad", "enable_grad", "is_grad_enabled", "use_backend",
]
