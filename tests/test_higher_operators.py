"""`Partial`, `TimeDerivative(order=k)`, `Biharmonic` and `GradLaplacian`, batched,
against hand-derived derivatives of closed-form fields and brute-force nested
autodiff (`jax.jacfwd` applied `n` times and indexed, `jax.hessian` of the
trace of `jax.hessian`) on random networks, in float64, for every exact method;
their sums, stochastic estimates (unbiased), parameter gradients, the JAX
contract (jit, vmap, grad, no retracing) and their errors."""

import math
import re

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
    evaluate,
    rng,
    separate_evaluations,
)

import eqxderiv


METHODS = ["taylor", "forward", "nested"]

# The multi-indices of the issue: (x indices, t order).
PARTIALS = [
    ((), 0),
    ((0,), 0),
    ((0, 0, 0), 0),
    ((0, 1), 0),
    ((0, 0, 1, 1), 0),
    ((0,), 1),
    ((0, 0), 1),
    ((), 2),
]


# --------------------------------------------------------------------------------
# Oracles: nested autodiff, per sample, written directly with jax.


def _with_time(f, d, t_shape):
    """`f` as a function of `z = concatenate(x, [t])` (or of `x` alone)."""
    if t_shape is None:
        return f
    return lambda z: f(z[:d], jnp.reshape(z[d], t_shape))


def partial_oracle(f, x, t, xs, tk):
    """$\\partial^{xs} \\partial_t^{tk} f$ at one sample: the full derivative tensor
    of order `len(xs) + tk` by nested `jax.jacfwd`, indexed."""
    d = x.shape[0]
    g = _with_time(f, d, None if t is None else t.shape)
    z = x if t is None else jnp.concatenate([x, jnp.reshape(t, (1,))])
    for _ in range(len(xs) + tk):
        g = jax.jacfwd(g)
    return g(z)[(..., *xs, *(d,) * tk)]


def laplacian_oracle(g):
    return lambda y: jnp.trace(jax.hessian(g)(y), axis1=-2, axis2=-1)


def single_oracle(spec, f, x, t):
    g = (lambda y: f(y)) if t is None else (lambda y: f(y, t))
    kind = spec[0]
    if kind == "partial":
        return partial_oracle(f, x, t, spec[1], spec[2])
    if kind == "time":
        return partial_oracle(f, x, t, (), spec[1])
    if kind == "laplacian":
        return laplacian_oracle(g)(x)
    if kind == "biharmonic":
        return laplacian_oracle(laplacian_oracle(g))(x)
    if kind == "gradlap":
        return jax.jacfwd(laplacian_oracle(g))(x)
    raise ValueError(spec)


def batched_oracle(spec, f, x, t):
    """`single_oracle` over the leading batch axes of `x` (and `t`)."""
    batch = x.shape[:-1]
    n = math.prod(batch)
    xs = x.reshape((n, x.shape[-1]))
    if t is None:
        out = jax.vmap(lambda a: single_oracle(spec, f, a, None))(xs)
    else:
        ts = t.reshape((n, *t.shape[len(batch) :]))
        out = jax.vmap(lambda a, b: single_oracle(spec, f, a, b))(xs, ts)
    return out.reshape(batch + out.shape[1:])


@eqx.filter_jit
def oracles(specs, fields, x, t=None):
    """`{label: oracle}` for `specs = ((label, field name, spec), ...)`, as one
    compiled program (module level: shared by every method's test)."""
    return {
        label: batched_oracle(spec, fields[name], x, t) for label, name, spec in specs
    }


def build(spec, field, method):
    kind = spec[0]
    if kind == "partial":
        return eqxderiv.Partial(field, x=spec[1], t=spec[2], method=method)
    if kind == "time":
        return eqxderiv.TimeDerivative(field, order=spec[1], method=method)
    if kind == "laplacian":
        return eqxderiv.Laplacian(field, method=method)
    if kind == "biharmonic":
        return eqxderiv.Biharmonic(field, method=method)
    if kind == "gradlap":
        return eqxderiv.GradLaplacian(field, method=method)
    raise ValueError(spec)


def check_against_oracle(specs, fields, method, x, t=None, rtol=1e-8, atol=1e-8):
    ops = {label: build(spec, fields[name], method) for label, name, spec in specs}
    got = evaluate(ops, x, t)
    want = oracles(specs, fields, x, t)
    for label in want:
        assert_close(got[label], want[label], rtol, atol, label=label)
    return got


