"""The stochastic estimators tested by what they estimate, fusion tested by what
it saves, and both sides of `_SHARED_PASS_MAX_DIRECTIONS`.

1. Unbiasedness, exactly. An estimate is `sum_k w_k v_k^T A v_k` for the
   directions `(V, w)` that the method's `directions` draws. Its expectation over
   the probe distribution is a finite average (every Rademacher sign pattern,
   every sampled coordinate) or, for Gaussian probes, only depends on the second
   moment `E[v v^T] = I`. So instead of drawing, the tests hand the method a probe
   set that realises the whole distribution (or its second moment), and the
   estimate must then equal the exact value to round-off. Only the random draw
   is replaced: `directions` is wrapped so that the library still returns its
   own weights `w` and `exact` flag (and the drawn `V` is checked to have the
   shape of the set replacing it); the operator, the fused sum, `compute`, the
   shared or separate GradDiv / Laplacian pass and the Taylor pass are the ones
   users call. The draws themselves are tested statistically, against the
   variance formulas of the docstrings.
2. Fusion, by counting: how often the field is traced (a field that counts its
   Python calls) and how many matrix products (`dot_general` equations, the
   field's layers) the fused program emits, against the operators evaluated
   separately. Only `jax.make_jaxpr`: nothing is compiled.
3. GradDiv + Laplacian at d = 64 (one shared pass) and d = 70 (two passes), by
   value against nested autodiff and by the structure of the program.
"""

import itertools
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    JnpMLP,
    assert_close,
    batch_inputs,
    closed_form,
    expected,
    reference,
    rng,
    uncached,
)
from jax.extend import core

import eqxderiv
from eqxderiv._methods.jet_method import _SHARED_PASS_MAX_DIRECTIONS


# --------------------------------------------------------------------------------
# 1. Exact unbiasedness.

D = 4  # 2^4 = 16 sign patterns


def _sign_patterns(d: int) -> np.ndarray:
    """All 2^d vectors of signs, `(2^d, d)`: the whole Rademacher distribution,
    each pattern with probability 2^-d. Their mean of `v v^T` is exactly I (each
    off-diagonal sum has as many +1 as -1 terms)."""
    return np.array(list(itertools.product((-1.0, 1.0), repeat=d)))


def _orthogonal_probes(d: int, key) -> np.ndarray:
    """`sqrt(d) Q` for a random orthogonal `Q`, `(d, d)`: continuous (not sign)
    probes whose mean of `v v^T` is `Q^T Q = I` up to round-off: the only moment
    of a Gaussian probe that the expectation of `v^T A v` depends on."""
    q, _ = np.linalg.qr(rng(key).standard_normal((d, d)))
    return math.sqrt(d) * q


# The probe set replacing the draw, read by the patched `directions` at trace time:
# a NumPy array, or a tracer of a `vmap` over one-probe sets.
_PROBES: list = [None]


@pytest.fixture
def fixed_probes(monkeypatch):
    """Replaces the random draw of `Hutchinson` and `SparseSampling` by the probe
    set in `_PROBES[0]`, keeping the library's weights and flag."""

    def patch(cls):
        draw = cls.directions

        def directions(self, d, dtype, key):
            V, w, exact = draw(self, d, dtype, key)
            probes = _PROBES[0]
            assert probes is not None and V.shape == probes.shape, (V, probes)
            return jnp.asarray(probes, dtype), w, exact

        monkeypatch.setattr(cls, "directions", directions)

    patch(eqxderiv.Hutchinson)
    patch(eqxderiv.SparseSampling)
    # The patched draw reads `_PROBES` when traced: no call may be answered from
    # the compilation cache of an earlier one with other probes.
    with uncached():
        yield
    _PROBES[0] = None


