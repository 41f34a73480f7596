"""Probes shared across the batch: `Hutchinson(shared=True)` and
`SparseSampling(shared=True)` draw one `(K, d)` set of probes per call, from the
call's key, and use it for every sample.

1. Exactness for the probes drawn: the method's own `directions`, given the call's
   key, returns the probes `(V, w)`; every sample's estimate must then be the
   closed form `sum_k w_k v_k^T A v_k` with `A` from nested autodiff
   (`jax.hessian`, `jax.jacfwd`), whatever the batch layout or chunking.
2. Every sample uses the same probes: a field whose Hessian (or Jacobian) is the
   same at every point gives the same estimate for every sample.
3. Over many keys: each sample's estimate is unbiased with the docstrings'
   variance, and the batch mean has the variance of the estimate of the mean
   matrix (the documented trade-off), not the smaller one of independent probes.
4. Parameter gradients against nested autodiff, with and without the compression
   of the probes at a first layer narrower than `K`.
5. The JAX contract (jit without retracing, vmap over keys) and what sharing
   saves: no `(b, K, d)` array in the compiled program, the first layer's
   tangent product computed once (unbatched).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    JnpMLP,
    assert_close,
    assert_trees_close,
    batch_inputs,
    closed_form,
    reference,
    rng,
)
from jax.extend import core

import eqxderiv


D = 4

METHODS = {
    "rademacher": eqxderiv.Hutchinson(3, shared=True),
    "gaussian": eqxderiv.Hutchinson(3, probe="gaussian", shared=True),
    "sparse": eqxderiv.SparseSampling(3, shared=True),
    # More probes than the first layer is wide (16): the Laplacian's pass
    # compresses them there.
    "rademacher_24": eqxderiv.Hutchinson(24, shared=True),
}


def _probes(method, d, key):
    V, w, exact = method.directions(d, jnp.float64, key)
    assert not exact
    return np.asarray(V), np.asarray(w)


def _quadratic_forms(V, w, A):
    """`sum_k w_k v_k^T A v_k` over the last two axes of `A`."""
    return np.einsum("k,ka,...ac,kc->...", w, V, A, V)


# --------------------------------------------------------------------------------
# 1. The closed form for the probes drawn from the call's key.


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("layout", ["flat", "two_axes", "chunked"])
def test_every_sample_is_the_closed_form_of_the_drawn_probes(name, layout, getkey):
    method = METHODS[name]
    f = JnpMLP(D, D, 16, time=True, key=getkey())
    batch = (2, 3) if layout == "two_axes" else (5,)
    x, t = batch_inputs(getkey(), batch, D, "flat")
    chunk = 2 if layout == "chunked" else None
    key = getkey()
    ops = {
        "Laplacian": eqxderiv.Laplacian(f, method=method),
        "Divergence": eqxderiv.Divergence(f, method=method),
        "GradDiv": eqxderiv.GradDiv(f, method=method),
        "residual": eqxderiv.TimeDerivative(f, method=method)
        - eqxderiv.Laplacian(f, method=method),
    }

    @eqx.filter_jit
    def run(ops, x, t, key):
        return {n: o(x, t, key=key, chunk_size=chunk) for n, o in ops.items()}

    out = run(ops, x, t, key)
    V, w = _probes(method, D, key)
    ref = reference(("Hessian", "Jacobian", "TimeDerivative"), f, x, t)
    H, J = np.asarray(ref["Hessian"]), np.asarray(ref["Jacobian"])
    lap = _quadratic_forms(V, w, H)

    def div_estimate(y, s):
        Jy = jax.jacfwd(lambda z: f(z, s))(y)
        return jnp.einsum("k,ka,ac,kc->", w, V, Jy, V)

    flat_x, flat_t = x.reshape(-1, D), t.reshape(-1)
    graddiv = jax.vmap(jax.grad(div_estimate))(flat_x, flat_t).reshape(x.shape)
    want = {
        "Laplacian": lap,
        "Divergence": _quadratic_forms(V, w, J),
        "GradDiv": graddiv,
        "residual": np.asarray(ref["TimeDerivative"]) - lap,
    }
    for n in want:
        assert_close(out[n], want[n], rtol=1e-10, atol=1e-10, label=f"{name}: {n}")


def test_one_sample_draws_what_a_batch_shares(getkey):
    # Unbatched, the sample's key is the call's key, so shared and per-sample
    # probes coincide; in a batch, the shared ones are those of that key.
    f = JnpMLP(D, D, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (3,), D, "flat")
    key = getkey()
    shared = eqxderiv.Laplacian(f, method=eqxderiv.Hutchinson(4, shared=True))
    own = eqxderiv.Laplacian(f, method=eqxderiv.Hutchinson(4))
    run = eqx.filter_jit(lambda op, x, t, k: op(x, t, key=k))
    batch = run(shared, x, t, key)
    for i in range(3):
        assert_close(run(shared, x[i], t[i], key), batch[i], rtol=1e-12, atol=1e-12)
        assert_close(run(own, x[i], t[i], key), batch[i], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------
# 2. The same probes for every sample.


def test_a_field_alike_at_every_point_gives_one_estimate(getkey):
    gen = rng(getkey())
    B = gen.standard_normal((D, D))
    A = jnp.asarray(B + B.T)
    L = jnp.asarray(gen.standard_normal((D, D)))
    quadratic = lambda x: 0.5 * x @ A @ x  # Hessian A everywhere
    linear = lambda x: L @ x  # Jacobian L everywhere
    x = jnp.asarray(gen.standard_normal((6, D)))
    key = getkey()
    out = {}
    for shared in (True, False):
        for cls in (eqxderiv.Hutchinson, eqxderiv.SparseSampling):
            m = cls(2, shared=shared)
            lap = eqxderiv.Laplacian(quadratic, method=m)
            div = eqxderiv.Divergence(linear, method=m)
            out[shared, cls.__name__] = {
                "lap": lap(x, key=key),
                "div": div(x, key=key),
                # A stochastic operator used as a field draws its probes from
                # the call's shared key too.
                "nested": eqxderiv.Value(div)(x, key=key),
            }
    for (shared, name), res in out.items():
        for q, y in res.items():
            y = np.asarray(y)
            alike = np.allclose(y, y[0], rtol=1e-12, atol=1e-12)
            # Per-sample probes differ (the check has power); shared ones do not.
            assert alike == shared, (shared, name, q, y)
    exact = {"lap": float(jnp.trace(A)), "div": float(jnp.trace(L))}
    for q, value in exact.items():
        # Random, not exact: K = 2 probes do not give the trace of these.
        assert not np.isclose(out[True, "Hutchinson"][q][0], value)


# --------------------------------------------------------------------------------
# 3. Over many keys: unbiased, and the variance of the batch mean.


def _hutchinson_variance(A, probe):
    """One probe's variance of `v^T A v` (the `Hutchinson` docstring), over the
    last two axes of `A`."""
    fro = np.sum(A * A, axis=(-2, -1))
    tr2 = np.einsum("...ij,...ji->...", A, A)
    diag = np.sum(np.diagonal(A, axis1=-2, axis2=-1) ** 2, axis=-1)
    return fro + tr2 - (2 * diag if probe == "rademacher" else 0)


def _sparse_variance(A):
    """One sample's variance of `d A_ii` (the `SparseSampling` docstring)."""
    a = np.diagonal(A, axis1=-2, axis2=-1)
    return a.shape[-1] * np.sum(a**2, axis=-1) - np.sum(a, axis=-1) ** 2


