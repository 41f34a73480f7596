"""Operators and a data-parallel training step on batches sharded over 8 devices.

`conftest.py` asks JAX for 8 CPU devices (`jax_num_cpu_devices`) before the
backend starts, so these tests run in the pytest process, on CPU devices whatever
the default backend is, with the suite's float64 and jaxtyping + beartype checks.

Every check compares a computation on inputs sharded along the batch with
`NamedSharding(mesh, P("batch"))` against the same computation on unsharded
inputs, and checks that the result is still sharded along the batch (no gather).
Stochastic methods use the same key in both, so they give the same estimate.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

import eqxderiv


NUM_DEVICES = 8
RTOL, ATOL = 1e-10, 1e-12
CPUS = jax.devices("cpu")
OPERATORS = [
    "Jacobian",
    "TimeDerivative",
    "Divergence",
    "GradDiv",
    "Laplacian",
    "fused",
    "hutchinson",
    "sparse_sampling",
]
STOCHASTIC = ["hutchinson", "sparse_sampling"]

pytestmark = pytest.mark.skipif(
    len(CPUS) < NUM_DEVICES,
    reason=f"needs {NUM_DEVICES} CPU devices; conftest.py could not set "
    "`jax_num_cpu_devices` (the JAX backend had started before it ran)",
)


def _cpu():
    """Unsharded computations run on the first CPU device, the mesh's first."""
    return jax.default_device(CPUS[0])


def _mesh(shape, names, explicit=False):
    devices = CPUS[:NUM_DEVICES]
    if explicit:
        types = (AxisType.Explicit,) * len(names)
        return jax.make_mesh(shape, names, axis_types=types, devices=devices)
    return Mesh(np.array(devices).reshape(shape), names)


@eqx.filter_jit
def _apply(ops, x, t, key, chunk=None):
    # All operators in one compiled function: a few compilations, not dozens.
    return {
        name: op(x, t, key=key if op.stochastic else None, chunk_size=chunk)
        for name, op in ops.items()
    }


def _assert_matches(out, ref, sharding):
    errors = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), out, ref)
    close = eqx.tree_equal(out, ref, rtol=RTOL, atol=ATOL)
    assert close, f"sharded != unsharded: max error {max(jax.tree.leaves(errors))}"
    for o in jax.tree.leaves(out):
        assert o.sharding.is_equivalent_to(sharding, o.ndim), (
            f"result not sharded along the batch: {o.sharding}"
        )


# --------------------------------------------------------------------------------
# Shared inputs and unsharded references (module scope: compiled once).


@pytest.fixture(scope="module")
def setup():
    with _cpu():
        kx, kt, kn, kp = jax.random.split(jax.random.key(0), 4)
        # Built under jit: eagerly, each initialiser op would compile on its own.
        make = eqx.filter_jit(eqxderiv.SpaceTimeMLP)
        net = make(3, 3, width=16, depth=2, key=kn)
        u = make(3, "scalar", width=16, depth=2, key=kn)
        ops = {
            "Jacobian": eqxderiv.Jacobian(net),
            "TimeDerivative": eqxderiv.TimeDerivative(net),
            "Divergence": eqxderiv.Divergence(net),
            "GradDiv": eqxderiv.GradDiv(net),
            "Laplacian": eqxderiv.Laplacian(net),
            # A Burgers-type residual: three terms fused into one propagation.
            "fused": eqxderiv.TimeDerivative(net)
            + eqxderiv.Advection(net)
            - 0.1 * eqxderiv.Laplacian(net),
            "hutchinson": eqxderiv.Laplacian(net, method=eqxderiv.Hutchinson(4)),
            "sparse_sampling": eqxderiv.Divergence(
                net, method=eqxderiv.SparseSampling(2)
            ),
        }
        # One batch axis of 32 points, 4 per device; `t` of shape (b, 1).
        x = jax.random.normal(kx, (32, 3))
        t = jax.random.normal(kt, (32, 1))
        # An (8, 6) batch; `t` of shape (*batch,).
        x2 = jax.random.normal(kx, (8, 6, 3))
        t2 = jax.random.normal(kt, (8, 6))
        ref = _apply(ops, x, t, kp)
        ref2 = _apply(ops, x2, t2, kp)
    return dict(ops=ops, u=u, x=x, t=t, x2=x2, t2=t2, key=kp, ref=ref, ref2=ref2)


def _sharded(setup, names, mesh, spec, two_d=False, chunk=None):
    ops = {name: setup["ops"][name] for name in names}
    x, t = (setup["x2"], setup["t2"]) if two_d else (setup["x"], setup["t"])
    sharding = NamedSharding(mesh, spec)
    xs, ts = jax.device_put((x, t), sharding)
    return _apply(ops, xs, ts, setup["key"], chunk), sharding