# name: (method, probes, one_probe). With `one_probe`, the method has K = 1 and the
# estimate is evaluated once per row of `probes` (a `vmap` over them) and averaged
# uniformly: the expectation of the one-probe estimate, literally. Otherwise the
# rows are the method's K probes of one estimate, whose weights `w` (1/K for
# Hutchinson, d/K for SparseSampling) come from the library.
PROBE_SETS = {
    # E over all 16 sign patterns of the one-probe Rademacher estimate.
    "rademacher_one_probe": (eqxderiv.Hutchinson(1), _sign_patterns(D), True),
    # Every pattern 5 times: K = 80 > 64 probes, so GradDiv and Laplacian get
    # separate passes, and w = 1/80.
    "rademacher_80_probes": (
        eqxderiv.Hutchinson(80),
        np.tile(_sign_patterns(D), (5, 1)),
        False,
    ),
    # A second-moment-exact set standing in for Gaussian probes (their
    # expectation only depends on E[v v^T] = I); see `_orthogonal_probes`.
    "gaussian_moment": (
        eqxderiv.Hutchinson(D, probe="gaussian"),
        _orthogonal_probes(D, jax.random.key(7)),
        False,
    ),
    # E over the sampled coordinate i (uniform on 0..d-1) of d * A_ii.
    "sparse_one_sample": (eqxderiv.SparseSampling(1), np.eye(D), True),
    # Every coordinate twice, K = 2d, weights d/K = 1/2.
    "sparse_every_coordinate_twice": (
        eqxderiv.SparseSampling(2 * D),
        np.tile(np.eye(D), (2, 1)),
        False,
    ),
}


@pytest.mark.parametrize("name", list(PROBE_SETS))
def test_expectation_over_the_probes_is_exact(name, fixed_probes, getkey):
    method, probes, one_probe = PROBE_SETS[name]
    f = JnpMLP(D, D, 16, time=True, key=getkey())  # nonlinear vector field
    g = closed_form("vector", D, getkey())
    u = closed_form("scalar", D, getkey())
    x, t = batch_inputs(getkey(), (3,), D, "flat")
    op = lambda cls, field: cls(field, method=method)
    ops = {
        "f/Divergence": op(eqxderiv.Divergence, f),
        "f/Laplacian": op(eqxderiv.Laplacian, f),
        "f/GradDiv": op(eqxderiv.GradDiv, f),
        # A fused sum: GradDiv and Laplacian from the same probes, in one pass
        # (K <= 64) or two (K > 64), the time derivative exact.
        "f/TD+GD-Lap": op(eqxderiv.TimeDerivative, f)
        + op(eqxderiv.GradDiv, f)
        - op(eqxderiv.Laplacian, f),
        "g/Divergence": op(eqxderiv.Divergence, g),
        "g/GradDiv": op(eqxderiv.GradDiv, g),
        "g/Laplacian": op(eqxderiv.Laplacian, g),
        "u/Laplacian": op(eqxderiv.Laplacian, u),
    }
    key = getkey()

    @eqx.filter_jit
    def run(ops, probes):
        def estimate(p):
            _PROBES[0] = p
            return {k: o(x, t, key=key) for k, o in ops.items()}

        if not one_probe:
            return estimate(probes)
        # One estimate per one-probe set `p` of shape (1, d), averaged.
        per_probe = jax.vmap(estimate)(probes[:, None, :])
        return jax.tree.map(lambda a: jnp.mean(a, axis=0), per_probe)

    try:
        out = run(ops, jnp.asarray(probes))
    finally:
        _PROBES[0] = None
    ref = reference(("Divergence", "Laplacian", "GradDiv", "TimeDerivative"), f, x, t)
    ref_g = expected(("Divergence", "GradDiv", "Laplacian"), g, x, t)
    ref_u = expected(("Laplacian",), u, x, t)
    want = {
        "f/Divergence": ref["Divergence"],
        "f/Laplacian": ref["Laplacian"],
        "f/GradDiv": ref["GradDiv"],
        "f/TD+GD-Lap": ref["TimeDerivative"] + ref["GradDiv"] - ref["Laplacian"],
        "g/Divergence": ref_g["Divergence"],
        "g/GradDiv": ref_g["GradDiv"],
        "g/Laplacian": ref_g["Laplacian"],
        "u/Laplacian": ref_u["Laplacian"],
    }
    for k in want:
        assert_close(out[k], want[k], rtol=1e-10, atol=1e-10, label=f"{name}: {k}")


