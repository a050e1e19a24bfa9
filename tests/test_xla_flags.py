"""The XLA flags of a compile-bound process (``manualbp check``, this suite): added once, never over a user's."""

import os

from manualbp.cli import xla_flags


def test_adds_every_flag_when_xla_knows_it():
    flags = xla_flags.fast_compile_flags("")
    assert xla_flags.OPT_LEVEL in flags.split()
    # the installed jaxlib (0.10.x here) has the emitter and the split flag; this very suite runs with them
    for flag in (xla_flags.EMITTERS, xla_flags.SPLIT):
        assert flag in flags.split()
        assert flag in os.environ["XLA_FLAGS"].split()


def test_keeps_what_the_user_set():
    user = ("--xla_backend_optimization_level=2 --xla_cpu_use_fusion_emitters=true "
            "--xla_cpu_parallel_codegen_split_count=4 --xla_force_host_platform_device_count=4")
    assert xla_flags.fast_compile_flags(user) == user


def test_idempotent():
    once = xla_flags.fast_compile_flags("--xla_force_host_platform_device_count=2")
    assert xla_flags.fast_compile_flags(once) == once
    assert once.split().count(xla_flags.OPT_LEVEL) == 1


def test_a_flag_the_compiler_does_not_name_is_never_added(monkeypatch):
    # an XLA that does not know a flag aborts the process: such a flag must be left out
    assert not xla_flags._jaxlib_knows("--xla_cpu_no_such_flag_anywhere=false")
    monkeypatch.setattr(xla_flags, "_jaxlib_knows", lambda flag: False)
    assert xla_flags.fast_compile_flags("") == xla_flags.OPT_LEVEL
