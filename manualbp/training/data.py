"""Training data made on the machine (nothing is downloaded) and a batch iterator whose position is saved.

Datasets:

- ``digits(layout)``: scikit-learn's bundled 8x8 digits (1,797 images, 10
  classes), pixels scaled to [0, 1], one fixed train/test split (1,437/360).
  ``layout`` "flat" gives x of shape (N, 64) for an MLP, "image" (N, 8, 8, 1)
  for a CNN (NHWC), "rows" (N, 8, 8) for an RNN reading one row per step.
- ``spirals()``: two interleaved spirals in the plane, x (N, 2), 2 classes.
- ``adding(T)``: the adding problem (Hochreiter & Schmidhuber 1997): x of
  shape (N, T, 2), channel 0 uniform in [0, 1], channel 1 marks two steps
  (one in each half); the target (N, 1) is the sum of the two marked values.
  Predicting the mean 1 scores MSE = Var(u1 + u2) = 2/12 = 0.167.

``Batches`` draws minibatches without replacement, one fresh permutation per
epoch derived from a key; its whole position is (epoch, offset), so a
checkpoint can store it and a resumed run sees the same batches.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

DIGITS_TEST = 360  # fixed split: the last 360 examples of a seeded permutation are the test set
_SPLIT_SEED = 20261123


class Dataset(NamedTuple):
    """Train and test arrays (numpy, on the host).

    ``task`` is "classification" (y: int32 class ids of shape (N,)) or
    "regression" (y: float targets of shape (N, k)); ``num_outputs`` is the
    number of classes, or k.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str
    num_outputs: int

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])


def _sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError:
        raise ImportError(
            "manualbp.training.data.digits needs scikit-learn (its bundled 8x8 digits); "
            "install it with `pip install manualbp[examples]`"
        ) from None
    return datasets


DIGIT_LAYOUTS = {"flat": (64,), "image": (8, 8, 1), "rows": (8, 8)}


def digits(layout: str = "flat", dtype=np.float32, standardize: bool = False) -> Dataset:
    """The 8x8 digits, pixels / 16, split 1,437 train / 360 test by a fixed seeded permutation.

    Args:
      layout: "flat" -> x (N, 64); "image" -> x (N, 8, 8, 1); "rows" -> x (N, 8, 8) (T=8 rows of 8 pixels).
      dtype: floating dtype of x.
      standardize: x <- (x - mean) / max(std, 0.1) per pixel, with the training set's mean and std
        (the floor keeps the always-blank corner pixels at 0 instead of dividing by 0).
    """
    if layout not in DIGIT_LAYOUTS:
        raise ValueError(f"digits: unknown layout {layout!r}; choose one of {sorted(DIGIT_LAYOUTS)}")
    bunch = _sklearn_datasets().load_digits()
    x = (bunch.data / 16.0).astype(dtype).reshape((-1, *DIGIT_LAYOUTS[layout]))
    y = bunch.target.astype(np.int32)
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    train, test = order[:-DIGITS_TEST], order[-DIGITS_TEST:]
    if standardize:
        mean, std = x[train].mean(axis=0), np.maximum(x[train].std(axis=0), 0.1)
        x = ((x - mean) / std).astype(dtype)
    return Dataset(f"digits-{layout}", x[train], y[train], x[test], y[test], "classification", 10)


def _spiral_points(rng, n: int, noise: float):
    """n points per arm: arm k at radius r, angle r * 3pi + k pi, r in (0, 1]; x (2n, 2), y (2n,)."""
    r = np.sqrt(rng.uniform(0.0, 1.0, n)) + 1e-3
    xs, ys = [], []
    for k in (0, 1):
        theta = 3 * np.pi * r + k * np.pi
        pts = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
        xs.append(pts + noise * rng.normal(size=pts.shape))
        ys.append(np.full(n, k, np.int32))
    return np.concatenate(xs), np.concatenate(ys)


def spirals(n_train: int = 1000, n_test: int = 1000, noise: float = 0.02, seed: int = 0, dtype=np.float32) -> Dataset:
    """Two interleaved spirals (1.5 turns each); n_train / n_test points in all, half per arm."""
    rng = np.random.default_rng(seed)
    x_tr, y_tr = _spiral_points(rng, n_train // 2, noise)
    x_te, y_te = _spiral_points(rng, n_test // 2, noise)
    return Dataset("spirals", x_tr.astype(dtype), y_tr, x_te.astype(dtype), y_te, "classification", 2)


def _adding_examples(rng, n: int, T: int):
    values = rng.uniform(0.0, 1.0, (n, T))
    first = rng.integers(0, T // 2, n)
    second = rng.integers(T // 2, T, n)
    marks = np.zeros((n, T))
    marks[np.arange(n), first] = 1.0
    marks[np.arange(n), second] = 1.0
    x = np.stack([values, marks], axis=-1)
    y = (values[np.arange(n), first] + values[np.arange(n), second])[:, None]
    return x, y


def adding(T: int = 50, n_train: int = 10000, n_test: int = 1000, seed: int = 0, dtype=np.float32) -> Dataset:
    """The adding problem: x (N, T, 2) = (value, marker), y (N, 1) = sum of the two marked values."""
    if T < 2:
        raise ValueError(f"adding: sequence length T must be >= 2, got {T}")
    rng = np.random.default_rng(seed)
    x_tr, y_tr = _adding_examples(rng, n_train, T)
    x_te, y_te = _adding_examples(rng, n_test, T)
    return Dataset(f"adding-T{T}", x_tr.astype(dtype), y_tr.astype(dtype), x_te.astype(dtype), y_te.astype(dtype),
                   "regression", 1)


def adding_baseline_mse(data: Dataset) -> float:
    """Test MSE of always predicting the training targets' mean (the score to beat; ~0.167)."""
    return float(np.mean((data.y_test - data.y_train.mean()) ** 2))


class Batches:
    """Minibatch indices without replacement: epoch e uses a numpy permutation seeded by (key data, e).

    Each epoch yields n // batch_size full batches (the remainder is dropped,
    so every step has one static shape and compiles once). ``position`` is
    (epoch, offset); ``Batches(n, b, key, position)`` resumes exactly there.
    """

    def __init__(self, n: int, batch_size: int, key, position: tuple[int, int] = (0, 0)):
        if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"Batches: batch_size must be a positive integer, got {batch_size!r}")
        if batch_size > n:
            raise ValueError(f"Batches: batch_size {batch_size} is larger than the data ({n} examples)")
        self.n, self.batch_size = n, int(batch_size)
        self._seed = [int(v) for v in np.asarray(jax.random.key_data(key)).ravel()]
        self.epoch, self.offset = (int(v) for v in position)
        self._perm_epoch, self._perm = None, None

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.offset

    def _permutation(self):
        if self._perm_epoch != self.epoch:
            # on the host: a device permutation would compile and sync once per epoch
            self._perm = np.random.default_rng([*self._seed, self.epoch]).permutation(self.n)
            self._perm_epoch = self.epoch
        return self._perm

    def next(self) -> np.ndarray:
        """The next batch's indices, shape (batch_size,); advances the position."""
        if self.offset + self.batch_size > self.n:
            self.epoch, self.offset = self.epoch + 1, 0
        idx = self._permutation()[self.offset:self.offset + self.batch_size]
        self.offset += self.batch_size
        return idx
