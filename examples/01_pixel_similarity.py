"""Chapter 4, "Pixel Similarity": the baseline before any learning.

Average every training 3 and every training 7 into an "ideal" 3 and 7, then call a
validation image a 3 when it is closer to the ideal 3 than to the ideal 7, measuring
closeness by the mean absolute difference (L1) and the root mean squared difference
(L2).  Nothing is trained; the accuracy is the bar SGD has to beat.

    python examples/01_pixel_similarity.py
"""
import numpy as np

from fastsgd import data

ds = data.load_embedded()
threes, sevens = (ds.train_x[ds.train_y == d] for d in (3, 7))
print(f"training images: {len(threes)} threes, {len(sevens)} sevens, 28x28 pixels in [0, 1]")

ideal_3, ideal_7 = threes.mean(axis=0), sevens.mean(axis=0)


def show(image, shades=" .:-=+*#%@"):
    """A 28x28 image as 14 lines of text (every other pixel); denser characters, more ink."""
    grid = image.reshape(28, 28)[::2, ::2] / image.max()
    return ["".join(shades[int(v * (len(shades) - 1))] for v in row) for row in grid]


print("the ideal 3      the ideal 7")
for left, right in zip(show(ideal_3), show(ideal_7)):
    print(f"{left}   {right}")


def l1(x, ideal):
    return np.abs(x - ideal).mean(axis=-1)


def l2(x, ideal):
    return np.sqrt(((x - ideal) ** 2).mean(axis=-1))


sample = threes[0]
print(f"one training 3: L1 distance {l1(sample, ideal_3):.4f} to the ideal 3, "
      f"{l1(sample, ideal_7):.4f} to the ideal 7")

valid_x, valid_is_3 = data.select_digits(ds.valid_x, ds.valid_y, (3, 7))   # 3 -> 1.0, 7 -> 0.0
for name, distance in (("L1", l1), ("L2", l2)):
    says_3 = distance(valid_x, ideal_3) < distance(valid_x, ideal_7)      # broadcasting: (N,)
    accuracy = (says_3 == (valid_is_3 == 1)).mean()
    print(f"pixel similarity ({name}): {accuracy:.2%} of {len(valid_x)} validation 3s and 7s")
    assert accuracy >= 0.90, f"the {name} baseline should be far better than a coin flip"
