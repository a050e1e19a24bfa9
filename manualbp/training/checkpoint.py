"""Checkpoint files: an atomic state file and an append-only history log, both validated before use.

A training run's checkpoint is a directory (``manualbp.training.run_dir``)
holding two files written here:

- the state, one ``.npz``: the leaves of a pytree (parameters, optimizer
  state, running statistics, key) as ``leaf_<i>`` arrays and a JSON header
  (format tag, tree structure, meta: model, step, data position, ...).
  ``save`` writes a temporary file in the same directory, fsyncs it, renames
  it over the old one and fsyncs the directory, so a crash leaves the
  previous state intact and a completed save survives a power cut.
- the history, a log of fixed-size float64 records, one per step, appended
  at each save (so saving costs the steps since the last save, not the whole
  run) and cut back to the state's step when a run resumes.

Both carry checksums (BLAKE2b): the state file's zip comment is the digest of
every byte before it; the log has a digest after its header and after every
record, keyed by the run id and the record's step, so that a record changed,
moved or copied from another run does not match. A file whose bytes changed
after the save (a flipped bit on disk, a hand edit) is refused naming the file
(and, in the log, the record of step k), never loaded as another history or
other weights.

Reading refuses, with a ``CheckpointError``, anything that is not what was
written: a directory, FIFO or device in place of a file, a ``.npy`` or any
non-zip, an encrypted zip or one with an unknown compression, a foreign or
truncated file, shapes or dtypes other than the caller expects (checked in
each array's header before its data is read), a log shorter than the step,
and any byte that does not match its checksum.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tempfile
import zipfile

import jax
import numpy as np

FORMAT = "manualbp-checkpoint-v3"  # v3: with checksums
TMP_PREFIX = ".tmp-"
_LOG_MAGIC = b"MBPLOG02"  # 02: with checksums
_DIGEST = 8  # bytes of each log digest (BLAKE2b-64: a changed record passes with probability 2^-64)
_LOG_HEADER = 8 + 32 + 8 + _DIGEST  # magic, run id (32 hex characters), record size in bytes (uint64), digest
_MAX_HEADER_BYTES = 1 << 24
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, foreign, or for another run."""


def fsync_dir(directory) -> None:
    """Flush a directory's entries (a rename in it) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the directory."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(directory)


def regular_file(path) -> str:
    """``path`` as a string; FileNotFoundError if absent, CheckpointError if it is not a regular file."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path}: no such file") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise CheckpointError(f"checkpoint {path}: is {kind}, not a checkpoint file")
    return path


_STATE_DIGEST = 64  # the zip comment: the BLAKE2b-256 hex digest of every byte of the file before it


def _state_digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=_STATE_DIGEST // 2).hexdigest().encode()


def _with_digest(write_zip) -> bytes:
    """The zip that ``write_zip(f)`` writes, its comment the digest of every byte before the comment."""
    buf = io.BytesIO()
    write_zip(buf)
    with zipfile.ZipFile(buf, "a") as z:
        z.comment = b"0" * _STATE_DIGEST  # its length is part of what the digest covers
    data = buf.getvalue()[:-_STATE_DIGEST]
    return data + _state_digest(data)


