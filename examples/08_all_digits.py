"""Beyond 3s and 7s: all ten digits with softmax cross-entropy.

The chapter's questionnaire asks how to go from two classes to ten (the next chapter
does it): ten outputs, one score per digit, and cross-entropy as the loss, which
turns the scores into probabilities with softmax and penalises a low probability for
the right digit.  A 784-128-10 net with SGD and momentum must reach 85% on the 1,000
validation images after a few epochs.

    python examples/08_all_digits.py [--backend NAME]
"""
import argparse

import numpy as np

import fastsgd as fs
from fastsgd import data

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--backend", default=None, help="kernels to use (default: the fastest)")
backend = parser.parse_args().backend

ds = data.load_embedded()                                       # labels 0..9, int64
print(f"{len(ds.train_x)} training and {len(ds.valid_x)} validation images, "
      f"{len(ds.train_x) // 10} of each digit for training")
fs.set_seed(0)
dls = fs.DataLoaders.from_arrays(ds.train_x, ds.train_y, ds.valid_x, ds.valid_y, bs=64, seed=0)
learn = fs.Learner(dls, fs.simple_net(784, 128, 10), fs.cross_entropy,
                   fs.SGD(0.1, momentum=0.9), metrics=[fs.batch_accuracy], backend=backend)
learn.fit(4)                                                    # prints one row per epoch
accuracy = learn.recorder.history[-1]["batch_accuracy"]

scores = learn.predict_raw(ds.valid_x[:8])                      # (8, 10) raw scores
shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
probs = shifted / shifted.sum(axis=1, keepdims=True)            # softmax, by hand
assert np.allclose(probs, learn.predict_proba(ds.valid_x[:8]), atol=1e-6)
for label, p in zip(ds.valid_y[:8], probs):
    print(f"digit {label}: predicted {p.argmax()} with probability {p.max():.2f}")

predicted = learn.predict(ds.valid_x)                           # the digit of each image
per_digit = [(predicted[ds.valid_y == d] == d).mean() for d in range(10)]
print("accuracy per digit: " + " ".join(f"{d}:{a:.0%}" for d, a in enumerate(per_digit)))
print(f"all ten digits: accuracy {accuracy:.2%}")
assert accuracy >= 0.85, "784-128-10 should classify 85% of the ten digits right"