# --------------------------------------------------------------------------------
# Closed-form fields.


def poly_scalar(x, t):
    # p = x0^3 x1^2 t^2 + sin(x0) e^{x1} t
    return x[0] ** 3 * x[1] ** 2 * t**2 + jnp.sin(x[0]) * jnp.exp(x[1]) * t


def poly_vector(x, t):
    # (p, q) with q = x0^2 x1^2 e^t
    return jnp.stack([poly_scalar(x, t), x[0] ** 2 * x[1] ** 2 * jnp.exp(t)])


def _poly_partials(x, t):
    """`{(xs, tk): (p, q)}` worked out by hand, NumPy, batched over axis 0."""
    a, b = x[:, 0], x[:, 1]
    s, c, e, et = np.sin(a), np.cos(a), np.exp(b), np.exp(t)
    return {
        ((), 0): (a**3 * b**2 * t**2 + s * e * t, a**2 * b**2 * et),
        ((0,), 0): (3 * a**2 * b**2 * t**2 + c * e * t, 2 * a * b**2 * et),
        ((0, 0, 0), 0): (6 * b**2 * t**2 - c * e * t, 0 * a),
        ((0, 1), 0): (6 * a**2 * b * t**2 + c * e * t, 4 * a * b * et),
        ((0, 0, 1, 1), 0): (12 * a * t**2 - s * e * t, 4 * et),
        ((0,), 1): (6 * a**2 * b**2 * t + c * e, 2 * a * b**2 * et),
        ((0, 0), 1): (12 * a * b**2 * t - s * e, 2 * b**2 * et),
        ((), 2): (2 * a**3 * b**2, a**2 * b**2 * et),
    }


def test_partials_closed_form(getkey):
    # The vector field's first component is the scalar field `poly_scalar`.
    x, t = batch_inputs(getkey(), (4,), 2, "flat")
    ops = {
        f"{xs} {tk}": eqxderiv.Partial(poly_vector, x=xs, t=tk) for xs, tk in PARTIALS
    }
    # The index order does not matter, and an int is one index.
    ops["x=(1, 0)"] = eqxderiv.Partial(poly_scalar, x=(1, 0))
    ops["x=(1, 0, 1, 0)"] = eqxderiv.Partial(poly_vector, x=(1, 0, 1, 0))
    ops["x=0, t=1"] = eqxderiv.Partial(poly_vector, x=0, t=1)
    got = evaluate(ops, x, t)
    want = _poly_partials(np.asarray(x), np.asarray(t))
    for (xs, tk), (p, q) in want.items():
        label = f"x={xs}, t={tk}"
        assert_close(got[f"{xs} {tk}"], np.stack([p, q], -1), label=label)
    assert_close(got["x=(1, 0)"], want[((0, 1), 0)][0])
    assert_close(got["x=(1, 0, 1, 0)"], np.stack(want[((0, 0, 1, 1), 0)], -1))
    assert_close(got["x=0, t=1"], np.stack(want[((0,), 1)], -1))


C, OMEGA = 0.7, 1.3


def time_field(x, t):
    # e^{ct} sum_i sin x_i + sin(w t) x0^2
    t = jnp.reshape(t, ())
    return jnp.exp(C * t) * jnp.sum(jnp.sin(x)) + jnp.sin(OMEGA * t) * x[0] ** 2


@pytest.mark.parametrize("t_layout", ["flat", "column"])
def test_time_derivatives_closed_form(t_layout, getkey):
    x, t = batch_inputs(getkey(), (4,), 3, t_layout)
    ops = {f"order {k}": eqxderiv.TimeDerivative(time_field, order=k) for k in (1, 2)}
    ops |= {
        "order 3": eqxderiv.TimeDerivative(time_field, order=3),
        "Partial t=3": eqxderiv.Partial(time_field, t=3),
    }
    got = evaluate(ops, x, t)
    xn, tn = np.asarray(x), np.asarray(t).reshape(-1)
    for k in (1, 2, 3):
        want = C**k * np.exp(C * tn) * np.sum(np.sin(xn), -1)
        want = want + OMEGA**k * np.sin(OMEGA * tn + k * np.pi / 2) * xn[:, 0] ** 2
        assert_close(got[f"order {k}"], want, label=f"order {k}")
    assert_close(got["Partial t=3"], got["order 3"])
    # order=1 is the default: the first-order time derivative.
    default = evaluate({"": eqxderiv.TimeDerivative(time_field)}, x, t)[""]
    assert_close(default, got["order 1"])