@pytest.fixture(scope="module")
def one_axis(setup):
    return _sharded(setup, OPERATORS, _mesh((NUM_DEVICES,), ("batch",)), P("batch"))


@pytest.fixture(scope="module")
def explicit(setup):
    mesh = _mesh((NUM_DEVICES,), ("batch",), explicit=True)
    return _sharded(setup, ["fused", *STOCHASTIC], mesh, P("batch"))


# --------------------------------------------------------------------------------
# The tests.


def test_eight_devices():
    mesh = _mesh((NUM_DEVICES,), ("batch",))
    assert mesh.devices.size == NUM_DEVICES
    # The other tests' arrays stay on the default device, the platform's first.
    assert jnp.zeros(()).devices() == {jax.devices()[0]}


@pytest.mark.parametrize("name", OPERATORS)
def test_operator_sharded_batch(setup, one_axis, name):
    out, sharding = one_axis
    _assert_matches(out[name], setup["ref"][name], sharding)


def test_two_batch_axes_first_sharded(setup):
    mesh = _mesh((NUM_DEVICES,), ("batch",))
    out, sharding = _sharded(setup, ["fused"], mesh, P("batch"), two_d=True)
    _assert_matches(out["fused"], setup["ref2"]["fused"], sharding)


def test_two_batch_axes_both_sharded(setup):
    mesh = _mesh((4, 2), ("a", "b"))
    out, sharding = _sharded(setup, ["fused"], mesh, P("a", "b"), two_d=True)
    _assert_matches(out["fused"], setup["ref2"]["fused"], sharding)


def test_chunked_batch(setup):
    # `chunk_size=8`: 8 points at a time, one per device.
    mesh = _mesh((NUM_DEVICES,), ("batch",))
    out, sharding = _sharded(setup, ["fused"], mesh, P("batch"), chunk=8)
    _assert_matches(out["fused"], setup["ref"]["fused"], sharding)


def test_explicit_mesh(setup, explicit):
    out, sharding = explicit
    _assert_matches(out["fused"], setup["ref"]["fused"], sharding)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_explicit_mesh_stochastic(setup, explicit, name):
    # Per-sample keys split from one key, sharded like the batch: the probes are
    # those of the unsharded computation.
    out, sharding = explicit
    _assert_matches(out[name], setup["ref"][name], sharding)


def test_explicit_mesh_stochastic_two_axes(setup):
    # Both batch axes of an (8, 6) batch sharded over a 4 x 2 explicit mesh.
    mesh = _mesh((4, 2), ("a", "b"), explicit=True)
    out, sharding = _sharded(setup, STOCHASTIC, mesh, P("a", "b"), two_d=True)
    for name in STOCHASTIC:
        _assert_matches(out[name], setup["ref2"][name], sharding)


def test_explicit_mesh_stochastic_chunked(setup):
    # Strided chunks of 8 samples, one per device, each with its own keys.
    mesh = _mesh((NUM_DEVICES,), ("batch",), explicit=True)
    out, sharding = _sharded(setup, STOCHASTIC, mesh, P("batch"), chunk=8)
    for name in STOCHASTIC:
        _assert_matches(out[name], setup["ref"][name], sharding)


def test_data_parallel_train_step(setup):
    # A replicated model and a sharded batch give the one-device step.
    def loss_fn(model, x, t):
        residual = eqxderiv.TimeDerivative(model) - eqxderiv.Laplacian(model)
        initial = eqxderiv.Value(model)(x, jnp.zeros_like(t)) - jnp.sin(x[:, 0])
        return jnp.mean(residual(x, t) ** 2) + jnp.mean(initial**2)

    @eqx.filter_jit
    def step(model, x, t):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, t)
        model = eqx.apply_updates(model, jax.tree.map(lambda g: -1e-2 * g, grads))
        return loss, grads, model

    u, x, t = setup["u"], setup["x"], setup["t"]
    with _cpu():
        loss, grads, new = step(u, x, t)
    mesh = _mesh((NUM_DEVICES,), ("batch",))
    us = eqx.filter_shard(u, NamedSharding(mesh, P()))
    xs, ts = jax.device_put((x, t), NamedSharding(mesh, P("batch")))
    loss_s, grads_s, new_s = step(us, xs, ts)
    error = abs(float(loss_s) - float(loss))
    assert eqx.tree_equal(
        (loss_s, grads_s, new_s), (loss, grads, new), rtol=RTOL, atol=ATOL
    ), f"sharded step != unsharded step: loss error {error}"
    params = jax.tree.leaves(eqx.filter((grads_s, new_s), eqx.is_array))
    assert all(p.sharding.is_fully_replicated for p in params), (
        "gradients / new parameters are not replicated"
    )
