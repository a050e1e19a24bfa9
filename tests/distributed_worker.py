"""One process of a multi-process ``manualbp train`` run, for tests/test_distributed.py (not a test module).

``python distributed_worker.py <manualbp train arguments>`` runs the command line as it is. With the
environment variable ``DIE_AFTER_STEP=k``, process 1 ends abruptly (``os._exit``, as a killed process:
no cleanup, no goodbye to the others) once its step k is done, so the test can watch what the others do.
"""

import os
import sys

if os.environ.get("DIE_AFTER_STEP"):
    from manualbp.cli import train_output

    die_after = int(os.environ["DIE_AFTER_STEP"])
    report = train_output.Progress.__call__

    def progress_or_die(self, step, values):
        import jax

        if jax.process_index() == 1 and step >= die_after:
            os._exit(9)
        return report(self, step, values)

    train_output.Progress.__call__ = progress_or_die

from manualbp.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