def _check_mean_and_variance(y, mean, var, label):
    # 5 standard errors, as in test_estimators_and_fusion.py: of the mean,
    # sqrt(var / N); of the sample variance, sqrt((m4 - s2^2) / N).
    n = y.shape[0]
    s2 = float(np.var(y))
    m4 = float(np.mean((y - np.mean(y)) ** 4))
    assert abs(np.mean(y) - mean) <= 5 * math.sqrt(var / n), (label, np.mean(y), mean)
    tol = 5 * math.sqrt((m4 - s2**2) / n)
    assert abs(s2 - var) <= tol, (label, s2, var, tol)
    return tol


@pytest.mark.parametrize("probe", ["rademacher", "gaussian", "sparse"])
def test_unbiased_and_the_batch_mean_variance_of_the_docstrings(probe, getkey):
    N, K = 2**14, 2
    u = closed_form("scalar", D, getkey())  # Hessian diag(-sin x) + 2 a a^T
    x = jnp.asarray(rng(getkey()).standard_normal((6, D)))
    if probe == "sparse":
        method, variance = eqxderiv.SparseSampling(K, shared=True), _sparse_variance
    else:
        method = eqxderiv.Hutchinson(K, probe=probe, shared=True)
        variance = lambda A: _hutchinson_variance(A, probe)
    op = eqxderiv.Laplacian(u, method=method)
    keys = jax.random.split(getkey(), N)
    est = np.asarray(jax.jit(jax.vmap(lambda k: op(x, key=k)))(keys))  # (N, b)
    H = np.asarray(reference(("Hessian",), u, x)["Hessian"])  # (b, d, d)
    traces = np.trace(H, axis1=1, axis2=2)
    per_sample = variance(H) / K
    for i in range(len(x)):
        _check_mean_and_variance(est[:, i], traces[i], per_sample[i], (probe, i))
    # The batch mean estimates the trace of the mean Hessian from the same
    # probes: variance sigma^2(mean A) / K, not mean(sigma^2(A_i)) / (K b).
    shared = float(variance(H.mean(axis=0))) / K
    tol = _check_mean_and_variance(est.mean(axis=1), traces.mean(), shared, probe)
    independent = float(per_sample.sum()) / len(x) ** 2
    assert abs(np.var(est.mean(axis=1)) - independent) > tol, (shared, independent)


