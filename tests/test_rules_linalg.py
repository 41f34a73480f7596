"""Tests of the collapsed Taylor-mode rules for the linear-algebra primitives
(`eqxderiv/_engine/rules/linalg.py`, `linear_solve.py`) against an independent
oracle: nested forward autodiff (`jax.jvp` of `jax.jvp` along each direction)
and `jax.hessian`, in float64, on small well-conditioned matrices built from the
input."""

import warnings

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.scipy.linalg as jsl  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import (  # noqa: E402
    check_jet,
    line_oracle as oracle,
    quick_jit,
)
from jax import lax  # noqa: E402

import eqxderiv  # noqa: E402
from eqxderiv import FallbackWarning  # noqa: E402
from eqxderiv._engine import collapsed_jet, registry  # noqa: E402


def check(fn, primals, tangents, weights, rtol=1e-9, atol=1e-9):
    return check_jet(fn, primals, tangents, weights, rtol, atol)


def assert_close(a, b, rtol=1e-9, atol=1e-9):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


D, K = 4, 3
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=D))
TX = jnp.asarray(RNG.normal(size=(K, D)))
# Mixed signs: the rules must not rely on nonnegative weights.
W = jnp.asarray([0.7, -1.3, 2.1])


def mat(x, n=3, shift=3.0, batch=()):
    """A smooth, well-conditioned `(*batch, n, n)` matrix of `x` (every entry
    depends nonlinearly on every coordinate)."""
    size = int(np.prod(batch, dtype=int)) * n * n
    c = jnp.arange(size, dtype=x.dtype).reshape(*batch, n, n)
    feats = jnp.sin(
        0.3 * c
        + jnp.tensordot(
            jnp.cos(
                c[..., None]
                + jnp.arange(D, dtype=x.dtype).reshape((1,) * c.ndim + (D,))
            ),
            x,
            axes=1,
        )
    )
    eye = jnp.eye(n, dtype=x.dtype).reshape((1,) * len(batch) + (n, n))
    return shift * eye + 0.5 * feats


def spd(x, n=3, batch=()):
    m = mat(x, n, shift=1.0, batch=batch)
    eye = jnp.eye(n, dtype=x.dtype).reshape((1,) * len(batch) + (n, n))
    return m @ jnp.swapaxes(m, -1, -2) + n * eye


def rhs(x, n=3, cols=None):
    v = jnp.cos(x[jnp.arange(n) % D] + jnp.arange(n, dtype=x.dtype))
    if cols is None:
        return v
    return v[:, None] * jnp.arange(1, cols + 1, dtype=x.dtype)[None, :]


def run(fn, **kw):
    return check(fn, (X,), (TX,), W, **kw)


# ---- library functions ------------------------------------------------------------


def test_solve():
    run(lambda x: jnp.linalg.solve(mat(x), rhs(x)))
    run(lambda x: jnp.linalg.solve(mat(x), rhs(x, cols=2)))
    # Only the matrix, or only the right-hand side, depends on x.
    b = rhs(X)
    run(lambda x: jnp.linalg.solve(mat(x), b))
    a = mat(X)
    run(lambda x: jnp.linalg.solve(a, rhs(x)))


def test_inv():
    run(lambda x: jnp.linalg.inv(mat(x)))
    run(lambda x: jnp.linalg.inv(mat(x, n=5)))


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_det(n):
    # jnp.linalg.det has closed forms up to n = 3 and goes through `lu` above.
    run(lambda x: jnp.linalg.det(mat(x, n)))


@pytest.mark.parametrize("n", [3, 5])
def test_slogdet(n):
    run(lambda x: jnp.linalg.slogdet(mat(x, n))[1])
    run(lambda x: jnp.linalg.slogdet(mat(x, n))[0])
    # A negative determinant (the sign is locally constant).
    flip = jnp.diag(jnp.asarray([-1.0] + [1.0] * (n - 1)))
    sign = run(lambda x: jnp.linalg.slogdet(flip @ mat(x, n))[0])[0]
    assert float(sign) == -1.0


def test_cholesky():
    run(lambda x: jnp.linalg.cholesky(spd(x)))
    run(lambda x: jnp.linalg.cholesky(spd(x, n=5)))


def test_cholesky_unsymmetric_tangent():
    # Without symmetrisation the primitive sees a non-symmetric tangent, where
    # JAX's rule is a convention (it uses the whole tangent, the primitive reads
    # one triangle); the rule follows JAX there too.
    def f(x):
        a = spd(x) + 0.1 * jnp.triu(mat(x), 1)
        return jnp.tril(lax.linalg.cholesky(a, symmetrize_input=False))

    run(f)


@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("trans", [0, 1, 2])
@pytest.mark.parametrize("unit", [False, True])
def test_solve_triangular(lower, trans, unit):
    def f(x):
        return jsl.solve_triangular(
            mat(x), rhs(x, cols=2), lower=lower, trans=trans, unit_diagonal=unit
        )

    run(f)


