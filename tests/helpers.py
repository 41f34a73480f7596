"""Oracles for the tests: closed-form fields with hand-derived derivatives, and
brute-force nested autodiff written directly with `jax.jacfwd` / `jax.hessian`
(never through eqxderiv's own methods).

Speed: on CPU nearly all of the suite's time is XLA compilation. So test data is
drawn with NumPy (each new shape drawn with `jax.random` is a compilation),
comparisons run in NumPy, and evaluations go through the module-level jitted
`evaluate` / `reference` / `expected`, whose compilations are shared by every test
(and every method: `"auto"` and `"taylor"` are the same program) that evaluates
the same operators on the same kind of field and shapes. Each test evaluates
all its operators in one program: one compilation of many operators costs far
less than many compilations of one. Eager evaluation is tested
on its own (test_transforms.py, test_flax.py).
"""

import contextlib
import math
from collections.abc import Callable
from typing import Any
from unittest import mock

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


EXACT_METHODS = ["auto", "taylor", "forward", "nested"]
# Which operators apply to a field of output shape () (scalar) or (d,) (vector).
SCALAR_OPS = ["Value", "Jacobian", "TimeDerivative", "Grad", "Hessian", "Laplacian"]
VECTOR_OPS = [
    "Value",
    "Jacobian",
    "TimeDerivative",
    "Divergence",
    "GradDiv",
    "Laplacian",
    "Curl",
    "Advection",
]


def tree_allclose(a: Any, b: Any, rtol: float = 1e-8, atol: float = 1e-8) -> bool:
    # NumPy leaves, so that `eqx.tree_equal` compares with `np.allclose` (no XLA
    # compilation per shape).
    a, b = jax.tree.map(np.asarray, (a, b))
    return bool(eqx.tree_equal(a, b, rtol=rtol, atol=atol))


