# pyright: reportUnnecessaryTypeIgnoreComment=true
"""Static types of the public API: pyright (run over `tests/` in CI) must reject
a mistyped method name, and here an ignore comment that silences nothing is
itself an error, so each `# pyright: ignore` below asserts that pyright sees the
mistake. At run time the same calls raise the library's own errors."""

import jax.numpy as jnp
import pytest

import eqxderiv


def _field(x):
    return jnp.sum(x**2)


def test_a_mistyped_method_name_is_refused():
    with pytest.raises(ValueError, match=r"`method` must be one of"):
        eqxderiv.Laplacian(_field, method="forwrd")  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match=r"`method` must be a string from"):
        eqxderiv.Laplacian(_field, method=3)  # pyright: ignore[reportArgumentType]
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"`method` must be one of"):
        eqxderiv.derivatives(_field, x, method="nestd")  # pyright: ignore[reportArgumentType]


def test_every_method_name_is_accepted():
    x = jnp.ones((2, 3))
    for name in ("auto", "taylor", "forward", "nested"):
        assert jnp.allclose(eqxderiv.Laplacian(_field, method=name)(x), 6.0)