@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("transpose_a", [True, False])
@pytest.mark.parametrize("unit", [False, True])
def test_triangular_solve_right_side(lower, transpose_a, unit):
    def f(x):
        b = rhs(x, cols=3).T  # (2 rows, 3 columns): X op(A) = B with A (3, 3)
        return lax.linalg.triangular_solve(
            mat(x),
            b[:2],
            left_side=False,
            lower=lower,
            transpose_a=transpose_a,
            unit_diagonal=unit,
        )

    run(f)


def test_triangular_solve_one_operand():
    a, b = mat(X), rhs(X, cols=2)
    run(lambda x: jsl.solve_triangular(mat(x), b, lower=True))
    run(lambda x: jsl.solve_triangular(a, rhs(x, cols=2), lower=False))


def test_cho_solve():
    def f(x):
        c = jsl.cho_factor(spd(x), lower=True)
        return jsl.cho_solve(c, rhs(x))

    run(f)
    run(lambda x: jsl.cho_solve((jnp.linalg.cholesky(spd(x)), True), rhs(x, cols=2)))


def test_lu_factor():
    run(lambda x: jsl.lu_factor(mat(x))[0])
    run(lambda x: jsl.lu_factor(mat(x, n=5))[0])


@pytest.mark.parametrize("shape", [(4, 3), (3, 4)])
def test_lu_rectangular(shape):
    m, n = shape

    def f(x):
        a = mat(x, n=max(m, n))[:m, :n]
        return lax.linalg.lu(a)[0]

    run(f)


def test_lu_pivoting():
    # A matrix whose factorisation swaps rows.
    def f(x):
        a = mat(x, n=4, shift=0.0) + jnp.diag(jnp.asarray([0.01, 0, 0, 0]))
        lu, piv, perm = lax.linalg.lu(a)
        return lu

    run(f)
    a = mat(X, n=4, shift=0.0)
    assert np.any(np.asarray(lax.linalg.lu(a)[2]) != np.arange(4))


def test_jsl_lu():
    # The permutation matrix is constant; L and U follow the factorisation.
    run(lambda x: jsl.lu(mat(x))[1])
    run(lambda x: jsl.lu(mat(x))[2])


def test_custom_linear_solve_conventions():
    # A matvec nonlinear in its constants; `solve` closes over the (moving) matrix
    # too, and JAX's rule ignores that dependence: `solve` is taken to invert
    # `matvec`.
    def f(x):
        a = mat(x) * jnp.cos(x[0])
        return lax.custom_linear_solve(
            lambda v: a @ v,
            rhs(x),
            solve=lambda mv, b: jnp.linalg.solve(a, b),
            transpose_solve=lambda vm, b: jnp.linalg.solve(a.T, b),
        )

    run(f)


def test_custom_linear_solve_aux():
    def f(x):
        a = mat(x)

        def solve(mv, b):
            return jnp.linalg.solve(a, b), jnp.sum(a)

        x_, aux = lax.custom_linear_solve(lambda v: a @ v, rhs(x), solve, has_aux=True)
        return x_ + aux

    run(f)


# ---- batches ------------------------------------------------------------------


def test_batched():
    b = (2,)
    run(lambda x: jnp.linalg.solve(mat(x, batch=b), rhs(x, cols=1)[None]))
    run(lambda x: jnp.linalg.inv(mat(x, batch=b)))
    run(lambda x: jnp.linalg.det(mat(x, n=4, batch=b)))
    run(lambda x: jnp.linalg.slogdet(mat(x, n=4, batch=(2, 2)))[1])
    run(lambda x: jnp.linalg.cholesky(spd(x, batch=b)))
    run(lambda x: jsl.lu_factor(mat(x, batch=b))[0])

    def tri(x):
        a = mat(x, batch=b)
        bb = jnp.stack([rhs(x, cols=2), 2 * rhs(x, cols=2)])
        return jsl.solve_triangular(a, bb, lower=False, trans=1)

    run(tri)

    def right(x):
        a = mat(x, batch=b)
        bb = jnp.stack([rhs(x, cols=2).T, rhs(x, cols=2).T ** 2])
        return lax.linalg.triangular_solve(a, bb, left_side=False, lower=True)

    run(right)


def test_under_vmap():
    # The rules see vmapped primitives (extra batch axes) through `jax.vmap`.
    xs = jnp.stack([X, 0.5 * X])

    @quick_jit
    def both(xs):
        f = lambda x: (
            jnp.linalg.slogdet(mat(x, n=4))[1]
            + jnp.sum(jnp.linalg.solve(spd(x), rhs(x)))
        )
        ours = jax.vmap(lambda x: collapsed_jet(f, (x,), (TX,), W))(xs)
        want = jax.vmap(lambda x: oracle(f, (x,), (TX,), W))(xs)
        return ours, want

    got, want = both(xs)
    for g, w in zip(got, want):
        assert_close(g, w)


# ---- no fallback ----------------------------------------------------------------