class Quartic(eqx.Module):
    r"""$u(x) = \sum_i \sin x_i + (a\cdot x)^4 + e^{b\cdot x}$, with
    $\Delta u = -\sum_i \sin x_i + 12|a|^2 (a\cdot x)^2 + |b|^2 e^{b\cdot x}$,
    $\Delta^2 u = \sum_i \sin x_i + 24|a|^4 + |b|^4 e^{b\cdot x}$ and
    $\nabla\Delta u = -\cos x + 24|a|^2 (a\cdot x) a + |b|^2 e^{b\cdot x} b$;
    a vector field of two such (rows of `a`, `b`) when `a` is 2-D."""

    a: jax.Array
    b: jax.Array

    def __call__(self, x):
        s = jnp.sum(jnp.sin(x))
        return s + (self.a @ x) ** 4 + jnp.exp(self.b @ x)

    def hand(self, x):
        """(Laplacian, biharmonic, grad Laplacian) over a batch, NumPy."""
        a, b = np.asarray(self.a), np.asarray(self.b)
        sx = np.sum(np.sin(x), -1)[:, None]
        ax, eb = x @ a.T, np.exp(x @ b.T)  # (n, m) or (n,)
        aa, bb = np.sum(a * a, -1), np.sum(b * b, -1)
        if a.ndim == 1:
            ax, eb, sx = ax[:, None], eb[:, None], sx
            aa, bb, a, b = aa[None], bb[None], a[None], b[None]
        lap = -sx + 12 * aa * ax**2 + bb * eb
        bih = sx + 24 * aa**2 + bb**2 * eb
        gl = (
            -np.cos(x)[:, None, :]
            + (24 * aa * ax)[..., None] * a[None]
            + (bb * eb)[..., None] * b[None]
        )
        if self.a.ndim == 1:
            return lap[:, 0], bih[:, 0], gl[:, 0]
        return lap, bih, gl


def quartic(d, m, key):
    gen = rng(key)
    shape = (d,) if m is None else (m, d)
    a = gen.standard_normal(shape) / math.sqrt(d)
    b = gen.standard_normal(shape) * 0.5 / math.sqrt(d)
    return Quartic(jnp.asarray(a), jnp.asarray(b))


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_biharmonic_closed_form(d, getkey):
    # A scalar field at every d; a vector field, the Laplacian and the nested
    # Laplacian at d = 3.
    u, f = quartic(d, None, getkey()), quartic(d, 2, getkey())
    x, _ = batch_inputs(getkey(), (4,), d, None)
    fields = {"scalar": u} if d != 3 else {"scalar": u, "vector": f}
    ops = {}
    for name, field in fields.items():
        ops[f"{name} Biharmonic"] = eqxderiv.Biharmonic(field)
        ops[f"{name} GradLaplacian"] = eqxderiv.GradLaplacian(field)
    if d == 3:
        ops["vector Laplacian"] = eqxderiv.Laplacian(f)
        ops["scalar LapLap"] = eqxderiv.Laplacian(eqxderiv.Laplacian(u))
    got = evaluate(ops, x)
    for name, field in fields.items():
        _, bih, gl = field.hand(np.asarray(x))
        assert_close(got[f"{name} Biharmonic"], bih, label=f"{name} Biharmonic")
        assert_close(got[f"{name} GradLaplacian"], gl, label=f"{name} GradLaplacian")
    if d == 3:
        assert_close(got["vector Laplacian"], f.hand(np.asarray(x))[0])
        assert_close(got["scalar LapLap"], u.hand(np.asarray(x))[1], label="LapLap")


def test_nested_autodiff_oracle_on_a_closed_form(getkey):
    # The nested-autodiff oracle of the network tests below agrees with the
    # hand-derived derivatives.
    u, f = quartic(3, None, getkey()), quartic(3, 2, getkey())
    x, _ = batch_inputs(getkey(), (4,), 3, None)
    specs = tuple(
        (f"{name} {kind}", name, (kind,))
        for name in ("scalar", "vector")
        for kind in ("biharmonic", "gradlap")
    )
    brute = oracles(specs, {"scalar": u, "vector": f}, x)
    for name, field in (("scalar", u), ("vector", f)):
        _, bih, gl = field.hand(np.asarray(x))
        assert_close(brute[f"{name} biharmonic"], bih)
        assert_close(brute[f"{name} gradlap"], gl)