def assert_close(
    actual: Any, expected: Any, rtol: float = 1e-8, atol: float = 1e-8, label=""
):
    """`tree_allclose` for two arrays, reporting shapes and the largest error."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (label, actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (label, actual.dtype, expected.dtype)
    err = float(np.max(np.abs(actual - expected), initial=0))
    assert tree_allclose(actual, expected, rtol, atol), (label, err)


def assert_trees_close(actual: Any, expected: Any, rtol=1e-8, atol=1e-8):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert_close(a, b, rtol, atol)


def rng(key) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)))


def normal(key, shape: tuple[int, ...]) -> Array:
    return jnp.asarray(rng(key).standard_normal(shape))


def batch_inputs(
    key, batch: tuple[int, ...], d: int, t_layout: str | None
) -> tuple[Array, Any]:
    """Random `x` of shape `(*batch, d)` and `t` of shape `(*batch,)` ("flat"),
    `(*batch, 1)` ("column") or None."""
    gen = rng(key)
    x = jnp.asarray(gen.standard_normal(batch + (d,)))
    if t_layout is None:
        return x, None
    t = jnp.asarray(gen.standard_normal(batch))
    return x, (t if t_layout == "flat" else t[..., None])


@eqx.filter_jit
def evaluate(ops: dict[str, Callable], x: Array, t: Array | None = None):
    """`{label: op(x, t)}` (or `op(x)`) for a dict of operators, as one compiled
    program."""
    return {k: op(x) if t is None else op(x, t) for k, op in ops.items()}


# --------------------------------------------------------------------------------
# Closed-form fields, and their hand-derived per-sample derivatives as functions
# `(field, x, t)` with `t` of shape () or None.


def _curl_from(J: Array) -> Array:
    if J.shape == (2, 2):
        return J[1, 0] - J[0, 1]
    return jnp.stack([J[2, 1] - J[1, 2], J[0, 2] - J[2, 0], J[1, 0] - J[0, 1]])


def _et(c, t):
    return 1.0 if t is None else jnp.exp(c * jnp.reshape(t, ()))


class SinExpVector(eqx.Module):
    r"""$f_i(x, t) = e^{ct}(\sin x_i + s^2 b_i)$ with $s = a \cdot x$."""

    a: Array
    b: Array
    c: float = 0.7

    def __call__(self, x, t=None):
        return _et(self.c, t) * (jnp.sin(x) + jnp.dot(self.a, x) ** 2 * self.b)


def _vector_jacobian(f: SinExpVector, x, t):
    s = f.a @ x
    return _et(f.c, t) * (jnp.diag(jnp.cos(x)) + 2 * s * jnp.outer(f.b, f.a))


SIN_EXP_VECTOR = {
    "Value": lambda f, x, t: f(x, t),
    "Jacobian": _vector_jacobian,
    "TimeDerivative": lambda f, x, t: f.c * f(x, t),
    "Divergence": lambda f, x, t: (
        _et(f.c, t) * (jnp.sum(jnp.cos(x)) + 2 * (f.a @ x) * (f.a @ f.b))
    ),
    "GradDiv": lambda f, x, t: _et(f.c, t) * (-jnp.sin(x) + 2 * f.a * (f.a @ f.b)),
    "Laplacian": lambda f, x, t: _et(f.c, t) * (-jnp.sin(x) + 2 * (f.a @ f.a) * f.b),
    "Curl": lambda f, x, t: _curl_from(_vector_jacobian(f, x, t)),
    "Advection": lambda f, x, t: _vector_jacobian(f, x, t) @ f(x, t),
}


class SinExpScalar(eqx.Module):
    r"""$u(x, t) = e^{ct}(\sum_i \sin x_i + s^2)$ with $s = a \cdot x$."""

    a: Array
    c: float = 0.7

    def __call__(self, x, t=None):
        return _et(self.c, t) * (jnp.sum(jnp.sin(x)) + jnp.dot(self.a, x) ** 2)


def _scalar_grad(u: SinExpScalar, x, t):
    return _et(u.c, t) * (jnp.cos(x) + 2 * (u.a @ x) * u.a)


SIN_EXP_SCALAR = {
    "Value": lambda u, x, t: u(x, t),
    "Jacobian": _scalar_grad,
    "TimeDerivative": lambda u, x, t: u.c * u(x, t),
    "Grad": _scalar_grad,
    "Hessian": lambda u, x, t: (
        _et(u.c, t) * (jnp.diag(-jnp.sin(x)) + 2 * jnp.outer(u.a, u.a))
    ),
    "Laplacian": lambda u, x, t: _et(u.c, t) * (-jnp.sum(jnp.sin(x)) + 2 * (u.a @ u.a)),
}


def closed_form(kind: str, d: int, key) -> SinExpVector | SinExpScalar:
    """A closed-form field of dimension `d`, "vector" or "scalar", with random
    coefficients."""
    gen = rng(key)
    a = jnp.asarray(gen.standard_normal(d)) / math.sqrt(d)
    if kind == "vector":
        return SinExpVector(a, jnp.asarray(gen.standard_normal(d)))
    return SinExpScalar(a)


def _over_batch(fn: Callable, x: Array, t: Array | None) -> Array:
    """Applies a per-sample `fn(x, t)` over the leading batch axes of `x` (and
    `t`, whose per-sample shape is kept)."""
    batch = x.shape[:-1]
    n = math.prod(batch)
    xs = x.reshape((n, x.shape[-1]))
    if t is None:
        out = jax.vmap(lambda x_: fn(x_, None))(xs)
    else:
        out = jax.vmap(fn)(xs, t.reshape((n,) + t.shape[len(batch) :]))
    return out.reshape(batch + out.shape[1:])


@eqx.filter_jit
def expected(names, field: SinExpVector | SinExpScalar, x, t=None) -> dict:
    """`{name: value}`: the hand-derived derivatives `names` of a closed-form field,
    batched, as one compiled program."""
    table = SIN_EXP_VECTOR if isinstance(field, SinExpVector) else SIN_EXP_SCALAR
    return {
        name: _over_batch(lambda x_, t_: table[name](field, x_, t_), x, t)
        for name in names
    }


# --------------------------------------------------------------------------------
# Brute-force nested autodiff.


def brute_single(name: str, f: Callable, x: Array, t: Array | None) -> Array:
    """The reference value of operator `name` for field `f` at one sample, by nested
    `jax.jacfwd` / `jax.jacrev` / `jax.hessian`. `t` keeps the per-sample shape the
    operator passes to the field (`()` or `(1,)`)."""
    g = (lambda y: f(y)) if t is None else (lambda y: f(y, t))
    if name == "Value":
        return g(x)
    if name == "Jacobian":
        return jax.jacfwd(g)(x)
    if name == "TimeDerivative":
        assert t is not None
        out = jax.jacfwd(lambda s: f(x, s))(t)
        return out.reshape(out.shape[: out.ndim - t.ndim])
    if name == "Divergence":
        return jnp.trace(jax.jacfwd(g)(x))
    if name == "GradDiv":
        return jax.jacfwd(lambda y: jnp.trace(jax.jacrev(g)(y)))(x)
    if name == "Grad":
        return jax.grad(g)(x)
    if name == "Hessian":
        return jax.hessian(g)(x)
    if name == "Laplacian":
        return jnp.trace(jax.hessian(g)(x), axis1=-2, axis2=-1)
    if name == "Curl":
        return _curl_from(jax.jacfwd(g)(x))
    if name == "Advection":
        return jax.jacfwd(g)(x) @ g(x)
    raise ValueError(name)


def brute(name: str, f: Callable, x: Array, t: Array | None = None) -> Array:
    """`brute_single` over every leading batch axis of `x` (and `t`)."""
    return _over_batch(lambda x_, t_: brute_single(name, f, x_, t_), x, t)


@eqx.filter_jit
def reference(names, f: Callable, x: Array, t: Array | None = None) -> dict:
    """`{name: brute(name, f, x, t)}` for a tuple of operator names, as one
    compiled program."""
    return {name: brute(name, f, x, t) for name in names}


def assert_dicts_close(actual: dict, expected: dict, rtol=1e-8, atol=1e-8):
    assert set(actual) == set(expected), (set(actual), set(expected))
    for k in actual:
        assert_close(actual[k], expected[k], rtol, atol, label=k)


# --------------------------------------------------------------------------------
# Random networks.


class JnpMLP(eqx.Module):
    """A plain jnp MLP over `concatenate(x, t)` (or `x` alone), written without
    `eqx.nn`: a tanh and a softplus hidden layer."""

    w1: Array
    b1: Array
    w2: Array
    b2: Array
    w3: Array
    b3: Array
    scalar: bool = eqx.field(static=True)

    def __init__(self, d: int, m: int | None, hidden: int, time: bool, key):
        gen = rng(key)
        d_in = d + (1 if time else 0)
        out = 1 if m is None else m
        w = lambda *shape: jnp.asarray(
            gen.standard_normal(shape) / math.sqrt(shape[-1])
        )
        self.w1, self.w2, self.w3 = w(hidden, d_in), w(hidden, hidden), w(out, hidden)
        self.b1 = jnp.asarray(gen.standard_normal(hidden) * 0.1)
        self.b2 = jnp.zeros(hidden)
        self.b3 = jnp.zeros(out)
        self.scalar = m is None

    def __call__(self, x, t=None):
        h = x if t is None else jnp.concatenate([x, jnp.reshape(t, (1,))])
        h = jnp.tanh(self.w1 @ h + self.b1)
        h = jax.nn.softplus(self.w2 @ h + self.b2)
        y = self.w3 @ h + self.b3
        return y[0] if self.scalar else y


class NN(nn.Module):
    """The Flax model of the question this library answers, verbatim but for the
    layers' `dtype`: the parameters stay float32 (Flax's default) and the layers
    compute in the input's dtype, which is what Flax's implicit promotion of a
    float64 input with float32 parameters gave, made explicit (strict dtype
    promotion refuses the implicit one)."""

    hid_dim: int  # Number of hidden neurons
    output_dim: int  # Number of output neurons

    @nn.compact
    def __call__(self, x, t):
        out = jnp.hstack((x, t))
        dtype = out.dtype
        out = nn.tanh(nn.Dense(features=self.hid_dim, dtype=dtype)(out))
        out = nn.tanh(nn.Dense(features=self.hid_dim, dtype=dtype)(out))
        out = nn.Dense(features=self.output_dim, dtype=dtype)(out)
        return out


# ---- the collapsed-jet oracle, shared by the engine's test files ----------------

# The engine's test programs are tiny and many, so XLA's compile time would
# dominate them; these options (no backend optimisation, the simpler
# non-fusion-emitter CPU codegen) cut it several-fold and do not matter for the
# values checked.
QUICK_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


def quick_jit(fn: Callable) -> Callable:
    return jax.jit(fn, compiler_options=QUICK_OPTIONS)


def assert_with_parameter_gradients(ours, oracle, params, rtol=1e-9, atol=1e-10):
    """`ours(params)` against `oracle(params)` (pytrees of arrays), and the
    gradients with respect to `params` of `sum(sin(.))` over their leaves, all
    compiled in one program and compared leaf by leaf."""

    def loss(fn):
        return lambda p: sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(fn(p)))

    @quick_jit
    def both(p):
        got = ours(p), jax.grad(loss(ours))(p)
        return got, (oracle(p), jax.grad(loss(oracle))(p))

    got, want = both(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


def line_oracle(fn, primals, tangents, weights):
    """`(out, out_tangents, out_second)` of `collapsed_jet`, by differentiating the
    restriction of `fn` to each line `s -> primals + s v_k` twice with nested
    forward autodiff."""
    dtype = next(p.dtype for p in primals if jnp.issubdtype(p.dtype, jnp.inexact))

    def along(*vs):
        def line(s):
            return fn(*(p if v is None else p + s * v for p, v in zip(primals, vs)))

        def first(s):
            return jax.jvp(line, (s,), (jnp.ones((), dtype),))

        # d/ds of (line, d line/ds) at s = 0: (first derivative, second derivative)
        return jax.jvp(first, (jnp.zeros((), dtype),), (jnp.ones((), dtype),))[1]

    axes = [None if t is None else 0 for t in tangents]
    t, h = jax.vmap(along, in_axes=axes)(*tangents)
    # Real weights with a complex output: cast explicitly (strict promotion).
    w = jnp.asarray(weights).astype(h.dtype)
    return fn(*primals), t, jnp.tensordot(w, h, axes=1)


def check_jet(fn, primals, tangents, weights, rtol=1e-10, atol=1e-10):
    """`collapsed_jet` against `line_oracle`, both compiled in one program;
    returns the engine's result."""
    # The rest of this module holds oracles and never imports eqxderiv; only this
    # comparison calls the engine.
    from eqxderiv._engine import collapsed_jet

    @quick_jit
    def both(primals, tangents, weights):
        return (
            collapsed_jet(fn, primals, tangents, weights),
            line_oracle(fn, primals, tangents, weights),
        )

    got, want = both(primals, tangents, weights)
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, (g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return got


def uncached():
    """A context without the compilation cache of eager operator calls, which
    answers a call it has seen before without tracing anything: for tests that
    count traces, or whose fields read Python state at trace time."""
    import eqxderiv._batching as batching

    return mock.patch.object(batching, "_compiled", batching.batched_work)


def separate_evaluations(op: Callable, x: Array, t: Array | None = None) -> int:
    """How many separate evaluations of a wrapped field tracing `op(x, t)` costs:
    one per propagation of a method (one for every group of named derivatives
    that fused) plus one per plain field left on its own in the arithmetic. What
    fusion saves, counted without looking at how the operator is built."""
    import eqxderiv._abstract_derivative as derivative
    import eqxderiv._operator as operator

    count = [0]

    def counting(fn):
        def wrapped(*args, **kwargs):
            count[0] += 1
            return fn(*args, **kwargs)

        return wrapped

    with contextlib.ExitStack() as stack:
        for module, name in ((derivative, "trace_field"), (operator, "call_field")):
            original = getattr(module, name)
            stack.enter_context(mock.patch.object(module, name, counting(original)))
        stack.enter_context(uncached())
        jax.make_jaxpr(lambda x_, t_: op(x_, t_))(x, t)
    return count[0]