FIELDS = {
    "solve": lambda x: jnp.linalg.solve(mat(x), rhs(x)),
    "inv": lambda x: jnp.linalg.inv(mat(x)),
    "det": lambda x: jnp.linalg.det(mat(x, n=4)),
    "slogdet": lambda x: jnp.linalg.slogdet(mat(x, n=4))[1],
    "cholesky": lambda x: jnp.linalg.cholesky(spd(x)),
    "solve_triangular": lambda x: jsl.solve_triangular(mat(x), rhs(x), lower=True),
    "cho_solve": lambda x: jsl.cho_solve((jnp.linalg.cholesky(spd(x)), True), rhs(x)),
    "lu_factor": lambda x: jsl.lu_factor(mat(x))[0],
    "batched": lambda x: jnp.linalg.slogdet(mat(x, n=4, batch=(2,)))[1],
    "eigh": lambda x: jnp.linalg.eigh(sym_distinct(x))[1],
}


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_no_fallback(name, monkeypatch):
    # The engine warns once per primitive per process; start from a clean slate so
    # that an earlier fallback elsewhere cannot hide one here. Tracing is enough.
    monkeypatch.setattr(registry, "_WARNED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        jax.make_jaxpr(lambda x: collapsed_jet(FIELDS[name], (x,), (TX,), W))(X)


def test_complex_takes_the_fallback(monkeypatch):
    # Complex matrices are left to the exact fallback (and agree with the oracle).
    monkeypatch.setattr(registry, "_WARNED", set())

    def f(x):
        a = mat(x).astype(jnp.complex128) * (1 + 0.5j)
        return jsl.solve_triangular(a, rhs(x).astype(a.dtype), lower=True)

    with pytest.warns(FallbackWarning):
        run(f)


# ---- library level --------------------------------------------------------------


def field(params, x):
    """A scalar field with a log-determinant and a solve, and a parameter."""
    a = mat(x, n=4) * params[0] + params[1] * jnp.eye(4)
    _, logdet = jnp.linalg.slogdet(a)
    return logdet + jnp.sum(jnp.linalg.solve(a, jnp.tanh(x)))


PARAMS = jnp.asarray([1.2, 0.4])
XS = jnp.asarray(RNG.normal(size=(3, D)))


def test_laplacian_and_hessian():
    u = lambda x: field(PARAMS, x)

    @quick_jit
    def both(xs):
        hess = jax.vmap(jax.hessian(u))(xs)
        ours = (eqxderiv.Laplacian(u)(xs), eqxderiv.Hessian(u)(xs))
        return ours, (jnp.trace(hess, axis1=-2, axis2=-1), hess)

    (lap, hess), (lap_want, hess_want) = both(XS)
    assert_close(lap, lap_want)
    assert_close(hess, hess_want)


def test_parameter_gradient():
    # Reverse mode through the collapsed pass (with respect to a closed-over
    # parameter) against reverse over nested autodiff.
    def loss(params):
        return jnp.sum(eqxderiv.Laplacian(lambda x: field(params, x))(XS) ** 2)

    def loss_want(params):
        hess = jax.vmap(jax.hessian(lambda x: field(params, x)))(XS)
        return jnp.sum(jnp.trace(hess, axis1=-2, axis2=-1) ** 2)

    got, want = quick_jit(lambda p: (jax.grad(loss)(p), jax.grad(loss_want)(p)))(PARAMS)
    assert_close(got, want, rtol=1e-8)


# ---- eigh -----------------------------------------------------------------------


def sym_distinct(x, n=4, batch=()):
    """Symmetric, with well-separated eigenvalues (about 3, 6, 9, ...)."""
    m = 0.3 * mat(x, n, shift=0.0, batch=batch)
    spread = jnp.diag(3.0 * jnp.arange(1.0, n + 1)).reshape((1,) * len(batch) + (n, n))
    return spread + m + jnp.swapaxes(m, -1, -2)


def test_eigh():
    run(lambda x: jnp.linalg.eigh(sym_distinct(x))[0])
    run(lambda x: jnp.linalg.eigh(sym_distinct(x))[1])
    run(lambda x: jnp.linalg.eigh(sym_distinct(x, batch=(2,)))[1])
    run(lambda x: jnp.linalg.eigvalsh(sym_distinct(x)))


@pytest.mark.parametrize("output", [0, 1])
def test_eigh_unsymmetric_tangent(output):
    # Symmetric at X, but its tangents are not: JAX's rule factors the symmetric
    # part, and uses the whole tangent. Its first derivative is then that of one
    # `jax.jvp`, and differs from the outer derivative of the primal in nested
    # autodiff (which sees the symmetrised matrix): the second derivative is the
    # nested one for each output alone, while for products of the outputs no
    # single tangent reproduces nested autodiff. `jnp.linalg.eigh` symmetrises
    # its input, so none of this arises there.
    def f(x):
        a = sym_distinct(x) + 0.2 * (mat(x, 4, 0.0) - mat(X, 4, 0.0))
        return lax.linalg.eigh(a, symmetrize_input=False)[output]

    @quick_jit
    def both(x):
        ours = collapsed_jet(f, (x,), (TX,), W)
        want_t = jax.vmap(lambda v: jax.jvp(f, (x,), (v,))[1])(TX)
        return ours, oracle(f, (x,), (TX,), W), want_t

    (y, t, s), (y_want, _, s_want), t_want = both(X)
    assert_close(y, y_want)
    assert_close(t, t_want)
    assert_close(s, s_want)
