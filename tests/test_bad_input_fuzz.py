"""scripts/bad_input_fuzz.py: its classifier tells the outcomes apart, and a slice of its cases is all clear.

The whole run (every case, its figure quoted in docs/evidence.md) takes minutes; the suite runs one case in 41.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "bad_input_fuzz.py"
_spec = importlib.util.spec_from_file_location("bad_input_fuzz", _PATH)
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["bad_input_fuzz"] = fuzz  # its dataclass looks its module up
_spec.loader.exec_module(fuzz)


def _raise(e):
    raise e


def test_the_classifier_tells_clear_cryptic_silent_and_refused_apart():
    import manualbp as mbp

    def case(run, expect="error", who="Dense"):
        return fuzz.classify(fuzz.Case("test", who, "planted", run, expect))[0]

    assert case(lambda: mbp.Dense(0)) == "clear"  # ours, naming the layer
    assert case(lambda: mbp.Dense(0), who="Conv2D") == "cryptic"  # ours, but naming another
    assert case(lambda: 1 / 0) == "cryptic"  # Python's own
    assert case(lambda: _raise(ValueError("Dense: from a test file, not manualbp"))) == "cryptic"
    assert case(lambda: "a result") == "silent"  # a bad input accepted
    assert case(lambda: mbp.Dense(0), expect="valid") == "refused"  # a valid input refused
    assert case(lambda: 1.5, expect="nan") == "silent" and case(lambda: float("nan"), expect="nan") == "handled"
    assert case(lambda: "PASS", expect="inconclusive") == "silent"


@pytest.mark.slow
def test_a_slice_of_the_fuzz_is_clear_or_handled():
    rows = fuzz.run(every=41)
    assert len(rows) >= 40
    bad = [f"{r['outcome']} {r['name']}: {r['detail']}" for r in rows if r["outcome"] not in ("clear", "handled")]
    assert not bad, "\n".join(bad)
