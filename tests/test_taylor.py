"""Tests of the collapsed Taylor-mode interpreter against independent oracles:
brute-force nested autodiff (`jax.jacfwd` of `jax.jacfwd` along each direction,
`jax.hessian`) and closed forms."""

import warnings

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.scipy.special as jss  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import (  # noqa: E402
    check_jet as check,
    line_oracle as oracle,
    quick_jit,
)
from jax import lax  # noqa: E402

from eqxderiv import FallbackWarning  # noqa: E402
from eqxderiv._engine import (  # noqa: E402
    collapsed_jet,
    collapsed_jet_contracted,
    compressed_second,
    compression,
    registry,
)


def laplacian(fn, x):
    """Per-output Laplacian from the full Hessian."""
    return jnp.trace(jax.hessian(fn)(x), axis1=-2, axis2=-1)


def assert_close(a, b, rtol=1e-10, atol=1e-10):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def probes(seed, k, d):
    """`k` random directions in R^d and random (signed) weights. Test data comes
    from numpy: jax.random would compile a program per shape."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(k, d))), jnp.asarray(rng.normal(size=k))


def make_mlp(in_size, out_size, activation, seed, dtype=jnp.float64):
    """An `eqx.nn.MLP` (width 8, depth 2) with numpy-drawn parameters; its own
    initialisation would compile a jax.random program per layer shape."""
    shapes = eqx.filter_eval_shape(
        eqx.nn.MLP, in_size, out_size, 8, 2, activation, key=jax.random.key(0)
    )
    rng = np.random.default_rng(seed)

    def draw(s):
        if not isinstance(s, jax.ShapeDtypeStruct):
            return s  # the activation function
        return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(s.shape[-1]), dtype)

    return jax.tree.map(
        draw, shapes, is_leaf=lambda s: isinstance(s, jax.ShapeDtypeStruct)
    )


# Points inside every domain used below (log, sqrt, arcsin, arctanh, ...), with no
# two coordinates equal or at a kink.
X = jnp.array([0.31, 0.57, 0.74, 0.43])
A = jnp.array([[0.3, -1.2, 0.5, 0.8], [1.1, 0.4, -0.7, 0.2], [-0.6, 0.9, 0.1, 1.3]])


FAMILIES = {
    # elementwise unary
    "tanh": lambda x: jnp.tanh(2 * x) * x,
    "sin_cos": lambda x: jnp.sin(x) * jnp.cos(x[::-1]),
    "exp_log": lambda x: jnp.exp(x) + jnp.log(x) * x,
    "log1p_expm1_exp2": lambda x: jnp.log1p(x) * jnp.expm1(x) + jnp.exp2(x),
    "logistic": lambda x: jax.nn.sigmoid(3 * x) / x,
    "integer_pow": lambda x: x**3 + x**-2 + x**2 * x[0] ** 1,
    "square": lambda x: jnp.square(x) * jnp.sum(x),
    "sqrt_rsqrt_cbrt": lambda x: jnp.sqrt(x) + lax.rsqrt(x) + jnp.cbrt(x) * x,
    "trig": lambda x: jnp.tan(x) + jnp.arcsin(x) + jnp.arccos(x) + jnp.arctan(x),
    "hyperbolic": lambda x: (
        (jnp.sinh(x) + jnp.cosh(x) + jnp.arcsinh(x) + jnp.arctanh(x))
        * jnp.arccosh(1 + x)
    ),
    "erf_erfc": lambda x: jss.erf(x) * jss.erfc(x),
    "lgamma": jss.gammaln,
    "digamma": jss.digamma,
    "abs_sign": lambda x: jnp.abs(x - 0.5) * x + jnp.sign(x - 0.5) * x**2,
    # elementwise binary
    "mul": lambda x: x * x[::-1] * jnp.sin(x),
    "mul_scalar_operand": lambda x: x[0] * jnp.sin(x) + lax.mul(x, 2.0),
    "div": lambda x: x / (1 + x[::-1] ** 2) + jnp.sin(x) / 3.0 + 1.0 / x,
    "pow": lambda x: x ** x[::-1] + x**2.5 + 2.0**x,
    "atan2": lambda x: jnp.arctan2(x, x[::-1] + 0.1),
    "max_min": lambda x: jnp.maximum(x, x[::-1] ** 2) + jnp.minimum(x, 0.5) * x,
    "rem": lambda x: jnp.sin(lax.rem(3 * x, x[::-1] + 0.2)),
    "clamp": lambda x: lax.clamp(0.4, x, 0.6) ** 2 + jnp.clip(x * x, 0.2, 0.5),
    # bilinear dot_general
    "dot_one_tangent": lambda x: jnp.tanh(A @ x) @ A,
    "dot_both_tangents": lambda x: jnp.outer(x, jnp.sin(x)) @ jnp.cos(x) + x @ x,
    "dot_batch_dims": lambda x: jnp.einsum(
        "bi,bj->bij", x.reshape(2, 2), jnp.sin(x).reshape(2, 2)
    ).ravel(),
    "dot_batch_const_lhs": lambda x: jnp.einsum(
        "bij,bj->bi", A[:2, :].reshape(2, 2, 2), jnp.tanh(x).reshape(2, 2)
    ).ravel(),
    "dot_batch_const_rhs": lambda x: jnp.einsum(
        "jb,bji->ib", jnp.exp(x).reshape(2, 2), A[:2, :].reshape(2, 2, 2)
    ).ravel(),
    # structural linear maps
    "concatenate_slice_reshape": lambda x: jnp.sin(
        jnp.concatenate([x, jnp.ones(2), x[1:3] ** 2]).reshape(2, 4)
    ),
    "broadcast_transpose": lambda x: (x[:, None] * jnp.sin(x)[None, :]).T ** 2,
    "reduce_sum": lambda x: jnp.sum(jnp.tanh(jnp.outer(x, x)), axis=0) * x,
    "select_n": lambda x: jnp.where(x > 0.5, x**2, jnp.sin(x)),
    "reductions_max_min": lambda x: jnp.max(x**3) * x + jnp.min(jnp.sin(x)),
    "gather_dynamic_slice": lambda x: (
        jnp.sin(x[jnp.array([2, 0, 3, 0])])
        * lax.dynamic_slice(x, (jnp.argmin(x),), (2,)).sum()
    ),
    "scatter_pad_rev": lambda x: jnp.flip(
        jnp.pad(jnp.tanh(x).at[1].set(x[0] ** 2), 1) ** 2
    ),
    "scatter_add_dus": lambda x: lax.dynamic_update_slice(
        jnp.exp(x).at[jnp.array([1, 1])].add(x[:2] ** 2), x[2:] ** 3, (0,)
    ),
    "cumsum_stack_tile_split": lambda x: jnp.concatenate(
        [
            jnp.cumsum(jnp.sin(x)),
            jnp.stack([x, x**2]).ravel(),
            jnp.tile(x**3, 2),
            *jnp.split(jnp.exp(x), 2),
        ]
    ),
    "sort": lambda x: jnp.sort(jnp.sin(3 * x) * x) ** 2,
    "sort_two_operands": lambda x: sum(
        lax.sort((x[::-1] ** 2, jnp.sin(x)), num_keys=1)
    ),
    "expand_squeeze": lambda x: jnp.squeeze(jnp.expand_dims(jnp.tanh(x), 0), 0) * x,
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_primitive_families(name):
    v, w = probes(0, 3, 4)
    check(FAMILIES[name], (X,), (v,), w)


def test_convert_element_type():
    v, w = probes(1, 3, 4)
    f = lambda x: (jnp.sin(x).astype(jnp.float32) ** 2).astype(jnp.float64)  # noqa: E731
    check(f, (X,), (v,), w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "act",
    [
        jax.nn.gelu,
        lambda x: jax.nn.gelu(x, approximate=False),
        jax.nn.softplus,
        jax.nn.silu,
        jax.nn.relu,
        lambda x: jax.nn.logsumexp(x) * x,
        jnp.linalg.norm,
    ],
)
def test_activations_laplacian(act):
    # Shifted so that no coordinate sits on the kink of relu and friends. With the
    # coordinate directions and unit weights the oracle is the Laplacian.
    x = X - 0.5
    f = lambda x: act(x * jnp.array([1.0, -2.0, 3.0, -0.5]))  # noqa: E731
    check(f, (x,), (jnp.eye(4),), jnp.ones(4))


def test_equinox_mlp_against_hessian():
    """An `eqx.nn.MLP` against its full Hessian `H` and Jacobian `J`: coordinate
    directions with unit weights give `J` and the Laplacian; random probes `v_k` with
    signed weights give `v_k J^T` and `sum_k w_k v_k^T H v_k` per output."""
    mlp = make_mlp(4, 3, jax.nn.gelu, seed=2)
    v, w = probes(3, 5, 4)

    @quick_jit
    def run(x):
        jac, hess = jax.jacfwd(mlp)(x), jax.hessian(mlp)(x)  # (o, d), (o, d, d)
        eye = collapsed_jet(mlp, (x,), (jnp.eye(4),), jnp.ones(4))
        rand = collapsed_jet(mlp, (x,), (v,), w)
        want_eye = (mlp(x), jac.T, jnp.trace(hess, axis1=1, axis2=2))
        want_rand = (mlp(x), v @ jac.T, jnp.einsum("k,oij,ki,kj->o", w, hess, v, v))
        return (eye, rand), (want_eye, want_rand)

    got, want = run(X)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert_close(g, r)


def test_reverse_mode_through_the_pass():
    """`jax.vjp` of (out_tangents, out_second) with respect to x and the weights
    matches `jax.vjp` of the nested-autodiff oracle."""
    mlp = make_mlp(4, 3, jnp.tanh, seed=4)
    v, w = probes(5, 5, 4)
    cts = probes(6, 5, 3)[0], probes(7, 3, 1)[0][:, 0]

    def ours(x, w):
        return collapsed_jet(mlp, (x,), (v,), w)[1:]

    def ref(x, w):
        return oracle(mlp, (x,), (v,), w)[1:]

    @quick_jit
    def run(x, w):
        return [jax.vjp(f, x, w)[1](cts) for f in (ours, ref)]

    got, want = run(X, w)
    for g, r in zip(got, want):
        assert_close(g, r)


def test_inner_jit_and_filter_jit():
    mlp = make_mlp(4, 2, jax.nn.softplus, seed=7)
    inner = jax.jit(lambda x: jnp.sin(x) * jnp.sum(x**2))
    f = lambda x: eqx.filter_jit(mlp)(inner(x))  # noqa: E731
    check(f, (X,), (jnp.eye(4),), jnp.ones(4))


def test_custom_vjp_and_checkpoint():
    # jax cannot differentiate a custom_vjp function forward, so the oracle is the
    # closed form of its primal.
    @jax.custom_vjp
    def mysin(x):
        return jnp.sin(x)

    mysin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))
    f = lambda x: mysin(x) + jax.checkpoint(lambda x: jnp.cos(x) ** 2)(x)  # noqa: E731
    y, t, lap = quick_jit(lambda x: collapsed_jet(f, (x,), (jnp.eye(4),), jnp.ones(4)))(
        X
    )
    assert_close(y, jnp.sin(X) + jnp.cos(X) ** 2)
    assert_close(t, jnp.diag(jnp.cos(X) - jnp.sin(2 * X)))
    assert_close(lap, -jnp.sin(X) - 2 * jnp.cos(2 * X))


def test_eager():
    y, t, s = collapsed_jet(jnp.sin, (X,), (2 * jnp.eye(4)[:3],), jnp.arange(3.0))
    assert_close(y, jnp.sin(X))
    assert_close(t, 2 * jnp.eye(4)[:3] * jnp.cos(X)[None])
    assert_close(s, -4 * jnp.sin(X) * jnp.array([0.0, 1.0, 2.0, 0.0]))


@pytest.mark.parametrize("t_shape", [(), (1,)])
def test_space_time_with_zero_weight_on_t(t_shape):
    d = 3
    mlp = make_mlp(d + 1, 2, jnp.tanh, seed=8)
    f = lambda x, t: mlp(jnp.concatenate([x, jnp.reshape(t, (1,))]))  # noqa: E731
    tx = jnp.eye(d + 1, d)  # rows 0..d-1: e_i in x; row d: zero in x
    tt = jnp.eye(d + 1)[:, d].reshape((d + 1, *t_shape))  # only row d moves t
    w = jnp.ones(d + 1).at[d].set(0.0)

    @quick_jit
    def run(x, t):
        ours = collapsed_jet(f, (x, t), (tx, tt), w)
        jac_t = jax.jacfwd(f, argnums=1)(x, t).reshape(1, 2)
        tangents = jnp.concatenate([jax.jacfwd(f)(x, t).T, jac_t])
        return ours, (f(x, t), tangents, laplacian(lambda x: f(x, t), x))

    for g, r in zip(*run(X[:d], jnp.full(t_shape, 0.37))):
        assert_close(g, r)


def test_inputs_without_tangent_cost_nothing():
    c = probes(9, 3, 4)[0]
    n = jnp.array(2)
    f = lambda x, c, n: jnp.tanh(c) @ x * n  # noqa: E731
    args = ((X, c, n), (jnp.eye(4), None, None), jnp.ones(4))
    check(f, *args)
    jaxpr = jax.make_jaxpr(lambda x: collapsed_jet(f, (x, c, n), *args[1:]))(X)
    names = [e.primitive.name for e in jaxpr.jaxpr.eqns]
    # tanh(c) is evaluated once and never differentiated; the linear chain after it
    # carries no second-order term, so nothing squares a tangent.
    assert names.count("tanh") == 1
    assert "integer_pow" not in names and "square" not in names


def test_trivial_outputs():
    # The output is an input, or a constant.
    y, t, s = collapsed_jet(lambda x, c: x, (X, 1.0), (jnp.eye(4), None), jnp.ones(4))
    assert_close(t, jnp.eye(4))
    assert not np.any(np.asarray(s))
    const = lambda x: 2.0  # noqa: E731
    y, t, s = collapsed_jet(const, (X,), (jnp.eye(4),), jnp.ones(4))  # pyright: ignore
    assert y.shape == s.shape == () and t.shape == (4,)
    assert y == 2.0 and not np.any(np.asarray(t)) and s == 0


def test_no_tangents_at_all():
    y, t, s = collapsed_jet(jnp.sin, (X,), (None,), jnp.ones(2))
    assert_close(y, jnp.sin(X))
    assert t.shape == (2, 4) and s.shape == (4,)
    assert not np.any(np.asarray(t)) and not np.any(np.asarray(s))


def test_float32():
    f = FAMILIES["tanh"]
    v, w = probes(10, 3, 4)
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731

    @quick_jit
    def run(x, v, w):
        return collapsed_jet(f, (f32(x),), (f32(v),), f32(w)), oracle(f, (x,), (v,), w)

    got, want = run(X, v, w)
    for g, r in zip(got, want):
        assert g.dtype == jnp.float32
        assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_fallback_warns_once_and_is_exact(monkeypatch):
    monkeypatch.setattr(registry, "_WARNED", set())
    # top_k has no rule; its input carries a second-order term.
    f = lambda x: lax.top_k(jnp.sin(x) * x, 2)[0] * x[:2]  # noqa: E731
    with pytest.warns(FallbackWarning, match="'top_k'.*nested autodiff"):
        check(f, (X,), (jnp.eye(4),), jnp.ones(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # traced again: no second warning
        jax.make_jaxpr(lambda x: collapsed_jet(f, (x,), (jnp.eye(4),), jnp.ones(4)))(X)


def _top_k_field(x):
    # Two results, one of them integer (the indices): the fallback must skip it.
    values, indices = lax.top_k(jnp.tanh(x) * x, 3)
    return values * x[indices]


def _duplicate_scatter_field(x):
    # With duplicate indices the overwriting scatter goes to the fallback.
    return jnp.sin(x).at[jnp.array([1, 1, 2])].set(x[:3] ** 2)


@pytest.mark.parametrize(
    "name, f",
    [
        ("top_k", _top_k_field),
        ("scatter", _duplicate_scatter_field),
    ],
)
def test_fallback_primitives(name, f, monkeypatch):
    monkeypatch.setattr(registry, "_WARNED", set())
    v, w = probes(11, 3, 4)
    with pytest.warns(FallbackWarning, match=f"'{name}'"):
        check(f, (X,), (v,), w)


def test_under_vmap():
    mlp = make_mlp(4, 2, jnp.tanh, seed=12)
    xs = jnp.asarray(np.random.default_rng(13).uniform(size=(5, 4)))

    @quick_jit
    def run(xs):
        ours = jax.vmap(lambda x: collapsed_jet(mlp, (x,), (jnp.eye(4),), jnp.ones(4)))
        jac = jnp.swapaxes(jax.vmap(jax.jacfwd(mlp))(xs), 1, 2)
        return ours(xs)[1:], (jac, jax.vmap(lambda x: laplacian(mlp, x))(xs))

    for g, r in zip(*run(xs)):
        assert_close(g, r)


def test_grad_wrt_closed_over_parameters():
    mlp = make_mlp(4, 2, jnp.tanh, seed=14)

    def ours(model):
        lap = collapsed_jet(model, (X,), (jnp.eye(4),), jnp.ones(4))[2]
        return jnp.sum(lap**2)

    def ref(model):
        return jnp.sum(laplacian(model, X) ** 2)

    # The field closes over its parameters, which are tracers of the outer grad.
    both = lambda: (eqx.filter_grad(ours)(mlp), eqx.filter_grad(ref)(mlp))  # noqa: E731
    g_ours, g_ref = quick_jit(both)()
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
        assert_close(a, b)


def test_errors(no_typecheck):
    with pytest.raises(ValueError, match="tangents\\[0\\] has shape"):
        collapsed_jet(jnp.sin, (X,), (jnp.eye(3),), jnp.ones(3))
    with pytest.raises(ValueError, match="only floating"):
        collapsed_jet(lambda n: n * 1.0, (jnp.arange(3),), (jnp.eye(3),), jnp.ones(3))
    with pytest.raises(ValueError, match="single array"):
        pair = lambda x: (x, x)  # noqa: E731
        collapsed_jet(pair, (X,), (jnp.eye(4),), jnp.ones(4))  # pyright: ignore
    with pytest.raises(ValueError, match="primals but"):
        collapsed_jet(jnp.sin, (X,), (), jnp.ones(4))


def _last_linear(x):
    h = jnp.tanh(_W1 @ x + 0.3)
    return (_W2 @ h - _B2).reshape(-1)


def _last_nonlinear(x):
    return jnp.sin(_W2 @ jnp.tanh(_W1 @ x))


_RNG = np.random.default_rng(7)
_W1 = _RNG.normal(size=(6, 4))
_W2 = _RNG.normal(size=(4, 6))
_B2 = _RNG.normal(size=(4,))


@pytest.mark.parametrize("fn", [_last_linear, _last_nonlinear])
def test_contraction(fn):
    # sum_k w_k <C_k, J v_k>, checked against the full Jacobian. `_last_linear`
    # ends in a linear layer (computed before it, through its transpose);
    # `_last_nonlinear` does not (computed from the output tangents).
    x = _RNG.normal(size=(4,))
    V = _RNG.normal(size=(3, 4))
    C = _RNG.normal(size=(3, 4))
    w = _RNG.normal(size=(3,))
    J = jax.jacfwd(fn)(jnp.asarray(x))
    expected = jnp.einsum("k,ki,ij,kj->", w, C, J, V)
    *_, c = quick_jit(lambda x_: collapsed_jet_contracted(fn, (x_,), (V,), w, C))(x)
    np.testing.assert_allclose(c, expected, rtol=1e-10)
    # With C = V = I and unit weights it is the divergence.
    eye = np.eye(4)
    *_, div = collapsed_jet_contracted(fn, (x,), (eye,), np.ones(4), eye)
    np.testing.assert_allclose(div, jnp.trace(J), rtol=1e-10)


# --------------------------------------------------------------------------------
# Compression: a Laplacian alone through a first layer narrower than the input.

_D = 12  # input dimension, larger than the width 8 of `make_mlp`


def _skip_field(x):
    # `x` is used again after the first layer: nothing narrows the computation to
    # one intermediate, so the directions must not be compressed.
    return make_mlp(_D, 3, jnp.tanh, 5)(x) + jnp.sin(x[:3]) * jnp.sum(x**2)


def _space_time_field(x):
    # The question's layout: concat(x, t), tanh layers, output of size d.
    return make_mlp(_D + 1, _D, jnp.tanh, 6)(jnp.concatenate([x, jnp.ones(1) * 0.3]))


_K1 = np.random.default_rng(12).normal(size=(_D, 5)) / 3
_K2 = np.random.default_rng(13).normal(size=(5, 2))


def _kernel_layout_field(x):
    # Flax's layout, `x @ kernel`, with the input scaled and shifted first (still
    # affine in x) and two branches of x merged before the narrow layer.
    u = 0.5 * x[::-1] + 1.0
    return jnp.tanh((u @ _K1 + x @ _K1) * 0.7 - 0.1) @ _K2


def _nonlinear_first_field(x):
    # A nonlinearity before the first narrow layer: nothing affine narrows first.
    return jnp.tanh(jnp.sin(x) @ _K1) @ _K2


_COMPRESS_FIELDS = {
    "tanh mlp": make_mlp(_D, 3, jnp.tanh, 1),
    "x @ kernel layout": _kernel_layout_field,
    "nonlinear first": _nonlinear_first_field,
    "softplus mlp (custom_jvp)": make_mlp(_D, 2, jax.nn.softplus, 2),
    "space-time mlp": _space_time_field,
    "skip connection": _skip_field,
}


@pytest.mark.parametrize("name", sorted(_COMPRESS_FIELDS))
@pytest.mark.parametrize("weights", ["unit", "positive", "identity"])
def test_compressed_second_order_term(name, weights):
    # "identity": unit weights, and the narrow layer's tangents taken from its
    # Jacobian by reverse mode instead of pushing the identity matrix through.
    fn = _COMPRESS_FIELDS[name]
    x = jnp.asarray(np.random.default_rng(3).normal(size=_D))
    rng = np.random.default_rng(4)
    w = jnp.asarray(rng.uniform(0.1, 2, _D)) if weights == "positive" else jnp.ones(_D)
    V = jnp.eye(_D)
    identity = weights == "identity"

    @quick_jit
    def both(x):
        ours = compressed_second(fn, (x,), (V,), w, identity=identity)
        return ours, oracle(fn, (x,), (V,), w)

    (y, s), (y_ref, _, s_ref) = both(x)
    assert_close(y, y_ref)
    assert_close(s, s_ref)
    if weights != "positive":
        assert_close(s, laplacian(fn, x))


def test_identity_path_is_taken():
    # Which fields narrow affinely (and where): the reverse-mode path applies to
    # the first three, not to the skip connection or a nonlinearity first.
    for name, found in [
        ("tanh mlp", True),
        ("x @ kernel layout", True),
        ("space-time mlp", True),
        ("skip connection", False),
        ("nonlinear first", False),
    ]:
        closed = jax.make_jaxpr(_COMPRESS_FIELDS[name])(jnp.zeros(_D))
        at = compression.affine_bottleneck(closed.jaxpr, closed.jaxpr.invars[0], _D)
        assert (at is not None) == found, name


def _flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    assert cost is not None
    return cost["flops"]


def test_compression_cuts_the_work():
    # d = 64 directions through a width-8 network: after the first layer the pass
    # carries 8. Measured on the compiled programs (batch of 32).
    d = 64
    net = make_mlp(d, 4, jnp.tanh, 9)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, d)))

    def lap(compress):
        def f(x):
            if compress:
                one = lambda a: compressed_second(
                    net, (a,), (jnp.eye(d),), jnp.ones(d)
                )[1]
            else:
                one = lambda a: collapsed_jet(net, (a,), (jnp.eye(d),), jnp.ones(d))[2]
            return jax.vmap(one)(x)

        return f

    with_, without = _flops(lap(True), x), _flops(lap(False), x)
    assert with_ < 0.5 * without, (with_, without)
    assert_close(jax.jit(lap(True))(x), jax.jit(lap(False))(x))


def test_compressed_laplacian_parameter_derivatives():
    # Gradient and Hessian-vector product of a Laplacian loss with respect to the
    # network's weights, against plain nested autodiff.
    import eqxderiv

    net = make_mlp(_D, 3, jnp.tanh, 11)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, _D)))
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def loss(p, method):
        lap = eqxderiv.Laplacian(eqx.combine(p, static), method=method)(x)
        return jnp.sum(jnp.sin(lap))

    v = jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size).reshape(a.shape)), params)

    @jax.jit
    def derivs(p):
        out = {}
        for m in ("auto", "nested"):
            grad = jax.grad(lambda q: loss(q, m))
            out[m] = (grad(p), jax.jvp(grad, (p,), (v,))[1])
        return out

    out = derivs(params)
    for got, want in zip(jax.tree.leaves(out["auto"]), jax.tree.leaves(out["nested"])):
        assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_identity_is_checked():
    # Regression: `identity=True` used to be trusted, and a wrong promise gave a
    # wrong second-order term.
    eye = jnp.eye(4)
    with pytest.raises(ValueError, match="exactly one input with a tangent"):
        compressed_second(lambda x, y: x * y, (X, X), (eye, eye), jnp.ones(4), True)
    with pytest.raises(ValueError, match="is not the identity"):
        compressed_second(jnp.sin, (X,), (2 * eye,), jnp.ones(4), identity=True)
    with pytest.raises(ValueError, match="weights are not all one"):
        compressed_second(jnp.sin, (X,), (eye,), 2 * jnp.ones(4), identity=True)
    with pytest.raises(ValueError, match="of shape"):
        compressed_second(
            lambda x: jnp.sum(x), (X[:2],), (jnp.ones((4, 2)),), jnp.ones(4), True
        )


def _zero_row_mlp(seed):
    # A first layer with one row of zeros (rank-deficient tangents at the narrow
    # layer), as a zero-initialised unit gives at the start of training.
    net = make_mlp(_D, 3, jnp.tanh, seed)
    first = net.layers[0]
    return eqx.tree_at(lambda n: n.layers[0].weight, net, first.weight.at[2].set(0.0))


@pytest.mark.parametrize("path", ["identity", "pushed"])
def test_compressed_rank_deficient_first_layer(path):
    # Regression: the QR factor's derivative divides by its zero diagonal, which
    # gave NaN parameter gradients. Values and gradients must equal nested AD.
    net = _zero_row_mlp(21)
    x = jnp.asarray(np.random.default_rng(22).normal(size=_D))
    params, static = eqx.partition(net, eqx.is_inexact_array)
    V = jnp.eye(_D)

    def ours(p):
        fn = eqx.combine(p, static)
        _, s = compressed_second(fn, (x,), (V,), jnp.ones(_D), path == "identity")
        return jnp.sum(jnp.sin(s))

    def nested(p):
        return jnp.sum(jnp.sin(laplacian(eqx.combine(p, static), x)))

    @quick_jit
    def run(p):
        return jax.value_and_grad(ours)(p), jax.value_and_grad(nested)(p)

    got, want = run(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert np.all(np.isfinite(np.asarray(g)))
        assert_close(g, w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_compressed_half_precision(dtype):
    # LAPACK has no half-precision QR: the factor is computed in float32.
    import eqxderiv

    net = make_mlp(_D, 3, jnp.tanh, 23, dtype=jnp.float32)
    x = np.random.default_rng(24).normal(size=(2, _D)).astype(np.float32)
    half = jax.tree.map(lambda a: a.astype(dtype) if eqx.is_array(a) else a, net)
    got = eqx.filter_jit(eqxderiv.Laplacian(half))(jnp.asarray(x, dtype))
    want = jax.vmap(lambda a: laplacian(net, a))(jnp.asarray(x))
    assert got.dtype == dtype
    scale = float(np.max(np.abs(np.asarray(want))))
    np.testing.assert_allclose(
        np.asarray(got.astype(jnp.float32)), np.asarray(want), atol=0.05 * scale
    )


def test_compressed_complex_intermediate(monkeypatch):
    # A complex value after the narrow layer: its tangents are complex, which have
    # no real Gram factor, so the pass goes on uncompressed; values stay exact.
    def fn(x):
        z = (_K1.T @ x).astype(jnp.complex128)  # (5,), narrower than x
        return jnp.abs(jnp.sum(jnp.exp(1j * z) * z))

    x = jnp.asarray(np.random.default_rng(25).normal(size=_D))
    V = jnp.eye(_D)
    for identity in (False, True):
        # `abs` of a complex value goes through nested autodiff, which warns.
        with pytest.warns(FallbackWarning, match="'abs' of a complex value"):
            monkeypatch.setattr(registry, "_WARNED", set())
            _, s = compressed_second(fn, (x,), (V,), jnp.ones(_D), identity)
        assert_close(s, laplacian(fn, x))


def test_fallback_warning_points_at_the_users_call(monkeypatch):
    import eqxderiv

    monkeypatch.setattr(registry, "_WARNED", set())
    f = lambda x: lax.top_k(jnp.sin(x), 2)[0]  # noqa: E731
    with pytest.warns(eqxderiv.FallbackWarning) as record:
        eqxderiv.Laplacian(f)(jnp.ones((2, 3)))  # the line the warning names
    assert record[0].filename == __file__


# --------------------------------------------------------------------------------
# float32 stays float32: with x64 on, float64 weights (jnp.ones's default) and
# tangents, no value the engine computes from a float32 field is widened, under
# strict dtype promotion (where an implicit widening would raise) and under the
# standard one (where it would go unnoticed).


def _wide_values(jaxpr):
    """The float64 and complex128 values that `jaxpr`'s equations compute,
    inner jaxprs included, as `(primitive name, dtype)` pairs."""
    found = []
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            dtype = getattr(v.aval, "dtype", None)
            if dtype in (jnp.float64, jnp.complex128):
                found.append((eqn.primitive.name, str(dtype)))
        for p in eqn.params.values():
            for q in p if isinstance(p, (tuple, list)) else (p,):
                inner = getattr(q, "jaxpr", q)
                if hasattr(inner, "eqns"):
                    found += _wide_values(inner)
    return found


# The families whose field is float32 for a float32 input (the others close over
# float64 arrays or give lax float64 scalars, which mix dtypes in the field itself).
_F32_FAMILIES = sorted(
    set(FAMILIES)
    - {"clamp", "concatenate_slice_reshape", "mul_scalar_operand"}
    - {"dot_one_tangent", "dot_batch_const_lhs", "dot_batch_const_rhs"}
)


@pytest.mark.parametrize("promotion", ["standard", "strict"])
@pytest.mark.parametrize("name", _F32_FAMILIES)
def test_float32_is_not_widened(name, promotion):
    fn = FAMILIES[name]
    x = X.astype(jnp.float32)
    v, w = probes(0, 3, 4)  # float64
    entry = lambda x, v, w: collapsed_jet(fn, (x,), (v,), w)
    with jax.numpy_dtype_promotion(promotion):
        closed = jax.make_jaxpr(entry)(x, v, w)
    assert _wide_values(closed.jaxpr) == []
    assert all(a.dtype == jnp.float32 for a in closed.out_avals)


@pytest.mark.parametrize("promotion", ["standard", "strict"])
def test_float32_is_not_widened_by_compression_or_contraction(promotion):
    fn = make_mlp(_D, 3, jnp.tanh, 1, dtype=jnp.float32)
    x = jnp.ones(_D, jnp.float32)
    V, w, C = jnp.eye(_D), jnp.ones(_D), jnp.ones((_D, 3))  # float64
    entries = [
        lambda x: compressed_second(fn, (x,), (V,), w),
        lambda x: compressed_second(fn, (x,), (V,), w, identity=True),
        lambda x: collapsed_jet_contracted(fn, (x,), (V,), w, C),
    ]
    for entry in entries:
        with jax.numpy_dtype_promotion(promotion):
            closed = jax.make_jaxpr(entry)(x)
        assert _wide_values(closed.jaxpr) == []
        assert all(a.dtype == jnp.float32 for a in closed.out_avals)