def test_fixed_probes_change_the_estimate(fixed_probes, getkey):
    # Guards the test above against a patch that does nothing: with the patch in
    # place, a probe set that is *not* the whole distribution (one sign pattern)
    # gives the biased one-probe estimate v^T J v, computed here by hand.
    f = JnpMLP(D, D, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (3,), D, "flat")
    v = _sign_patterns(D)[5:6]
    _PROBES[0] = v
    op = eqxderiv.Divergence(f, method=eqxderiv.Hutchinson(1))
    out = eqx.filter_jit(lambda op, x, t, k: op(x, t, key=k))(op, x, t, getkey())
    J = np.asarray(reference(("Jacobian",), f, x, t)["Jacobian"])
    assert_close(out, np.einsum("i,bij,j->b", v[0], J, v[0]))
    assert not np.allclose(out, np.trace(J, axis1=1, axis2=2))


# --------------------------------------------------------------------------------
# 1b. The real draws: mean and variance of the one-probe estimate.


def _hutchinson_variance(A: np.ndarray, probe: str) -> float:
    """The variance of one probe's term `v^T A v`, as the `Hutchinson` docstring
    states it."""
    fro, tr2, diag = np.sum(A * A), np.trace(A @ A), np.sum(np.diag(A) ** 2)
    return float(fro + tr2 - (2 * diag if probe == "rademacher" else 0))


def _sparse_variance(A: np.ndarray) -> float:
    """The variance of one term `d A_ii`, as the `SparseSampling` docstring states
    it."""
    a = np.diag(A)
    return float(len(a) * np.sum(a**2) - np.sum(a) ** 2)


def test_variance_matches_the_docstrings(getkey):
    # N one-probe estimates at one point: a batch of N copies of x0, each sample
    # of which gets its own probes (shared probes would give a zero variance).
    N = 2**15
    f = JnpMLP(D, D, 16, time=False, key=getkey())  # divergence: A = J, not symmetric
    # Laplacian: A = Hessian = diag(-sin x) + 2 a a^T, whose diagonal is large
    # enough for the Rademacher and Gaussian formulas to differ measurably.
    u = closed_form("scalar", D, getkey())
    x0 = np.asarray(rng(getkey()).standard_normal(D))
    xs = jnp.asarray(np.broadcast_to(x0, (N, D)))
    methods = {
        "rademacher": eqxderiv.Hutchinson(1),
        "gaussian": eqxderiv.Hutchinson(1, probe="gaussian"),
        "sparse": eqxderiv.SparseSampling(1),
    }
    ops = {}
    for name, m in methods.items():
        ops["div", name] = eqxderiv.Divergence(f, method=m)
        ops["lap", name] = eqxderiv.Laplacian(u, method=m)

    @eqx.filter_jit
    def run(ops, key):
        keys = jax.random.split(key, len(ops))
        return {k: op(xs, key=kk) for (k, op), kk in zip(ops.items(), keys)}

    out = run(ops, getkey())
    mats = {
        "div": np.asarray(
            reference(("Jacobian",), f, jnp.asarray(x0[None]))["Jacobian"][0]
        ),
        "lap": np.asarray(
            reference(("Hessian",), u, jnp.asarray(x0[None]))["Hessian"][0]
        ),
    }
    wrong = {"rademacher": "gaussian", "gaussian": "rademacher"}
    for (q, name), y in out.items():
        A = mats[q]
        y = np.asarray(y, dtype=np.float64)
        var = _sparse_variance(A) if name == "sparse" else _hutchinson_variance(A, name)
        # Tolerances are 5 standard errors (CLT; a false failure for a random key
        # has probability below 1e-6, and the keys here are fixed): the mean of N
        # terms has standard error sqrt(var / N); the sample variance s2, a mean of
        # N terms (y - mean)^2, has sqrt((m4 - s2^2) / N), with the fourth central
        # moment m4 estimated from the same sample. At N = 2^15 that is a few
        # percent of the variance.
        s2 = float(np.var(y))
        m4 = float(np.mean((y - np.mean(y)) ** 4))
        assert abs(np.mean(y) - np.trace(A)) <= 5 * math.sqrt(var / N), (q, name)
        tol = 5 * math.sqrt((m4 - s2**2) / N)
        assert abs(s2 - var) <= tol, (q, name, s2, var, tol)
        if name in wrong:
            # The check has the power to tell the two probe formulas apart.
            other = _hutchinson_variance(A, wrong[name])
            assert abs(s2 - other) > tol, (q, name, s2, other, tol)