def save(path, tree, meta: dict) -> None:
    """Write ``tree`` (a pytree of arrays) and ``meta`` (JSON-able) to ``path`` atomically, with its checksum."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    arrays = {f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    header = {"format": FORMAT, "treedef": str(treedef), "meta": meta}
    arrays["header"] = np.frombuffer(json.dumps(header, allow_nan=False).encode(), dtype=np.uint8)
    data = _with_digest(lambda f: np.savez(f, **arrays))
    atomic_write(path, lambda f: f.write(data))


class _Zip:
    """The members of a checkpoint zip, each read only after its npy header passes the caller's checks."""

    def __init__(self, path):
        self.path = regular_file(path)
        try:
            self.zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise CheckpointError(f"checkpoint {self.path}: unreadable (not a zip, truncated, or not a manualbp "
                                  f"checkpoint): {e}") from None
        for info in self.zf.infolist():
            if info.flag_bits & 0x1:
                raise CheckpointError(f"checkpoint {self.path}: member {info.filename} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise CheckpointError(f"checkpoint {self.path}: member {info.filename} uses compression method "
                                      f"{info.compress_type}, which a checkpoint never does")
        self.names = {info.filename.removesuffix(".npy") for info in self.zf.infolist()}
        with open(self.path, "rb") as f:
            data = f.read()
        if len(data) < _STATE_DIGEST or _state_digest(data[:-_STATE_DIGEST]) != data[-_STATE_DIGEST:]:
            self.zf.close()
            raise CheckpointError(f"checkpoint {self.path}: its bytes do not match their checksum: the file is damaged "
                                  "(or not a manualbp checkpoint of this version)")

    def read(self, name, shape=None, dtype=None, max_bytes=None):
        """The array ``name``; its header must give ``shape``/``dtype`` (when given) and at most ``max_bytes``."""
        try:
            with self.zf.open(name + ".npy") as f:
                version = np.lib.format.read_magic(f)
                if version not in _NPY_HEADERS:
                    raise CheckpointError(f"checkpoint {self.path}: {name} has npy format {version}, not one numpy writes "
                                          "for a checkpoint")
                got_shape, fortran, got_dtype = _NPY_HEADERS[version](f)
                if (shape is not None and tuple(got_shape) != tuple(shape)) or (dtype is not None and got_dtype != dtype):
                    raise CheckpointError(
                        f"checkpoint {self.path}: {name} is {got_dtype}{list(got_shape)}, expected "
                        f"{np.dtype(dtype) if dtype is not None else got_dtype}{list(shape if shape is not None else got_shape)}"
                        " (a different model or dtype?)")
                nbytes = int(np.prod(got_shape, dtype=np.int64)) * got_dtype.itemsize
                if got_dtype.hasobject or (max_bytes is not None and nbytes > max_bytes):
                    raise CheckpointError(f"checkpoint {self.path}: {name} of {got_dtype}{list(got_shape)} is not "
                                          "what a checkpoint holds")
                data = f.read(nbytes)
        except CheckpointError:
            raise
        except (KeyError, zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {self.path}: unreadable member {name}: {e}") from None
        if len(data) != nbytes:
            raise CheckpointError(f"checkpoint {self.path}: {name} is truncated")
        return np.frombuffer(data, got_dtype).reshape(got_shape, order="F" if fortran else "C").copy()

    def header(self) -> dict:
        if "header" not in self.names:
            raise CheckpointError(f"checkpoint {self.path}: not a manualbp checkpoint (no header)")
        raw = self.read("header", dtype=np.dtype(np.uint8), max_bytes=_MAX_HEADER_BYTES)
        try:
            header = json.loads(raw.tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"checkpoint {self.path}: corrupt header: {e}") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT or not isinstance(header.get("meta"), dict):
            got = header.get("format") if isinstance(header, dict) else None
            raise CheckpointError(f"checkpoint {self.path}: format {got!r}, expected {FORMAT!r}")
        return header


def read_meta(path) -> dict:
    """The meta dict of the checkpoint at ``path`` (validating that it is one); FileNotFoundError if absent."""
    z = _Zip(path)
    with z.zf:
        return z.header()["meta"]


def load(path, like, expect: dict | None = None):
    """Read the checkpoint at ``path`` into a tree shaped like ``like``; return (tree, meta).

    Args:
      path: the file written by ``save``.
      like: a pytree with the expected structure, shapes and dtypes (e.g. freshly initialised state).
      expect: meta entries that must match exactly (e.g. {"model": repr(model)}).

    Raises:
      FileNotFoundError: no file at ``path``.
      CheckpointError: not a regular file, unreadable, foreign, or a mismatch with ``like``/``expect``.
    """
    z = _Zip(path)
    with z.zf:
        header = z.header()
        meta = header["meta"]
        for key, want in (expect or {}).items():
            if meta.get(key) != want:
                raise CheckpointError(f"checkpoint {z.path}: it was written for {key} {meta.get(key)!r}, but this "
                                      f"run has {key} {want!r}")
        leaves, treedef = jax.tree_util.tree_flatten(like)
        if header.get("treedef") != str(treedef) or z.names != {"header", *(f"leaf_{i}" for i in range(len(leaves)))}:
            raise CheckpointError(f"checkpoint {z.path}: its tree structure does not match this run's (a different "
                                  "model or optimizer?)")
        out = [z.read(f"leaf_{i}", np.shape(leaf), np.asarray(leaf).dtype) for i, leaf in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, out), meta


def record_size(layout) -> int:
    """Bytes per step of the history log's values for ``layout`` = [(name, shape, dtype), ...] (float64 values).

    Each record on disk is these bytes and their ``_DIGEST``-byte checksum.
    """
    return 8 * sum(int(np.prod(shape, dtype=np.int64)) for _, shape, _ in layout)


def _digest(run_id: bytes, index: int, payload: bytes) -> bytes:
    """A log part's checksum: BLAKE2b-64 keyed by the run id, over the part's index (-1: the header) and bytes."""
    return hashlib.blake2b(int(index).to_bytes(8, "little", signed=True) + payload, key=run_id,
                           digest_size=_DIGEST).digest()


def _run_key(run_id: str) -> bytes:
    return run_id.encode().ljust(32)[:32]


def create_log(path, run_id: str, layout, history: dict) -> None:
    """Write a new history log (atomically) holding ``history`` ({name: (steps, *shape)}) in ``layout``."""
    key = _run_key(run_id)
    header = _LOG_MAGIC + key + np.uint64(record_size(layout)).tobytes()
    header += _digest(key, -1, header)
    atomic_write(path, lambda f: (f.write(header), f.write(_records(key, 0, layout, history))))


def _records(key: bytes, first: int, layout, history) -> bytes:
    """The records of steps first+1, first+2, ... of ``history``, each its values then their checksum."""
    if not layout:
        return b""
    cols = [np.asarray(history[name], np.float64).reshape(len(history[name]), -1) for name, _, _ in layout]
    rows = np.ascontiguousarray(np.concatenate(cols, axis=1))
    return b"".join(row.tobytes() + _digest(key, first + i, row.tobytes()) for i, row in enumerate(rows))


def append_log(path, run_id: str, layout, committed: int, history: dict) -> None:
    """Cut the log back to ``committed`` steps (a crash may have left more), append ``history``, fsync."""
    size = _check_log(path, run_id, layout, committed)
    with open(path, "r+b") as f:
        f.truncate(_LOG_HEADER + committed * (size + _DIGEST))
        f.seek(0, os.SEEK_END)
        f.write(_records(_run_key(run_id), committed, layout, history))
        f.flush()
        os.fsync(f.fileno())


def _check_log(path, run_id, layout, steps) -> int:
    path = regular_file(path)
    size = record_size(layout)
    key = _run_key(run_id)
    with open(path, "rb") as f:
        header = f.read(_LOG_HEADER)
    if len(header) != _LOG_HEADER or header[:8] != _LOG_MAGIC:
        old = header[:6] == _LOG_MAGIC[:6]
        raise CheckpointError(f"checkpoint {path}: not a manualbp history log"
                              + (" of this version (one written before checksums); start afresh" if old else ""))
    if header[8:40] != key:
        raise CheckpointError(f"checkpoint {path}: the history log belongs to another run than the state file")
    if _digest(key, -1, header[:-_DIGEST]) != header[-_DIGEST:]:
        raise CheckpointError(f"checkpoint {path}: the history log's header does not match its checksum: the file "
                              "is damaged")
    if int(np.frombuffer(header[40:48], np.uint64)[0]) != size:
        raise CheckpointError(f"checkpoint {path}: the history log records another set of quantities than this run")
    have = (os.path.getsize(path) - _LOG_HEADER) // (size + _DIGEST) if size else steps  # nothing recorded per step
    if have < steps:
        raise CheckpointError(f"checkpoint {path}: the history log holds {have} steps, the state is at step {steps}")
    return size


def read_log(path, run_id: str, layout, steps: int) -> dict:
    """The first ``steps`` records of the history log as {name: array (steps, *shape) of its dtype}, each checked
    against its checksum (a CheckpointError names the first record that does not match)."""
    size = _check_log(path, run_id, layout, steps)
    key = _run_key(run_id)
    with open(path, "rb") as f:
        f.seek(_LOG_HEADER)
        blob = f.read(steps * (size + _DIGEST))
    for i in range(steps if size else 0):
        record = blob[i * (size + _DIGEST): (i + 1) * (size + _DIGEST)]
        if _digest(key, i, record[:size]) != record[size:]:
            raise CheckpointError(f"checkpoint {path}: the history record of step {i + 1} does not match its "
                                  "checksum: the file is damaged (its losses and metrics cannot be trusted)")
    rows = np.frombuffer(b"".join(blob[i * (size + _DIGEST): i * (size + _DIGEST) + size] for i in range(steps)),
                         np.float64)
    raw = rows.reshape(steps, size // 8 if size else 0)
    out, col = {}, 0
    for name, shape, dtype in layout:
        n = int(np.prod(shape, dtype=np.int64))
        out[name] = raw[:, col:col + n].reshape((steps, *shape)).astype(dtype)
        col += n
    return out
