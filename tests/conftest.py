import itertools

import jax
import jaxtyping
import pytest


# Every oracle comparison is made in float64, with tolerances near round-off.
jax.config.update("jax_enable_x64", True)


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