# --------------------------------------------------------------------------------
# 2. Fusion, by what it saves.


def _count(jaxpr: core.Jaxpr, name: str) -> int:
    """The number of `name` equations in `jaxpr`, nested jaxprs included."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == name
        for value in eqn.params.values():
            for v in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(v, core.ClosedJaxpr):
                    n += _count(v.jaxpr, name)
                elif isinstance(v, core.Jaxpr):
                    n += _count(v, name)
    return n


class Counted(eqx.Module):
    """A field that counts how often it is called, i.e. traced: under `jit` (or
    `make_jaxpr`) its Python body runs once per trace, not per evaluation."""

    field: JnpMLP
    calls: list = eqx.field(static=True)

    def __call__(self, x, t=None):
        self.calls[0] += 1
        return self.field(x, t)


def _cost(fn, x, t) -> tuple[int, int]:
    """`(field traces, matrix products)` of the program `fn(x, t)`. Every
    `dot_general` of these programs is a product by a layer's weights (of the
    value, of the tangents, of the second-order term, or transposed in reverse
    mode); the counts are of equations, not FLOPs."""
    calls = [0]
    with uncached():  # every call traced, none answered from the cache
        jaxpr = jax.make_jaxpr(lambda x, t: fn(calls, x, t))(x, t)
    return calls[0], _count(jaxpr.jaxpr, "dot_general")


def _mlp(d: int, width: int, key) -> JnpMLP:
    return JnpMLP(d, d, width, time=True, key=key)


def _fused_and_separate(f, kinds, coeffs, x, t, method: Any = "auto"):
    """The cost of `sum_i coeffs[i] * kinds[i](u)` as one expression on one field
    object (fused), as the sum of the operators called separately inside one
    program, and of each operator alone."""

    def fused(calls, x, t):
        u = Counted(f, calls)
        terms = [c * k(u, method=method) for k, c in zip(kinds, coeffs)]
        return sum(terms[1:], terms[0])(x, t)

    def separate(calls, x, t):
        u = Counted(f, calls)
        return sum(c * k(u, method=method)(x, t) for k, c in zip(kinds, coeffs))

    def alone(kind):
        return _cost(
            lambda calls, x, t: kind(Counted(f, calls), method=method)(x, t), x, t
        )

    return _cost(fused, x, t), _cost(separate, x, t), [alone(k) for k in kinds]


# The general path, where the gradient of the divergence is reverse mode over the
# forward pass that a Laplacian can share: the two-layer MLPs of these tests
# otherwise take the closed form (`tests/test_closed_form.py`), which has no
# pass to share.
GENERAL = eqxderiv.Taylor(closed_form=False)


def test_heat_residual_saves_traces_not_products(getkey):
    x, t = batch_inputs(getkey(), (4,), 3, "flat")
    f = JnpMLP(3, None, 8, time=True, key=getkey())
    kinds = (eqxderiv.TimeDerivative, eqxderiv.Laplacian)
    (fc, fd), (sc, sd), [(_, td), (_, lap)] = _fused_and_separate(
        f, kinds, (1, -1), x, t
    )
    # The fused residual asks `compute` for {dt, laplacian} at once, so the field
    # is traced fewer times (one shape check and one `trace_field` for both)...
    assert fc < sc, (fc, sc)
    # ...but it is no cheaper to run: `AbstractJetMethod.compute` takes the time
    # derivative by one JVP of its own beside the Taylor pass ("cheaper than a
    # (K+1)-th direction in the pass"), so the fused program holds the products of
    # the time derivative alone plus those of the Laplacian alone, exactly as the
    # separate one does. (docs/methods.md says such residuals "cost one pass";
    # if the time derivative ever joins the Taylor pass, this becomes `fd < sd`.)
    assert fd == sd == td + lap, (fd, sd, td, lap)


def test_graddiv_and_laplacian_share_one_pass(getkey):
    # d = 3 <= 64: the Laplacian is an auxiliary output of the pass that reverse
    # mode differentiates for the gradient of the divergence, so it costs no
    # products at all beyond those of GradDiv alone.
    x, t = batch_inputs(getkey(), (4,), 3, "flat")
    f = _mlp(3, 8, getkey())
    kinds = (eqxderiv.GradDiv, eqxderiv.Laplacian)
    (fc, fd), (sc, sd), [(_, gd), (_, lap)] = _fused_and_separate(
        f, kinds, (1, 1), x, t, GENERAL
    )
    assert fd == gd < sd == gd + lap, (fd, gd, lap, sd)
    assert fc < sc, (fc, sc)
    # A flat sum with a time derivative: the same sharing, plus the separate JVP
    # along t.
    kinds = (eqxderiv.TimeDerivative, eqxderiv.GradDiv, eqxderiv.Laplacian)
    (fc, fd), (sc, sd), [(_, td), (_, gd), (_, lap)] = _fused_and_separate(
        f, kinds, (1, 2.0, -0.5), x, t, GENERAL
    )
    assert fd == td + gd < sd == td + gd + lap, (fd, td, gd, lap, sd)
    assert fc < sc, (fc, sc)


def test_burgers_residual_shares_the_value(getkey):
    # TimeDerivative + Advection - Laplacian: the advection (f . grad) f is a JVP
    # along the value, which the fused residual takes from the Taylor pass instead
    # of evaluating the field once more: it saves exactly the products of one
    # evaluation of the field.
    x, t = batch_inputs(getkey(), (4,), 3, "flat")
    f = _mlp(3, 8, getkey())
    kinds = (eqxderiv.TimeDerivative, eqxderiv.Advection, eqxderiv.Laplacian)
    (fc, fd), (sc, sd), _ = _fused_and_separate(f, kinds, (1, 1, -0.1), x, t)
    _, value = _cost(lambda c, x, t: eqxderiv.Value(Counted(f, c))(x, t), x, t)
    assert value == 3  # the three layers of `JnpMLP`
    assert fd == sd - value, (fd, sd, value)
    assert fc < sc, (fc, sc)


# --------------------------------------------------------------------------------
# 3. Both sides of `_SHARED_PASS_MAX_DIRECTIONS`.


@pytest.mark.parametrize("d", [64, 70])
def test_graddiv_plus_laplacian_around_the_shared_pass_limit(d, getkey):
    assert _SHARED_PASS_MAX_DIRECTIONS == 64  # the two cases straddle it
    shared = d <= _SHARED_PASS_MAX_DIRECTIONS
    f = _mlp(d, 6, getkey())
    x, t = batch_inputs(getkey(), (2,), d, "flat")
    # An elastic (Navier-Cauchy) residual: (lambda + mu) grad div f + mu Lap f.
    lam, mu = 0.7, 1.3
    residual = (lam + mu) * eqxderiv.GradDiv(f) + mu * eqxderiv.Laplacian(f)
    out = eqx.filter_jit(lambda r, x, t: r(x, t))(residual, x, t)
    ref = reference(("GradDiv", "Laplacian"), f, x, t)
    assert_close(out, (lam + mu) * ref["GradDiv"] + mu * ref["Laplacian"])
    # Which branch ran, read off the program: at d <= 64 the fused residual costs
    # the products of GradDiv alone (the Laplacian rides along); above, those of
    # GradDiv plus those of a Laplacian alone (its own pass).
    # Without compression: the first layer (width 6) is narrower than d, where
    # a divergence alone would take `n` directions from it, not a pass of `d`.
    kinds = (eqxderiv.GradDiv, eqxderiv.Laplacian)
    method = eqxderiv.Taylor(closed_form=False, compress=False)
    (_, fd), (_, sd), [(_, gd), (_, lap)] = _fused_and_separate(
        f, kinds, (lam + mu, mu), x, t, method
    )
    assert sd == gd + lap
    assert fd == (gd if shared else gd + lap), (d, fd, gd, lap)
