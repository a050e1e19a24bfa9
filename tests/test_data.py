"""Datasets made on the machine, and the batch iterator whose position resumes exactly."""

import builtins

import jax
import numpy as np
import pytest

from manualbp.training import data


@pytest.mark.parametrize("layout, shape", [("flat", (64,)), ("image", (8, 8, 1)), ("rows", (8, 8))])
def test_digits_layouts_and_fixed_split(layout, shape):
    d = data.digits(layout)
    assert d.x_train.shape == (1437, *shape) and d.x_test.shape == (360, *shape)
    assert d.y_train.dtype == np.int32 and set(np.unique(d.y_train)) == set(range(10))
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    again = data.digits("flat")
    np.testing.assert_array_equal(again.y_test, d.y_test)  # the split is fixed
    np.testing.assert_array_equal(again.x_test.reshape(360, 64), d.x_test.reshape(360, 64))


def test_digits_standardized_with_training_statistics():
    d = data.digits("flat", standardize=True)
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0, atol=1e-5)  # float32 rounding of a mean of ~1,400
    assert np.all(d.x_train[:, 0] == 0)  # the always-blank corner stays 0


def test_digits_unknown_layout():
    with pytest.raises(ValueError, match="digits: unknown layout 'nhwc'"):
        data.digits("nhwc")


def test_digits_need_no_sklearn(monkeypatch):
    """The digits ship with the package: scikit-learn is a test extra, never a runtime dependency."""
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    d = data.digits("rows")
    assert d.x_train.shape == (1437, 8, 8) and d.x_test.shape == (360, 8, 8)


def test_the_shipped_digits_are_sklearns_to_the_bit():
    """digits.npz holds load_digits' pixel counts and labels, in its order (checked where scikit-learn is installed)."""
    datasets = pytest.importorskip("sklearn.datasets")
    bunch = datasets.load_digits()
    images, labels = data.digit_arrays()
    assert images.dtype == labels.dtype == np.uint8
    assert images.shape == (1797, 64) and labels.shape == (1797,)
    np.testing.assert_array_equal(images, bunch.data)
    np.testing.assert_array_equal(labels, bunch.target)
    d = data.digits("flat", np.float64)  # x = pixels / 16, exactly as from sklearn's float64 arrays
    order = np.random.default_rng(data._SPLIT_SEED).permutation(1797)
    np.testing.assert_array_equal(d.x_train, bunch.data[order[:-360]] / 16.0)
    np.testing.assert_array_equal(d.y_test, bunch.target[order[-360:]])


def test_spirals_shapes_and_balance():
    d = data.spirals(n_train=200, n_test=100)
    assert d.x_train.shape == (200, 2) and d.x_test.shape == (100, 2)
    assert np.bincount(d.y_train).tolist() == [100, 100]
    assert d.task == "classification" and d.num_outputs == 2


def test_adding_problem_targets_and_baseline():
    d = data.adding(T=20, n_train=4000, n_test=500)
    assert d.x_train.shape == (4000, 20, 2) and d.y_train.shape == (4000, 1)
    marks = d.x_train[..., 1]
    assert np.all(marks.sum(axis=1) == 2)
    assert np.all(marks[:, :10].sum(axis=1) == 1)  # one mark in each half
    np.testing.assert_allclose(d.y_train[:, 0], (d.x_train[..., 0] * marks).sum(axis=1), rtol=1e-6)
    # predicting the mean scores Var(u1 + u2) = 1/6; 500 test samples put it within a few percent
    assert abs(data.adding_baseline_mse(d) - 1 / 6) < 0.03


def test_adding_needs_two_steps():
    with pytest.raises(ValueError, match="T must be >= 2"):
        data.adding(T=1)


def test_batches_are_permutations_and_resume_exactly():
    key = jax.random.key(3)
    b = data.Batches(10, 3, key)
    epoch0 = np.concatenate([b.next() for _ in range(3)])
    assert len(set(epoch0.tolist())) == 9  # no repeats within an epoch; the remainder is dropped
    assert b.position == (0, 9)
    first = b.next()
    assert b.position == (1, 3)
    resumed = data.Batches(10, 3, key, position=(1, 3))
    rest = [b.next() for _ in range(5)]
    np.testing.assert_array_equal(np.stack(rest), np.stack([resumed.next() for _ in range(5)]))
    assert not np.array_equal(first, epoch0[:3]) or not np.array_equal(rest[0], epoch0[3:6])  # a new order


def test_batches_bad_sizes():
    with pytest.raises(ValueError, match="batch_size 11 is larger than the data"):
        data.Batches(10, 11, jax.random.key(0))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        data.Batches(10, 0, jax.random.key(0))