# --------------------------------------------------------------------------------
# Random networks against nested autodiff, every exact method.


def _space_time_fields(key):
    k1, k2 = jax.random.split(key)
    return {
        "scalar": eqxderiv.SpaceTimeMLP(2, "scalar", 8, 2, key=k1),
        "vector": JnpMLP(2, 2, 8, time=True, key=k2),
    }


# Every partial of the vector field; a few of the scalar network (another
# output layout: SpaceTimeMLP's scalar output).
SPACE_TIME_SPECS = (
    tuple(
        (f"vector Partial(x={xs}, t={tk})", "vector", ("partial", xs, tk))
        for xs, tk in PARTIALS
    )
    + tuple(
        (f"scalar Partial(x={xs}, t={tk})", "scalar", ("partial", xs, tk))
        for xs, tk in (((0, 0, 1, 1), 0), ((0, 0), 1), ((0,), 0))
    )
    + tuple(
        (f"vector TimeDerivative(order={k})", "vector", ("time", k)) for k in (1, 2, 3)
    )
    + (("scalar TimeDerivative(order=3)", "scalar", ("time", 3)),)
)


@pytest.mark.parametrize("method", METHODS)
def test_partials_and_time_derivatives_of_networks(method):
    fields = _space_time_fields(jax.random.key(10))
    x, t = batch_inputs(jax.random.key(11), (4,), 2, "column")
    check_against_oracle(SPACE_TIME_SPECS, fields, method, x, t)


def _space_fields(d, key):
    k1, k2 = jax.random.split(key)
    return {
        "scalar": eqx.nn.MLP(d, "scalar", 8, 2, activation=jnp.tanh, key=k1),
        "vector": eqx.nn.MLP(d, 2, 8, 2, activation=jax.nn.softplus, key=k2),
    }


SPACE_SPECS = tuple(
    (f"{name} {kind}", name, (kind,))
    for name in ("scalar", "vector")
    for kind in ("biharmonic", "gradlap")
)


@pytest.mark.parametrize("method", METHODS)
def test_biharmonic_and_grad_laplacian_of_networks(method):
    fields = _space_fields(3, jax.random.key(12))
    x, _ = batch_inputs(jax.random.key(13), (4,), 3, None)
    got = check_against_oracle(SPACE_SPECS, fields, method, x)
    # Nesting gives the same numbers as the named operator.
    nested = evaluate(
        {
            name: eqxderiv.Laplacian(
                eqxderiv.Laplacian(f, method=method), method=method
            )
            for name, f in fields.items()
        },
        x,
    )
    for name in fields:
        assert_close(nested[name], got[f"{name} biharmonic"], label=name)
    assert got["vector gradlap"].shape == (4, 2, 3)
    assert got["scalar gradlap"].shape == (4, 3)


def test_result_shapes(getkey):
    x, t = batch_inputs(getkey(), (2, 3), 3, "flat")
    vec = JnpMLP(3, 4, 8, time=True, key=getkey())
    sca = JnpMLP(3, None, 8, time=True, key=getkey())
    cases = [
        (eqxderiv.Partial(vec, x=(0, 2), t=1), (2, 3, 4)),
        (eqxderiv.TimeDerivative(vec, order=2), (2, 3, 4)),
        (eqxderiv.Biharmonic(vec), (2, 3, 4)),
        (eqxderiv.GradLaplacian(vec), (2, 3, 4, 3)),
        (eqxderiv.GradLaplacian(sca), (2, 3, 3)),
    ]
    for op, shape in cases:
        out = jax.eval_shape(lambda a, b: op(a, b), x, t)
        assert out.shape == shape, (op, out.shape)
        assert out.dtype == jnp.float64, (op, out.dtype)


# --------------------------------------------------------------------------------
# Fields with custom derivative rules: the operators follow nested autodiff.


@jax.custom_jvp
def _other_code(x):
    return jnp.sin(x)


@_other_code.defjvp
def _other_code_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    # Not the derivative, and the primal output computed by other code than the
    # function: nested jacfwd applies the rule once, then differentiates the
    # rule's own code (its `jnp.sin` and its `2 cos`).
    return jnp.sin(x), 2.0 * jnp.cos(x) * dx


