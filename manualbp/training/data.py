"""Training data made on the machine (nothing is downloaded) and a batch iterator whose position is saved.

Datasets:

- ``digits(layout)``: the 8x8 handwritten digits (1,797 images, 10 classes; UCI,
  CC BY 4.0, shipped in ``digits.npz``, attribution in ``digits_attribution.txt``),
  pixels scaled to [0, 1], one fixed train/test split (1,437/360).
  ``layout`` "flat" gives x of shape (N, 64) for an MLP, "image" (N, 8, 8, 1)
  for a CNN (NHWC), "rows" (N, 8, 8) for an RNN reading one row per step.
- ``spirals()``: two interleaved spirals in the plane, x (N, 2), 2 classes.
- ``sort_digits(length, digits)``: integer ids (N, 2 length - 1) for a causal
  transformer: a list of digits, then the list sorted; targets (N, 2 length - 1).
- ``adding(T)``: the adding problem (Hochreiter & Schmidhuber 1997): x of
  shape (N, T, 2), channel 0 uniform in [0, 1], channel 1 marks two steps
  (one in each half); the target (N, 1) is the sum of the two marked values.
  Predicting the mean 1 scores MSE = Var(u1 + u2) = 2/12 = 0.167.

``Batches`` draws minibatches without replacement, one fresh permutation per
epoch derived from a key; its whole position is (epoch, offset), so a
checkpoint can store it and a resumed run sees the same batches.
"""

from __future__ import annotations

from importlib import resources
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


def check_finite_data(data: Dataset, where: str = "train"):
    """Raise a ValueError naming the array and the first entry that holds NaN or Inf (checked on the host).

    A NaN in the data would otherwise surface steps later as a non-finite loss, blamed on the
    learning rate.
    """
    for name in ("x_train", "y_train", "x_test", "y_test"):
        a = np.asarray(getattr(data, name))
        if not np.issubdtype(a.dtype, np.inexact):
            continue
        bad = ~np.isfinite(a)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{where}: data {data.name!r}: {name} holds {int(bad.sum())} NaN/Inf value(s), the first "
                f"{a[index]} at index {index} (example {index[0]}); clean or drop those examples before training"
            )


def digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 64) uint8 pixel counts 0..16, labels (1797,) uint8): the package's ``digits.npz``.

    The examples of scikit-learn's ``load_digits``, in its order (see ``digits_attribution.txt``).
    """
    with resources.files(__package__).joinpath("digits.npz").open("rb") as f, np.load(f) as npz:
        return npz["images"], npz["labels"]


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
    images, labels = digit_arrays()
    x = (images / 16.0).astype(dtype).reshape((-1, *DIGIT_LAYOUTS[layout]))
    y = labels.astype(np.int32)
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


def _sort_examples(lists, blank):
    """(x, y) of the sort task for lists (N, L): x = list + sorted[:-1], y = blank (L - 1 times) + sorted."""
    n, L = lists.shape
    ordered = np.sort(lists, axis=1)
    x = np.concatenate([lists, ordered[:, :-1]], axis=1)
    y = np.concatenate([np.full((n, L - 1), blank), ordered], axis=1)
    return x.astype(np.int32), y.astype(np.int32)


def sort_digits(length: int = 6, digits: int = 10, n_train: int = 20000, n_test: int = 2000, seed: int = 0) -> Dataset:
    """Sort a list of digits with a causal model, as minGPT's demo; lists in the test set never occur in training.

    x (N, 2 length - 1) integer ids in [0, digits): the list, then the sorted
    list without its last element (the model sees the correct prefix,
    "teacher forcing"); y (N, 2 length - 1) in [0, digits]: the class
    ``digits`` ("blank": nothing to say yet) while the list is read, then
    the sorted list. A causal model predicts position t from x[:t + 1], so
    a sequence predicted right at every position under teacher forcing is
    also what greedy decoding, one digit at a time, would produce: the
    test figure ``sequence_accuracy`` is the fraction of test lists sorted
    exactly. Classes: digits + 1.
    """
    if length < 2 or digits < 2:
        raise ValueError(f"sort_digits: need length >= 2 and digits >= 2, got length {length}, digits {digits}")
    rng = np.random.default_rng(seed)
    lists = np.unique(rng.integers(0, digits, (2 * (n_train + n_test), length)), axis=0)
    if len(lists) < n_train + n_test:
        raise ValueError(f"sort_digits: only {len(lists)} distinct lists of {length} digits < {digits}, asked for "
                         f"{n_train + n_test}")
    lists = lists[rng.permutation(len(lists))[:n_train + n_test]]
    x, y = _sort_examples(lists, blank=digits)
    return Dataset(f"sort-{length}x{digits}", x[:n_train], y[:n_train], x[n_train:], y[n_train:], "classification",
                   digits + 1)


def sequence_accuracy(logits, y) -> float:
    """Fraction of sequences whose every position is predicted right: logits (N, T, C), y (N, T)."""
    return float(np.mean(np.all(np.argmax(np.asarray(logits), axis=-1) == np.asarray(y), axis=1)))


def as_inputs(x, dtype):
    """x as a model's input: floats in the training dtype; integer ids (token sequences) unchanged."""
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.integer) else x.astype(dtype)


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
