"""The package-wide random generator behind weight init and shuffling defaults."""
import numpy as np

_rng = np.random.default_rng()


def set_seed(seed: int) -> None:
    """Reseed the generator that layers and DataLoaders use when given no ``rng``/``seed``."""
    global _rng
    _rng = np.random.default_rng(seed)


def global_rng() -> np.random.Generator:
    """The generator seeded by ``set_seed``."""
    return _rng
