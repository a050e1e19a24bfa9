"""What ``manualbp train`` writes: progress (tqdm, on stderr), strict JSON, one-line errors, the checked --plot path."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile


class JsonErrors(argparse.ArgumentParser):
    """A parser whose usage errors, when ``--json`` is among its arguments, are ``{"error": ...}`` on stdout."""

    _json = False

    def parse_known_args(self, args=None, namespace=None):
        self._json = "--json" in (sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message):
        if self._json:
            print(json.dumps({"error": f"{self.prog}: {message}"}))
            sys.exit(2)
        super().error(message)


def fail(args, message: str, code: int = 2) -> int:
    """Report one error line (``{"error": ...}`` on stdout with --json) and return the exit status ``code``."""
    message = message.removeprefix("train: ")  # the library names itself; the command says it once
    if getattr(args, "json", False):
        print(json.dumps({"error": message}))
    else:
        print(f"manualbp train: {message}", file=sys.stderr)
    return code


def strict(value):
    """``value`` with every non-finite float replaced by None, so ``json.dumps(allow_nan=False)`` holds."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def dumps(value) -> str:
    """Strict JSON (no NaN/Infinity)."""
    return json.dumps(strict(value), indent=2, allow_nan=False)


class Progress:
    """A tqdm bar on stderr, only when stderr is a terminal; shows the primary path's latest loss and metric."""

    def __init__(self, total: int, path: str):
        from tqdm.auto import tqdm

        self.path = path
        self.bar = tqdm(total=total, file=sys.stderr, disable=None, unit="step", dynamic_ncols=True)

    def __call__(self, step: int, values: dict):
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix({k.split("/", 1)[1]: f"{v:.4g}" for k, v in values.items() if k.startswith(self.path + "/")},
                             refresh=False)

    def close(self):
        self.bar.close()


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**64), got {text}")
    return value


def plot_path_error(path: str) -> str | None:
    """Why ``--plot path`` cannot be written (missing directory, not writable, extension), or None."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        return "--plot needs matplotlib: pip install 'manualbp[examples]'"
    if os.path.isdir(path):
        return f"--plot {path}: is a directory"
    supported = sorted(FigureCanvasAgg.get_supported_filetypes())
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext not in supported:
        return f"--plot {path}: unsupported extension {'.' + ext if ext else '(none)'}; use one of " + \
            ", ".join("." + e for e in supported)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"--plot {path}: directory {parent} does not exist"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"--plot {path}: not writable"
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        return f"--plot {path}: cannot write in {parent} ({e.strerror or e})"
    return None