_vjp_sin = jax.custom_vjp(jnp.sin)
_vjp_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))


def _custom_jvp_field(x):
    return jnp.sum(_other_code(x) * x[::-1]) + x[0] ** 2 * _other_code(x[1])


def _custom_vjp_field(x):
    return jnp.sum(_vjp_sin(x) * x[::-1])


def _custom_vjp_field_without_rule(x):
    return jnp.sum(jnp.sin(x) * x[::-1])


def _forward_only_oracles(f, x):
    """Biharmonic (the Laplacian of the Laplacian), the gradient of the
    Laplacian and u_{x1 x1 x1} at one sample from the full derivative tensors of
    nested `jax.jacfwd` (forward mode only: no reverse mode through the custom
    rules). With a rule that is not the derivative, nested autodiff's mixed
    partials depend on the order of differentiation (its tensors are not
    symmetric), so the partial checked is a pure one."""
    d3 = jax.jacfwd(jax.jacfwd(jax.jacfwd(f)))
    d4 = jax.jacfwd(d3)
    return {
        "Biharmonic": jnp.einsum("iijj->", d4(x)),
        "GradLaplacian": jnp.einsum("iik->k", d3(x)),
        "Partial": d3(x)[1, 1, 1],
    }


@pytest.mark.filterwarnings("ignore::eqxderiv.FallbackWarning")
@pytest.mark.parametrize("method", METHODS)
def test_fields_with_custom_rules(method):
    x, _ = batch_inputs(jax.random.key(16), (3,), 3, None)
    ops = {}
    for name, f in (("jvp", _custom_jvp_field), ("vjp", _custom_vjp_field)):
        ops[f"{name} Biharmonic"] = eqxderiv.Biharmonic(f, method=method)
        ops[f"{name} GradLaplacian"] = eqxderiv.GradLaplacian(f, method=method)
        ops[f"{name} Partial"] = eqxderiv.Partial(f, x=(1, 1, 1), method=method)
    got = evaluate(ops, x)

    @jax.jit
    def want(x):
        return {
            # JAX has no forward mode through a custom_vjp function: its
            # oracle is the same field without the rule (the rule is sin's
            # true derivative).
            name: jax.vmap(lambda a: _forward_only_oracles(f, a))(x)
            for name, f in (
                ("jvp", _custom_jvp_field),
                ("vjp", _custom_vjp_field_without_rule),
            )
        }

    w = want(x)
    for name in ("jvp", "vjp"):
        for op in ("Biharmonic", "GradLaplacian", "Partial"):
            label = f"{name} {op}"
            assert_close(got[label], w[name][op], label=label)


# --------------------------------------------------------------------------------
# Sums.


@pytest.mark.parametrize("method", ["taylor", "forward"])
def test_fused_sums(method):
    fields = _space_time_fields(jax.random.key(14))
    x, t = batch_inputs(jax.random.key(15), (4,), 2, "flat")
    u, f = fields["scalar"], fields["vector"]
    m = method
    ops = {
        "kdv": eqxderiv.TimeDerivative(u, method=m)
        + eqxderiv.Partial(u, x=(0, 0, 0), method=m),
        "mixed": 0.5 * eqxderiv.TimeDerivative(f, method=m)
        - 2.0 * eqxderiv.Laplacian(f, method=m)
        + 0.1 * eqxderiv.Biharmonic(f, method=m),
        "kdv6": eqxderiv.TimeDerivative(u, method=m)
        + 6.0 * eqxderiv.Value(u, method=m) * eqxderiv.Partial(u, x=0, method=m)
        + eqxderiv.Partial(u, x=(0, 0, 0), method=m),
        "wave": eqxderiv.TimeDerivative(u, order=2, method=m)
        - eqxderiv.Partial(u, x=(1, 1), method=m)
        + eqxderiv.Partial(u, x=0, t=1, method=m),
    }
    specs = (
        ("ut", "scalar", ("time", 1)),
        ("utt", "scalar", ("time", 2)),
        ("u", "scalar", ("partial", (), 0)),
        ("ux", "scalar", ("partial", (0,), 0)),
        ("uxt", "scalar", ("partial", (0,), 1)),
        ("uyy", "scalar", ("partial", (1, 1), 0)),
        ("uxxx", "scalar", ("partial", (0, 0, 0), 0)),
        ("ft", "vector", ("time", 1)),
        ("lap f", "vector", ("laplacian",)),
        ("bih f", "vector", ("biharmonic",)),
    )
    got = evaluate(ops, x, t)
    w = {k: np.asarray(v) for k, v in oracles(specs, fields, x, t).items()}
    assert_close(got["kdv"], w["ut"] + w["uxxx"])
    assert_close(got["mixed"], 0.5 * w["ft"] - 2.0 * w["lap f"] + 0.1 * w["bih f"])
    assert_close(got["kdv6"], w["ut"] + 6.0 * w["u"] * w["ux"] + w["uxxx"])
    assert_close(got["wave"], w["utt"] - w["uyy"] + w["uxt"])
    # The sums of one field's named derivatives are fused: one evaluation of the
    # field's program each, not one per term.
    for name in ("kdv", "mixed", "wave"):
        assert separate_evaluations(ops[name], x, t) == 1, name


