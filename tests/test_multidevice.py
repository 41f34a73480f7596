"""Operators and a data-parallel training step on batches sharded over 8 devices.

XLA fixes the number of host (CPU) devices when its backend starts, and the other
test modules start it long before this one runs. So this module runs *itself* as
a script in a fresh process with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`; the script computes every
check once (float64, with the same jaxtyping + beartype checking as the test
suite) and prints the results as one JSON line, and each test below asserts one
of them. On failure the script's whole output is shown.

Every check compares a computation on inputs sharded along the batch with
`NamedSharding(Mesh(devices, ("batch",)), P("batch"))` against the same
computation on unsharded inputs, and checks that the result is still sharded
along the batch (no gather).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


NUM_DEVICES = 8
RTOL, ATOL = 1e-10, 1e-12
OPERATORS = [
    "Jacobian",
    "TimeDerivative",
    "Divergence",
    "GradDiv",
    "Laplacian",
    "fused",
    "hutchinson",
]


# --------------------------------------------------------------------------------
# The checks, run in the subprocess.


def _compute() -> dict:
    import jaxtyping

    with jaxtyping.install_import_hook("eqxderiv", "beartype.beartype"):
        import eqxderiv
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    jax.config.update("jax_enable_x64", True)
    results: dict = {"num_devices": len(jax.devices())}

    def report(name, fn):
        try:
            results[name] = fn()
        except Exception as e:  # reported per check, so the others still run
            results[name] = {"exception": f"{type(e).__name__}: {e}"}

    def compare(out, ref, mesh, spec):
        close = eqx.tree_equal(out, ref, rtol=RTOL, atol=ATOL)
        errors = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), out, ref)
        leaves = jax.tree.leaves(out)
        return {
            "close": bool(close),
            "max_error": max(jax.tree.leaves(errors)),
            "sharding": [str(o.sharding) for o in leaves],
            "sharded": all(
                o.sharding.is_equivalent_to(NamedSharding(mesh, spec), o.ndim)
                for o in leaves
            ),
        }

    devices = np.array(jax.devices())
    mesh = Mesh(devices, ("batch",))
    batch = NamedSharding(mesh, P("batch"))
    kx, kt, kn, kp = jax.random.split(jax.random.key(0), 4)
    # Built under jit: eagerly, each initialiser op would compile on its own.
    make = eqx.filter_jit(eqxderiv.SpaceTimeMLP)
    net = make(3, 3, width=16, depth=2, key=kn)
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
    }

    @eqx.filter_jit
    def apply(ops, x, t, chunk=None):
        # All operators in one compiled function: a few compilations, not dozens.
        return {
            name: op(x, t, key=kp if op.stochastic else None, chunk_size=chunk)
            for name, op in ops.items()
        }

    def check(prefix, ops, x, t, mesh, spec, ref, chunk=None):
        def run():
            xs, ts = jax.device_put((x, t), NamedSharding(mesh, spec))
            return apply(ops, xs, ts, chunk)

        try:
            out = run()
        except Exception as e:  # reported per check, so the others still run
            for name in ops:
                results[f"{prefix}/{name}"] = {"exception": f"{type(e).__name__}: {e}"}
            return
        for name in ops:
            results[f"{prefix}/{name}"] = compare(out[name], ref[name], mesh, spec)

    # One batch axis of 32 points, 4 per device; `t` of shape (b, 1).
    x = jax.random.normal(kx, (32, 3))
    t = jax.random.normal(kt, (32, 1))
    ref = apply(ops, x, t)
    check("1d", ops, x, t, mesh, P("batch"), ref=ref)
    fused = {"fused": ops["fused"]}

    # An (8, 6) batch, its first axis sharded; `t` of shape (*batch,).
    x2 = jax.random.normal(kx, (8, 6, 3))
    t2 = jax.random.normal(kt, (8, 6))
    ref2 = apply(fused, x2, t2)
    check("2d", fused, x2, t2, mesh, P("batch"), ref=ref2)

    # The same batch over a 4 x 2 mesh, both batch axes sharded.
    mesh2 = Mesh(devices.reshape(4, 2), ("a", "b"))
    check("2d-mesh", fused, x2, t2, mesh2, P("a", "b"), ref=ref2)

    # Batch chunking with `chunk_size=` (8 points at a time, one per device).
    check("chunked", fused, x, t, mesh, P("batch"), chunk=8, ref=ref)

    # `jax.make_mesh`, whose axes are `Explicit` by default in this JAX.
    emesh = jax.make_mesh((NUM_DEVICES,), ("batch",))
    for name in ["fused", "hutchinson"]:
        check("explicit", {name: ops[name]}, x, t, emesh, P("batch"), ref=ref)

    # A data-parallel training step: replicated model, sharded batch.
    def loss_fn(model, x, t):
        residual = eqxderiv.TimeDerivative(model) - eqxderiv.Laplacian(model)
        initial = eqxderiv.Value(model)(x, jnp.zeros_like(t)) - jnp.sin(x[:, 0])
        return jnp.mean(residual(x, t) ** 2) + jnp.mean(initial**2)

    @eqx.filter_jit
    def step(model, x, t):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, t)
        model = eqx.apply_updates(model, jax.tree.map(lambda g: -1e-2 * g, grads))
        return loss, grads, model

    u = make(3, "scalar", width=16, depth=2, key=kn)

    def train_step():
        loss, grads, new = step(u, x, t)
        us = eqx.filter_shard(u, NamedSharding(mesh, P()))
        xs, ts = jax.device_put((x, t), batch)
        loss_s, grads_s, new_s = step(us, xs, ts)
        params = eqx.filter((grads_s, new_s), eqx.is_array)
        return {
            "loss": float(loss),
            "loss_error": abs(float(loss_s) - float(loss)),
            "close": bool(
                eqx.tree_equal(
                    (loss_s, grads_s, new_s), (loss, grads, new), rtol=RTOL, atol=ATOL
                )
            ),
            "replicated": all(
                p.sharding.is_fully_replicated for p in jax.tree.leaves(params)
            ),
        }

    report("train_step", train_step)
    return results


# --------------------------------------------------------------------------------
# The tests, in the pytest process.


@pytest.fixture(scope="module")
def results() -> dict:
    flag = f"--xla_force_host_platform_device_count={NUM_DEVICES}"
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flag}"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve())],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [s for s in proc.stdout.splitlines() if s.startswith("RESULTS ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(
            f"the multi-device script failed (exit status {proc.returncode}).\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return json.loads(lines[-1].removeprefix("RESULTS "))


def _assert_matches(result: dict) -> None:
    assert "exception" not in result, result["exception"]
    assert result["close"], f"sharded != unsharded: {result}"
    assert result["sharded"], f"result not sharded along the batch: {result}"


def test_eight_devices(results):
    assert results["num_devices"] == NUM_DEVICES


@pytest.mark.parametrize("name", OPERATORS)
def test_operator_sharded_batch(results, name):
    _assert_matches(results[f"1d/{name}"])


def test_two_batch_axes_first_sharded(results):
    _assert_matches(results["2d/fused"])


def test_two_batch_axes_both_sharded(results):
    _assert_matches(results["2d-mesh/fused"])


def test_chunked_batch(results):
    _assert_matches(results["chunked/fused"])


def test_explicit_mesh(results):
    _assert_matches(results["explicit/fused"])


@pytest.mark.xfail(
    strict=True,
    reason="stochastic methods on a mesh with explicit axes: drawing per-sample "
    "probes inside vmap over an Explicit-sharded batch fails in JAX's sharding "
    "rules ('Resource axis: batch ... is not found in mesh: ()')",
)
def test_explicit_mesh_stochastic(results):
    _assert_matches(results["explicit/hutchinson"])


def test_data_parallel_train_step(results):
    result = results["train_step"]
    assert "exception" not in result, result["exception"]
    assert result["close"], f"sharded step != unsharded step: {result}"
    assert result["replicated"], "gradients / new parameters are not replicated"


if __name__ == "__main__":
    print("RESULTS " + json.dumps(_compute()))
