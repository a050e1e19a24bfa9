"""The transformer tasks: the sort data, token ids through the training loop, a short twin run of the GPT."""

import jax
import numpy as np
import optax
import pytest

import manualbp as mbp
from manualbp.training import data, zoo


def test_sort_digits_layout():
    d = data.sort_digits(length=4, digits=5, n_train=300, n_test=50, seed=1)
    assert d.x_train.shape == (300, 7) and d.y_test.shape == (50, 7) and d.num_outputs == 6
    assert np.issubdtype(d.x_train.dtype, np.integer) and d.x_train.max() < 5
    lists = d.x_train[:, :4]
    assert np.array_equal(d.y_train[:, 3:], np.sort(lists, axis=1))  # the sorted list, from position L - 1 on
    assert np.array_equal(d.x_train[:, 4:], np.sort(lists, axis=1)[:, :-1])  # teacher forcing: the correct prefix
    assert np.all(d.y_train[:, :3] == 5)  # the blank class while the list is read
    train = {tuple(r) for r in lists}
    assert not any(tuple(r) in train for r in d.x_test[:, :4])  # no test list was seen in training


def test_sequence_accuracy_needs_every_position():
    y = np.array([[1, 2], [0, 1]])
    logits = np.eye(3)[np.array([[1, 2], [0, 2]])]
    assert data.sequence_accuracy(logits, y) == 0.5


@pytest.mark.slow
def test_gpt_sort_task_twin_run_with_token_ids():
    """Token ids stay integers through the loop; manual and jax.grad stay together; the extra test figure is there."""
    task = zoo.task("gpt", "sort")
    d = data.sort_digits(6, 10, n_train=256, n_test=32)
    params = jax.jit(lambda k: task.model.init(k, d.input_shape, np.float32)[0])(jax.random.key(0))
    result = mbp.train_twin(task.model, task.head, params, d, optimizer=optax.adam(1e-3), steps=4, batch_size=16,
                            key=jax.random.key(1))
    assert result.divergence.ok, result.divergence.summary()
    extra = zoo.extra_metrics(task, result.manual.params, d)
    assert set(extra) == {"sequences fully correct"} and 0 <= extra["sequences fully correct"] <= 1
