import itertools
import os

import jax
import jaxtyping
import pytest


# Nearly all of the suite's time is XLA compiling small programs on CPU, and most
# of that is optimisation and code generation that buys nothing for programs run
# once on tiny inputs: these CPU code-generation options halve the compile time
# (the programs compute the same thing, up to floating-point rounding). XLA reads
# XLA_FLAGS when its backend starts (after this file runs) and aborts on a flag it
# does not know, so they are only set for the jax version they were checked with,
# and never over flags the user set.
if jax.__version__.startswith("0.10.") and "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = (
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
        " --xla_cpu_use_fusion_emitters=false"
    )


# Every oracle comparison is made in float64, with tolerances near round-off.
jax.config.update("jax_enable_x64", True)


# `test_multidevice.py` shards batches over 8 CPU devices. JAX fixes the number of
# CPU devices when its backend starts, at the first JAX operation of the session,
# which is after this file runs (it runs before any test module is imported). The
# setting takes precedence over `--xla_force_host_platform_device_count` in the
# user's XLA_FLAGS, so it works whether or not they are set; a larger count asked
# for with JAX_NUM_CPU_DEVICES is kept. Other tests are unaffected: arrays not put
# on a device explicitly live on the default device, CPU device 0, as before (on a
# GPU or TPU machine the default device is still the accelerator's first).
MULTIDEVICE_CPUS = 8
if jax.config.values["jax_num_cpu_devices"] < MULTIDEVICE_CPUS:
    try:
        jax.config.update("jax_num_cpu_devices", MULTIDEVICE_CPUS)
    except RuntimeError:  # a plugin started the backend: test_multidevice skips
        pass
# Strict settings many users turn on: nothing in the library (or the tests) may
# rely on implicit rank promotion, nor on implicit dtype promotion (under "strict"
# mixing float32 with float64, or an integer array with a float one, raises).
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def getkey():
    """Returns a function giving a fresh PRNG key on each call; the sequence is the
    same in every test, so failures reproduce."""
    counter = itertools.count()
    return lambda: jax.random.key(next(counter))


@pytest.fixture
def no_typecheck():
    """Turns the runtime type checks of the jaxtyping pytest hook off for one test,
    as they are for a user who does not install the hook. The hook rejects some bad
    inputs (integer `x`, mismatched batch shapes, ...) before eqxderiv's own
    validation runs; with it off we can check that eqxderiv's own error names the
    argument and the shapes. `jaxtyping_disable` is read at call time."""
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)