# --------------------------------------------------------------------------------
# Stochastic estimators: unbiased.


def quartic_poly(x):
    """A quartic polynomial in d = 4 with constant biharmonic (by hand below)
    and lower-order terms that make its Laplacian vary with x."""
    c = jnp.asarray([1.0, -0.5, 0.3, 2.0])
    a = jnp.asarray([0.5, -1.0, 0.2, 0.7])
    return (
        jnp.sum(c * x**4)
        + 0.6 * x[0] ** 2 * x[1] ** 2
        - 1.1 * x[2] ** 2 * x[3] ** 2
        + (a @ x) ** 4
        + x[0] * x[1] * x[2]
        + x[3] ** 3
    )


def _quartic_poly_biharmonic():
    # x_i^4 -> 24; x_i^2 x_j^2 (i != j) -> 8; (a . x)^4 -> 24 |a|^4
    c = np.asarray([1.0, -0.5, 0.3, 2.0])
    a = np.asarray([0.5, -1.0, 0.2, 0.7])
    return 24 * c.sum() + 8 * (0.6 - 1.1) + 24 * (a @ a) ** 2


def _assert_unbiased(samples, exact, label, sigmas=5.0):
    """The mean of independent samples within `sigmas` standard errors of
    `exact` (each entry), with the standard error from the samples."""
    samples = np.asarray(samples)
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / math.sqrt(samples.shape[0])
    assert np.all(se > 0), (label, "no variance: the estimator is not random", se)
    z = np.abs(mean - exact) / se
    assert np.all(z < sigmas), (label, mean, exact, se, z)


N_KEYS = 2**12
N_NET = 2**10  # fewer draws for the network, whose estimates cost more


@pytest.mark.parametrize(
    "method",
    [eqxderiv.Hutchinson(num_probes=2), eqxderiv.SparseSampling(num_samples=2)],
    ids=["Hutchinson", "SparseSampling"],
)
def test_stochastic_biharmonic_is_unbiased(method):
    # Every sample of a batch draws its own probes from the call's key, so a
    # batch of N points is N independent draws: random points for the
    # polynomial (whose biharmonic is constant), one repeated point for its
    # gradient of the Laplacian and for the network.
    gen = np.random.default_rng(0)
    x = jnp.asarray(gen.standard_normal((N_KEYS, 4)))
    net = eqx.nn.MLP(4, "scalar", 8, 2, activation=jnp.tanh, key=jax.random.key(3))
    point = jnp.asarray(gen.standard_normal(4) * 0.5)
    xp = jnp.broadcast_to(point, (N_NET, 4))
    ops = {
        "poly": eqxderiv.Biharmonic(quartic_poly, method=method),
        "poly gradlap": eqxderiv.GradLaplacian(quartic_poly, method=method),
        "net": eqxderiv.Biharmonic(net, method=method),
    }

    @eqx.filter_jit
    def run(ops, x, xp, key):
        k1, k2, k3 = jax.random.split(key, 3)
        return {
            "poly": ops["poly"](x, key=k1),
            "poly gradlap": ops["poly gradlap"](x[:1].repeat(N_KEYS, 0), key=k2),
            "net": ops["net"](xp, key=k3),
            "exact net": batched_oracle(("biharmonic",), net, xp[:1], None)[0],
            "exact gradlap": batched_oracle(("gradlap",), quartic_poly, x[:1], None)[0],
        }

    out = run(ops, x, xp, jax.random.key(4))
    _assert_unbiased(out["poly"], _quartic_poly_biharmonic(), "poly")
    _assert_unbiased(out["net"], np.asarray(out["exact net"]), "net")
    _assert_unbiased(out["poly gradlap"], np.asarray(out["exact gradlap"]), "gradlap")
    # Another key, other estimates.
    again = eqx.filter_jit(lambda op, x, k: op(x, key=k))(
        ops["poly"], x[:8], jax.random.key(5)
    )
    assert not np.allclose(np.asarray(again), np.asarray(out["poly"][:8]))


