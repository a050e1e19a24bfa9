"""The XLA flags of a compile-bound process (``manualbp check``, this suite): added once, never over a user's."""

import os

from manualbp.cli import xla_flags


def test_adds_every_flag_when_xla_knows_it():
    flags = xla_flags.fast_compile_flags("")
    assert xla_flags.OPT_LEVEL in flags.split()
    # jaxlib 0.10.2 registers both, 0.11.2 the split flag only (seen on a GPU machine); this very suite runs with them
    assert xla_flags.registered(xla_flags.SPLIT)
    for flag in (xla_flags.EMITTERS, xla_flags.SPLIT):
        assert (flag in flags.split()) == (flag in os.environ["XLA_FLAGS"].split()) == xla_flags.registered(flag)


def test_keeps_what_the_user_set():
    user = ("--xla_backend_optimization_level=2 --xla_cpu_use_fusion_emitters=true "
            "--xla_cpu_parallel_codegen_split_count=4 --xla_force_host_platform_device_count=4")
    assert xla_flags.fast_compile_flags(user) == user


def test_idempotent():
    once = xla_flags.fast_compile_flags("--xla_force_host_platform_device_count=2")
    assert xla_flags.fast_compile_flags(once) == once
    assert once.split().count(xla_flags.OPT_LEVEL) == 1


def test_a_flag_the_compiler_does_not_register_is_never_added(monkeypatch):
    # an XLA that does not know a flag aborts the process: such a flag must be left out
    assert not xla_flags._jaxlib_holds(b"xla_cpu_no_such_flag_anywhere")
    monkeypatch.setattr(xla_flags, "registered", lambda flag: False)
    assert xla_flags.fast_compile_flags("") == xla_flags.OPT_LEVEL


def test_a_name_without_its_help_text_is_not_registered(monkeypatch):
    """jaxlib 0.11.2 holds the name xla_cpu_use_fusion_emitters (a DebugOptions field) but not the flag: it aborted."""
    monkeypatch.setitem(xla_flags.HELP, xla_flags.EMITTERS, b"a help text no XLA registers its flag with")
    assert xla_flags._jaxlib_holds(b"xla_cpu_use_fusion_emitters")
    assert not xla_flags.registered(xla_flags.EMITTERS)
    assert xla_flags.EMITTERS not in xla_flags.fast_compile_flags("").split()
