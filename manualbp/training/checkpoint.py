"""Checkpoints: atomic save, validated load.

A checkpoint is one ``.npz`` file holding the leaves of a pytree (parameters,
optimizer state, history, ...) as ``leaf_<i>`` arrays, the tree's structure
as text, and a JSON ``meta`` dict (format tag, model, step, data position,
...). ``save`` writes a temporary file in the same directory, flushes it to
disk and renames it over the old one, so a crash mid-save leaves the
previous checkpoint intact. ``load`` refuses a truncated file, a foreign
file, or a checkpoint whose structure, shapes, dtypes or model differ from
what the caller expects: never silently wrong weights.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import jax
import numpy as np

FORMAT = "manualbp-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, foreign, or for another model."""


def save(path, tree, meta: dict) -> None:
    """Write ``tree`` (a pytree of arrays) and ``meta`` (JSON-able) to ``path`` atomically."""
    path = os.fspath(path)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    arrays = {f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    header = {"format": FORMAT, "treedef": str(treedef), "meta": meta}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {name: z[name] for name in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"checkpoint {path}: unreadable (truncated or not a manualbp checkpoint): {e}") from None
    if "header" not in files:
        raise CheckpointError(f"checkpoint {path}: not a manualbp checkpoint (no header)")
    try:
        header = json.loads(files.pop("header").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: corrupt header: {e}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else None
        raise CheckpointError(f"checkpoint {path}: format {got!r}, expected {FORMAT!r}")
    return header, files


def load(path, like, expect: dict | None = None):
    """Read the checkpoint at ``path`` into a tree shaped like ``like``; return (tree, meta).

    Args:
      path: the file written by ``save``.
      like: a pytree with the expected structure, shapes and dtypes (e.g.
        freshly initialised state of the same model and optimizer).
      expect: meta entries that must match exactly (e.g. {"model": repr(model)}).

    Raises:
      FileNotFoundError: no file at ``path``.
      CheckpointError: truncated/foreign file, or a mismatch with ``like``/``expect``.
    """
    path = os.fspath(path)
    header, files = _read(path)
    meta = header.get("meta", {})
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise CheckpointError(
                f"checkpoint {path}: it was written for {key} {meta.get(key)!r}, but this run has {key} {want!r}"
            )
    leaves, treedef = jax.tree_util.tree_flatten(like)
    if header.get("treedef") != str(treedef) or len(files) != len(leaves):
        raise CheckpointError(
            f"checkpoint {path}: its tree structure does not match this run's (a different model or optimizer?)\n"
            f"  checkpoint: {header.get('treedef')}\n  expected:   {treedef}"
        )
    out = []
    for i, (kp, leaf) in enumerate(jax.tree_util.tree_leaves_with_path(like)):
        arr = files[f"leaf_{i}"]
        want = np.asarray(leaf)
        if arr.shape != want.shape or arr.dtype != want.dtype:
            raise CheckpointError(
                f"checkpoint {path}: {jax.tree_util.keystr(kp)} is {arr.dtype}{list(arr.shape)}, "
                f"expected {want.dtype}{list(want.shape)} (a different model or dtype?)"
            )
        out.append(arr)
    return jax.tree_util.tree_unflatten(treedef, out), meta


def read_meta(path) -> dict:
    """The meta dict of the checkpoint at ``path`` (validating that it is one); FileNotFoundError if absent."""
    header, _ = _read(os.fspath(path))
    return header.get("meta", {})