# --------------------------------------------------------------------------------
# Parameter gradients.


def test_parameter_gradients():
    net = eqx.nn.MLP(2, "scalar", 6, 2, activation=jnp.tanh, key=jax.random.key(20))
    st = eqxderiv.SpaceTimeMLP(2, "scalar", 6, 2, key=jax.random.key(21))
    x, t = batch_inputs(jax.random.key(22), (3,), 2, "flat")

    def bih_loss(net, x):
        return jnp.mean(eqxderiv.Biharmonic(net)(x) ** 2)

    def bih_brute(net, x):
        return jnp.mean(batched_oracle(("biharmonic",), net, x, None) ** 2)

    def partial_loss(st, x, t):
        r = (
            eqxderiv.Partial(st, x=(0, 0), t=1)(x, t)
            + eqxderiv.GradLaplacian(st)(x, t)[..., 1]
        )
        return jnp.mean(r**2)

    def partial_brute(st, x, t):
        r = batched_oracle(("partial", (0, 0), 1), st, x, t)
        r = r + batched_oracle(("gradlap",), st, x, t)[..., 1]
        return jnp.mean(r**2)

    @eqx.filter_jit
    def grads(net, st, x, t):
        return (
            eqx.filter_grad(bih_loss)(net, x),
            eqx.filter_grad(bih_brute)(net, x),
            eqx.filter_grad(partial_loss)(st, x, t),
            eqx.filter_grad(partial_brute)(st, x, t),
        )

    g1, w1, g2, w2 = grads(net, st, x, t)
    assert_trees_close(g1, w1, rtol=1e-8, atol=1e-8)
    assert_trees_close(g2, w2, rtol=1e-8, atol=1e-8)


# --------------------------------------------------------------------------------
# The JAX contract.


def test_vmap_and_grad_in_x():
    net = eqx.nn.MLP(2, "scalar", 6, 2, activation=jnp.tanh, key=jax.random.key(30))
    x, _ = batch_inputs(jax.random.key(31), (2, 3), 2, None)

    @jax.jit
    def run(x):
        bih = eqxderiv.Biharmonic(net)
        part = eqxderiv.Partial(net, x=(0, 1, 1))
        return {
            # vmap over the outer batch axis of an operator on the inner one
            "vmap biharmonic": jax.vmap(bih)(x),
            "vmap partial": jax.vmap(part)(x),
            # the gradient in x of a single sample's result
            "grad": jax.vmap(jax.vmap(jax.grad(lambda y: bih(y))))(x),
            "want biharmonic": batched_oracle(("biharmonic",), net, x, None),
            "want partial": batched_oracle(("partial", (0, 1, 1), 0), net, x, None),
        }

    out = run(x)
    assert_close(out["vmap biharmonic"], out["want biharmonic"])
    assert_close(out["vmap partial"], out["want partial"])
    # grad(biharmonic) by nested jacfwd of the nested-hessian biharmonic
    want_grad = jax.jit(
        jax.vmap(
            jax.vmap(jax.jacfwd(lambda y: single_oracle(("biharmonic",), net, y, None)))
        )
    )(x)
    assert_close(out["grad"], want_grad)


class Counted(eqx.Module):
    """A field that counts the runs of its Python body, i.e. its traces."""

    field: JnpMLP
    calls: list = eqx.field(static=True)

    def __call__(self, x, t):
        self.calls[0] += 1
        return self.field(x, t)


