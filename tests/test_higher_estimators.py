"""The stochastic biharmonic: its estimates' mean and variance against the
closed forms of `docs/higher-order.md`, computed from nested autodiff's fourth
derivative tensor in float64."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqxderiv


D = 3
# A quartic polynomial with every kind of fourth-order term, plus a smooth
# non-polynomial part, so that T = ∇⁴u and H = ∇²Δu are dense.
_C = np.random.default_rng(0).normal(size=(D, D, D, D))


def u(x):
    quartic = jnp.einsum("ijkl,i,j,k,l->", _C, x, x, x, x)
    return quartic + jnp.sin(x[0] + 2 * x[1]) * jnp.exp(0.5 * x[2])


X = jnp.array([[0.3, -0.4, 0.7]])


def _tensors(x):
    T = jax.jacfwd(jax.jacfwd(jax.jacfwd(jax.jacfwd(u))))(x)
    H = jnp.einsum("ijkk->ij", T)
    return np.asarray(T), np.asarray(H), float(jnp.einsum("iikk->", T))


def _draws(method, n):
    op = jax.jit(jax.vmap(lambda k: eqxderiv.Biharmonic(u, method=method)(X, key=k)[0]))
    return np.asarray(op(jax.random.split(jax.random.key(1), n)))


def test_hutchinson_mean_and_variance():
    T, H, bih = _tensors(X[0])
    K, n = 2, 2**15
    est = _draws(eqxderiv.Hutchinson(num_probes=K), n)
    variance = (8 * np.sum(T**2) + 24 * np.sum(H**2)) / (3 * K)
    # The mean within 4 standard errors; the sample variance within 10% (its own
    # relative standard error, from 8th-moment terms, is about 3% here).
    assert abs(est.mean() - bih) < 4 * np.sqrt(variance / n)
    assert est.var() == pytest.approx(variance, rel=0.1)


def test_sparse_sampling_mean_and_variance():
    T, _, bih = _tensors(X[0])
    K, n = 3, 2**15
    est = _draws(eqxderiv.SparseSampling(num_samples=K), n)
    mixed = np.array([T[i, i, j, j] for i, j in itertools.product(range(D), repeat=2)])
    variance = (D**2 * np.sum(mixed**2) - bih**2) / K
    assert abs(est.mean() - bih) < 4 * np.sqrt(variance / n)
    assert est.var() == pytest.approx(variance, rel=0.05)


def test_rademacher_setting_does_not_bias_the_biharmonic():
    # Rademacher probes would estimate 3Δ²u - 2Σ∂ᵢ⁴u: the biharmonic draws
    # Gaussian probes whatever `probe` says.
    T, H, bih = _tensors(X[0])
    K, n = 2, 2**15
    est = _draws(eqxderiv.Hutchinson(num_probes=K, probe="rademacher"), n)
    variance = (8 * np.sum(T**2) + 24 * np.sum(H**2)) / (3 * K)
    assert abs(est.mean() - bih) < 4 * np.sqrt(variance / n)
    biased = (3 * bih - 2 * sum(T[i, i, i, i] for i in range(D))) / 3
    assert abs(biased - bih) > 10 * np.sqrt(variance / n)
