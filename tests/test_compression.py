"""The factor that compresses K directions into n where a computation narrows
(`_engine.compression.gram_factor`): only `R^T R = a^T a` matters downstream, so
its value and every derivative of `R^T R` must be those of `a^T a` itself, the
oracle here, at full rank and where `a` is rank-deficient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from eqxderiv._engine.compression import gram_factor


K, N = 40, 6


def _a(deficient: bool):
    a = jax.random.normal(jax.random.key(0), (K, N))
    # A zero column: a first layer with a dead unit, as some initialisations give.
    return a.at[:, 2].set(0.0) if deficient else a


def _losses():
    w = jax.random.normal(jax.random.key(1), (N, N))
    w = w + w.T
    through = lambda a: jnp.sum(jnp.tanh(w * (gram_factor(a).T @ gram_factor(a))))
    direct = lambda a: jnp.sum(jnp.tanh(w * (a.T @ a)))
    return through, direct


@pytest.mark.parametrize("deficient", [False, True])
def test_value_and_gradient_are_those_of_the_gram_matrix(deficient):
    a = _a(deficient)
    r = gram_factor(a)
    assert r.shape == (N, N)
    assert_close(r.T @ r, a.T @ a, rtol=1e-12, atol=1e-12)
    through, direct = _losses()
    g = jax.grad(through)(a)
    assert bool(jnp.all(jnp.isfinite(g)))
    assert_close(g, jax.grad(direct)(a), rtol=1e-12, atol=1e-12)
    assert_close(jax.jit(gram_factor)(a).T @ jax.jit(gram_factor)(a), a.T @ a)


def test_higher_derivatives_at_full_rank_are_those_of_the_gram_matrix():
    a = _a(False)
    v = jax.random.normal(jax.random.key(2), (K, N))
    through, direct = _losses()

    def hvp(f, a_):
        return jax.jvp(jax.grad(f), (a_,), (v,))[1]

    assert_close(hvp(through, a), hvp(direct, a), rtol=1e-10, atol=1e-10)
    third = lambda f: jax.jvp(lambda a_: hvp(f, a_), (a,), (v,))[1]
    assert_close(third(through), third(direct), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_low_precision(dtype):
    a = _a(False).astype(dtype)
    r = gram_factor(a)
    assert r.dtype == dtype
    a32 = a.astype(jnp.float32)
    gram = np.asarray(a32.T @ a32)
    rr = np.asarray(r.astype(jnp.float32))
    rel = np.abs(rr.T @ rr - gram).max() / np.abs(gram).max()
    assert rel < 5 * float(jnp.finfo(dtype).eps), rel


def test_batched_and_mixed_ranks():
    # Under vmap the two branches become a select: one full-rank and one
    # rank-deficient matrix in one batch still get the right values and
    # finite, exact gradients.
    a = jnp.stack([_a(False), _a(True)])
    r = jax.vmap(gram_factor)(a)
    assert_close(jnp.swapaxes(r, 1, 2) @ r, jnp.swapaxes(a, 1, 2) @ a)
    through, direct = _losses()
    g = jax.grad(lambda b: jnp.sum(jax.vmap(through)(b)))(a)
    assert_close(g, jax.grad(lambda b: jnp.sum(jax.vmap(direct)(b)))(a))
