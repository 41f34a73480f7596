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


@pytest.mark.parametrize("eps", [1e-2, 1e-4, 6.3e-7])
def test_nearly_rank_deficient_first_layer(eps, no_typecheck):
    # Two nearly parallel rows of the first layer: the Gram matrix squares its
    # condition number, and parameter gradients through the compressed Laplacian
    # carry round-off errors up to about cond(B) times nested autodiff's (see
    # docs/methods.md); without compression they agree to round-off. Values
    # agree to round-off either way.
    import eqxderiv

    rng = np.random.default_rng(11)
    d = 4
    b0, e = rng.standard_normal(d), rng.standard_normal(d)
    W1 = jnp.asarray(rng.standard_normal((5, 4)))
    W2 = jnp.asarray(rng.standard_normal((d, 5)))
    x = jnp.asarray(rng.standard_normal((3, d)))
    t = jnp.asarray([0.3, -0.6, 1.2])
    B = jnp.asarray(np.stack([b0, b0 + eps * e]))

    def make(B):
        def f(a, s):
            z = B @ a
            return W2 @ jnp.tanh(W1 @ jnp.concatenate([jnp.sin(z), jnp.cos(z) * s]))

        return f

    def ours(B, method):
        return eqxderiv.Laplacian(make(B), method=method)(x, t)

    def oracle(B):
        f = make(B)
        lap = lambda a, s: jnp.trace(  # noqa: E731
            jax.hessian(lambda y: f(y, s))(a), axis1=-2, axis2=-1
        )
        return jax.vmap(lap)(x, t)

    loss = lambda fn: lambda B: jnp.mean(fn(B) ** 2)  # noqa: E731
    want, g_want = oracle(B), jax.grad(loss(oracle))(B)
    cond = float(np.linalg.cond(np.asarray(B)))
    scale = float(jnp.max(jnp.abs(g_want)))
    for method, factor in (("auto", cond), (eqxderiv.Taylor(compress=False), 1.0)):
        got = ours(B, method)
        g = jax.grad(loss(lambda B: ours(B, method)))(B)
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
        err = float(jnp.max(jnp.abs(g - g_want))) / scale
        assert err < 1e-13 * factor, (method, err, cond)