# --------------------------------------------------------------------------------
# 4. Parameter gradients.


@pytest.mark.parametrize(
    "method",
    [
        eqxderiv.Hutchinson(2, shared=True),
        # K = 6 > 4, the first layer's width (and d = 8 > K): compressed to 4
        # directions there, through a full-rank factor.
        eqxderiv.Hutchinson(6, shared=True),
        eqxderiv.SparseSampling(6, shared=True),
    ],
)
def test_parameter_gradients_against_nested_autodiff(method, getkey):
    d = 8
    f = JnpMLP(d, d, 4, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (5,), d, "flat")
    key = getkey()
    V, w = _probes(method, d, key)

    def loss(f):
        lap = eqxderiv.Laplacian(f, method=method)(x, t, key=key)
        div = eqxderiv.Divergence(f, method=method)(x, t, key=key)
        return jnp.mean(lap**2) + jnp.mean(jnp.sin(div))

    def nested(f):
        def one(y, s):
            g = lambda z: f(z, s)
            H, J = jax.hessian(g)(y), jax.jacfwd(g)(y)
            lap = jnp.einsum("k,ka,jac,kc->j", w, V, H, V)
            return lap, jnp.einsum("k,ka,ac,kc->", w, V, J, V)

        lap, div = jax.vmap(one)(x, t)
        return jnp.mean(lap**2) + jnp.mean(jnp.sin(div))

    got = eqx.filter_jit(eqx.filter_value_and_grad(loss))(f)
    want = eqx.filter_jit(eqx.filter_value_and_grad(nested))(f)
    assert_trees_close(got, want, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------
# 5. The JAX contract, and what sharing saves.


def test_jit_without_retracing(getkey):
    f = JnpMLP(D, D, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (4,), D, "flat")
    op = eqxderiv.Laplacian(f, method=eqxderiv.Hutchinson(3, shared=True))

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run(op, x, t, key):
        return op(x, t, key=key)

    a, b = run(op, x, t, getkey()), run(op, x, t, getkey())
    assert a.shape == b.shape == (4, D)
    assert not np.allclose(a, b)  # a new key draws new probes


def _dot_shapes(jaxpr: core.Jaxpr) -> list[tuple[int, ...]]:
    """The output shapes of every `dot_general`, sub-jaxprs included."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            shapes.append(tuple(getattr(eqn.outvars[0].aval, "shape")))
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                if isinstance(sub, core.ClosedJaxpr):
                    shapes += _dot_shapes(sub.jaxpr)
                elif isinstance(sub, core.Jaxpr):
                    shapes += _dot_shapes(sub)
    return shapes


def test_shared_probes_are_drawn_and_multiplied_once(getkey):
    b, d, K, n = 16, 2048, 8, 8
    u = JnpMLP(d, None, n, time=True, key=getkey())  # scalar: only x is (b, d)
    x, t = batch_inputs(getkey(), (b,), d, "flat")
    key = getkey()
    temp, dots = {}, {}
    for shared in (True, False):
        op = eqxderiv.Laplacian(u, method=eqxderiv.Hutchinson(K, shared=shared))
        fn = lambda x, t: op(x, t, key=key)
        mem = jax.jit(fn).lower(x, t).compile().memory_analysis()
        temp[shared] = None if mem is None else mem.temp_size_in_bytes
        dots[shared] = _dot_shapes(jax.make_jaxpr(fn)(x, t).jaxpr)
    # The first layer's tangent product, unbatched (once per call) when shared;
    # per sample otherwise.
    batched = {s: dots[s].count((b, K, n)) for s in dots}
    assert (K, n) in dots[True] and batched[True] == batched[False] - 1, dots
    assert (K, n) not in dots[False], dots[False]
    # XLA's own account of the compiled program, as the benchmark reads it.
    assert temp[True] is not None and temp[False] is not None
    probes = b * K * d * 8  # the per-sample probes in float64
    assert temp[False] >= probes, temp  # the check has power
    assert temp[True] < probes / 4, temp