@pytest.mark.parametrize(
    "name",
    ["Partial", "TimeDerivative2", "Biharmonic", "GradLaplacian", "Fused"],
)
def test_traces(name, getkey):
    calls = [0]
    u = Counted(JnpMLP(2, None, 6, time=True, key=getkey()), calls)
    x, t = batch_inputs(getkey(), (3,), 2, "flat")
    build_op = {
        "Partial": lambda u: eqxderiv.Partial(u, x=(0, 1), t=1),
        "TimeDerivative2": lambda u: eqxderiv.TimeDerivative(u, order=2),
        "Biharmonic": lambda u: eqxderiv.Biharmonic(u),
        "GradLaplacian": lambda u: eqxderiv.GradLaplacian(u),
        "Fused": lambda u: (
            eqxderiv.TimeDerivative(u)
            + eqxderiv.Laplacian(u)
            + eqxderiv.Biharmonic(u)
            + eqxderiv.Partial(u, x=(0, 0, 0))
        ),
    }[name]
    op = build_op(u)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def f(op, x, t):
        return op(x, t)

    first = f(op, x, t)
    # A named derivative (or a fused sum) traces its field twice per trace of
    # the caller (tests/test_traces.py).
    assert calls[0] <= 2, calls[0]
    second = f(op, x + 1.0, t)
    assert calls[0] <= 2, calls[0]  # no retracing on a second call
    assert not np.allclose(np.asarray(first), np.asarray(second))


# --------------------------------------------------------------------------------
# Errors.


def _field3(x, t):
    return jnp.sum(jnp.sin(x)) * t


def _space_only(x):
    return jnp.sum(jnp.sin(x))


def test_errors(no_typecheck):
    x = jnp.ones((4, 3))
    t = jnp.ones(4)
    cases = [
        # (exception types, pattern naming the argument, thunk)
        (
            ValueError,
            r"\bx\b.*5|5.*\bx\b",
            lambda: eqxderiv.Partial(_field3, x=(5,))(x, t),
        ),
        (
            ValueError,
            r"\bx\b.*3|3.*\bx\b",
            lambda: eqxderiv.Partial(_field3, x=(0, 3))(x, t),
        ),
        (
            ValueError,
            r"\bx\b.*-1|-1.*\bx\b",
            lambda: eqxderiv.Partial(_field3, x=(-1,))(x, t),
        ),
        (
            (TypeError, ValueError),
            r"\bx\b",
            lambda: eqxderiv.Partial(_field3, x=(0.5,))(x, t),  # type: ignore
        ),
        (
            (TypeError, ValueError),
            r"\bx\b",
            lambda: eqxderiv.Partial(_field3, x="0")(x, t),  # type: ignore
        ),
        (
            ValueError,
            r"\bt\b.*-1|-1.*\bt\b",
            lambda: eqxderiv.Partial(_field3, t=-1)(x, t),
        ),
        (
            (TypeError, ValueError),
            r"\bt\b",
            lambda: eqxderiv.Partial(_field3, t=1.5)(x, t),  # type: ignore
        ),
        (ValueError, r"\bt\b", lambda: eqxderiv.Partial(_space_only, t=1)(x)),
        (
            (TypeError, ValueError),
            r"\bt\b",
            lambda: eqxderiv.Partial(_field3, x=0, t=2)(x),
        ),
        (
            ValueError,
            r"order",
            lambda: eqxderiv.TimeDerivative(_field3, order=-1)(x, t),
        ),
        (
            (TypeError, ValueError),
            r"order",
            lambda: eqxderiv.TimeDerivative(_field3, order=1.5)(x, t),  # type: ignore
        ),
        (
            ValueError,
            r"key",
            lambda: eqxderiv.Biharmonic(
                _space_only, method=eqxderiv.Hutchinson(num_probes=2)
            )(x),
        ),
        (
            ValueError,
            r"key",
            lambda: eqxderiv.Biharmonic(
                _space_only, method=eqxderiv.SparseSampling(num_samples=2)
            )(x),
        ),
        (
            ValueError,
            r"key",
            lambda: eqxderiv.GradLaplacian(
                _space_only, method=eqxderiv.Hutchinson(num_probes=2)
            )(x),
        ),
        (
            ValueError,
            r"key",
            lambda: eqxderiv.GradLaplacian(
                _space_only, method=eqxderiv.SparseSampling(num_samples=2)
            )(x),
        ),
    ]
    failures = []
    for i, (exc, pattern, thunk) in enumerate(cases):
        try:
            thunk()
        except exc as e:
            if not re.search(pattern, str(e), re.S):
                failures.append((i, f"message does not match {pattern!r}: {e}"))
        except Exception as e:
            failures.append((i, f"raised {type(e).__name__} instead: {e}"))
        else:
            failures.append((i, "no error"))
    assert not failures, failures
