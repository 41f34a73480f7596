"""The contraction of a pass's output tangents with given directions (the
divergence), taken before the field's trailing affine equations
(`_engine/contraction.py`): checked against the full Jacobian by nested autodiff
in float64, for tails that branch, merge, scale per sample, end in the input
itself or stop at complex values, and through the operators with parameter
gradients."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_with_parameter_gradients, quick_jit

import eqxderiv
from eqxderiv._engine import collapsed_jet_contracted
from eqxderiv._engine.contraction import tail_cotangents
from eqxderiv._engine.entry import _engine_promotion, _evaluate, _trace


_RNG = np.random.default_rng(11)
_D, _H = 4, 5
_A = _RNG.normal(size=(_H, _D))
_B = _RNG.normal(size=(_H, _H))
_C = _RNG.normal(size=(_D, _H))
_E = _RNG.normal(size=(_D, _H))
_G = _RNG.normal(size=(_H,))


def _layer_norm(h):
    m = jnp.mean(h)
    return (h - m) / jnp.sqrt(jnp.mean((h - m) ** 2) + 1e-5) * (1 + _G)


def _residual(x):
    # readout(h + B tanh(LN(h))): the block's sum and its linear layer are pulled
    # back through; the pull-back stops at h (also read by the LayerNorm) and at
    # the tanh.
    h = jnp.tanh(_A @ x)
    h = h + _B @ jnp.tanh(_layer_norm(h)) + 0.1
    return _C @ h - 0.2


def _skip_whole(x):
    # x + f(x): the input itself is where one branch stops.
    return x + _C @ jnp.sin(_A @ x)


def _read_twice(x):
    # One value read by two equations of the tail.
    h = jnp.tanh(_A @ x)
    return _C @ h + _E @ h


def _scaled_per_sample(x, s):
    # A coefficient with no tangent that differs per sample (a time).
    h = jnp.tanh(_A @ x)
    return s * (_C @ h) + jnp.cos(s) * x


def _branches(x):
    # concatenate of two slices, each through its own weight, then reshaped.
    h = jnp.tanh(_A @ x)
    top = (_C @ h)[:2]
    bottom = (_E @ jnp.sin(h))[2:]
    return jnp.concatenate([top, bottom]).reshape(2, 2).reshape(-1)


def _complex_tail(x):
    # The real part of a complex linear layer: the pull-back stops at the output.
    z = jnp.exp(1j * (_A @ x).astype(jnp.complex128))
    w = (_C + 1j * _E).astype(jnp.complex128)
    return jnp.real(w @ z)


def _identity(x):
    return x


def _one(fn):
    return fn if fn is not _scaled_per_sample else (lambda x: fn(x, 0.7))


FIELDS = [
    _residual,
    _skip_whole,
    _read_twice,
    _scaled_per_sample,
    _branches,
    _complex_tail,
    _identity,
]


@pytest.mark.parametrize("fn", FIELDS, ids=lambda f: f.__name__)
def test_contraction_against_the_jacobian(fn):
    f = _one(fn)
    x = jnp.asarray(_RNG.normal(size=(_D,)))
    V = jnp.asarray(_RNG.normal(size=(3, _D)))
    C = jnp.asarray(_RNG.normal(size=(3, _D)))
    w = jnp.asarray(_RNG.normal(size=(3,)))

    @quick_jit
    def both(x):
        *_, got = collapsed_jet_contracted(f, (x,), (V,), w, C)
        J = jax.jacfwd(f)(x)
        return got, jnp.einsum("k,ki,ij,kj->", w, C, J, V)

    got, want = both(x)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)
    # The divergence, at zero too.
    for y in (x, jnp.zeros(_D)):
        eye = jnp.eye(_D)
        *_, div = collapsed_jet_contracted(f, (y,), (eye,), jnp.ones(_D), eye)
        np.testing.assert_allclose(
            div, jnp.trace(jax.jacfwd(f)(y)), rtol=1e-11, atol=1e-12
        )


def _stops(fn) -> int:
    """How many values the pull-back of `fn`'s divergence stops at."""
    x = jnp.asarray(_RNG.normal(size=(_D,)))
    eye = jnp.eye(_D)
    traced = _trace(_one(fn), (x,), (eye,), jnp.ones(_D))
    with _engine_promotion():
        _, _, env = _evaluate(traced)
        return len(tail_cotangents(traced.closed.jaxpr, env, eye, eye.dtype))


def test_where_the_pull_back_stops():
    # The residual block: at h and at tanh(LN(h)), so the block's (K, h, h)
    # tangent product is never formed; past a plain last layer, at its input.
    assert _stops(_residual) == 2
    assert _stops(_skip_whole) == 2
    assert _stops(_read_twice) == 1
    assert _stops(_complex_tail) == 1
    assert _stops(_identity) == 1


class _ResidualNet(eqx.Module):
    embed: eqx.nn.Linear
    norms: tuple[eqx.nn.LayerNorm, ...]
    blocks: tuple[eqx.nn.Linear, ...]
    readout: eqx.nn.Linear

    def __init__(self, d, width, depth, key):
        keys = jax.random.split(key, depth + 2)
        self.embed = eqx.nn.Linear(d + 1, width, key=keys[0])
        self.norms = tuple(eqx.nn.LayerNorm(width) for _ in range(depth))
        self.blocks = tuple(eqx.nn.Linear(width, width, key=k) for k in keys[1:-1])
        self.readout = eqx.nn.Linear(width, d, key=keys[-1])

    def __call__(self, x, t):
        h = self.embed(jnp.concatenate([x, t]))
        for norm, block in zip(self.norms, self.blocks):
            h = h + block(jnp.tanh(norm(h)))
        return self.readout(h) + x


@pytest.mark.parametrize("closed_form", [True, False])
def test_residual_net_divergence_and_grad_div_with_parameter_gradients(closed_form):
    d = 3
    net = _ResidualNet(d, 6, 2, jax.random.PRNGKey(0))
    x = jnp.asarray(_RNG.normal(size=(4, d))).at[0].set(0.0)
    t = jnp.asarray(_RNG.normal(size=(4, 1)))
    method = eqxderiv.Taylor(closed_form=closed_form)

    def ours(m):
        return (
            eqxderiv.Divergence(m, method=method)(x, t),
            eqxderiv.GradDiv(m, method=method)(x, t),
        )

    def oracle(m):
        def div(y, s):
            return jnp.trace(jax.jacfwd(m)(y, s))

        return jax.vmap(div)(x, t), jax.vmap(jax.grad(div))(x, t)

    assert_with_parameter_gradients(ours, oracle, net)
