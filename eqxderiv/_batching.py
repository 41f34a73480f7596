"""Batching: a per-sample computation mapped over every leading batch axis, with
optional chunking, keeping a batch sharded over devices sharded."""

import contextlib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from ._validation import check_call_key, check_chunk_size, check_inputs


class SampleKeys(NamedTuple):
    """The keys one sample's evaluation draws from, as the batching hands them to
    the per-sample `evaluate`: `sample`, this sample's own key (split from the
    call's key, one per sample), and `shared`, one key for the whole call, the
    same for every sample: it is unbatched under the batch `vmap`, so that what a
    method computes from it alone (probes shared across the batch, see
    `eqxderiv.Hutchinson`'s `shared`) is computed once per call."""

    sample: PRNGKeyArray
    shared: PRNGKeyArray


def split_keys(key: Any, num: int) -> tuple[Any, ...]:
    """`num` independent keys from `key` (`None`, a key or `SampleKeys`, each
    part split alike, so a shared key stays the same for every sample)."""
    if key is None:
        return (None,) * num
    if isinstance(key, SampleKeys):
        samples = jax.random.split(key.sample, num)
        shared = jax.random.split(key.shared, num)
        return tuple(SampleKeys(a, b) for a, b in zip(samples, shared))
    return tuple(jax.random.split(key, num))


def _with_shared(fn: Callable[..., Any], shared: Any) -> Callable[..., Any]:
    """`fn(x, t, keys)` as a function of a sample's own key: the shared key is
    closed over, not mapped, so that it stays unbatched under the batch `vmap`."""
    return lambda x, t, key: fn(x, t, SampleKeys(key, shared))


def sample_struct(a: jax.Array | None, batch: tuple[int, ...]) -> Any:
    """The struct of one sample of `a` (`None` stays `None`)."""
    if a is None:
        return None
    return jax.ShapeDtypeStruct(a.shape[len(batch) :], a.dtype)


def _keys_like_batch(keys: Any, x: jax.Array, nb: int) -> Any:
    """Shards per-sample keys like the batch axes of `x` on a mesh with explicit
    axes, where `vmap` requires its mapped inputs to be sharded alike. Elsewhere
    (one device, or automatic sharding) the keys are returned unchanged."""
    try:
        sharding = jax.typeof(x).sharding
        spec = tuple(sharding.spec)
    except Exception:  # pragma: no cover - older JAX without explicit sharding
        return keys
    batch_spec = (spec + (None,) * nb)[:nb]
    if all(s is None for s in batch_spec):
        return keys
    target = jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec(*batch_spec)
    )
    return jax.sharding.reshard(keys, target)


def _batch_mesh(x: jax.Array) -> Any:
    """A context that makes the mesh of `x` the current (abstract) mesh while the
    batch `vmap` is traced, where `x` is sharded over a mesh with explicit axes and
    no mesh is set (`jax.jit` on explicitly sharded inputs, without
    `jax.set_mesh`). Without it, JAX's batching rules fail on an equation that
    mixes a batched operand with an unbatched one, e.g. `concatenate` of a
    per-sample probe's tangent with the zero tangent of `t` ("Resource axis:
    batch ... is not found in mesh: ()"): they build the broadcast operand's
    sharding on the empty context mesh. Elsewhere, a null context."""
    try:
        mesh = jax.typeof(x).sharding.mesh
        explicit = jax.sharding.AxisType.Explicit in mesh.axis_types
        unset = jax.sharding.get_abstract_mesh().empty
    except Exception:  # pragma: no cover - older JAX without explicit sharding
        return contextlib.nullcontext()
    if not (explicit and unset):
        return contextlib.nullcontext()
    return jax.sharding.use_abstract_mesh(getattr(mesh, "abstract_mesh", mesh))


def map_batch(
    fn: Callable[[Any, Any, Any], Any],
    x: jax.Array,
    t: jax.Array | None,
    key: Any,
    batch: tuple[int, ...],
    chunk_size: int | None,
) -> Any:
    """Applies the per-sample `fn(x, t, key)` over every leading batch axis; `fn`
    returns an array or a tuple of arrays. `key` is the call's key (or `None`);
    `fn` gets `SampleKeys` (or `None`): each sample its own subkey, and the
    call's key itself as the shared one. (Keys that already are `SampleKeys`,
    from an enclosing call of an operator used as a field, are passed on.)

    Without chunking this is one `vmap` per batch axis, so a batch sharded over
    devices (along any of its axes) stays sharded. With chunking, the chunks are
    *strided* (sample `i` goes to chunk `i % num_chunks`), so that each chunk
    holds samples from every device and a sharded batch is never gathered.
    """
    if key is not None and not isinstance(key, SampleKeys):
        # One sample: its own key is the call's (as it always was), and so is the
        # shared one.
        key = SampleKeys(key, key)
    if batch == ():
        return fn(x, t, key)
    nb = len(batch)
    keys = None
    if key is not None:
        keys = _keys_like_batch(jax.random.split(key.sample, batch), x, nb)
        fn = _with_shared(fn, key.shared)
    n = math.prod(batch)
    # An empty batch has nothing to chunk (and no chunk size divides it): `vmap`
    # over the zero-length axes gives the empty result of the right shape.
    if chunk_size is None or n == 0:
        f = fn
        for _ in batch:
            f = jax.vmap(f)
        with _batch_mesh(x):
            return f(x, t, keys)
    size = min(chunk_size, n)
    num = -(-n // size)
    pad = num * size - n

    def strided(a):
        if a is None:
            return None
        a = a.reshape((n,) + a.shape[nb:])
        if pad:
            # Padding repeats a real sample, so the padded rows stay finite.
            a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)])
        return jnp.swapaxes(a.reshape((size, num) + a.shape[1:]), 0, 1)

    with _batch_mesh(x):
        out = jax.lax.map(
            lambda args: jax.vmap(fn)(*args), (strided(x), strided(t), strided(keys))
        )

    def unstrided(o):
        o = jnp.swapaxes(o, 0, 1).reshape((num * size,) + o.shape[2:])[:n]
        return o.reshape(batch + o.shape[1:])

    return jax.tree.map(unstrided, out)


def evaluate_batched(
    name: str,
    stochastic: bool,
    out_structure: Callable[[Any, Any], Any],
    evaluate: Callable[[Any, Any, Any], Any],
    x: Any,
    t: Any,
    key: Any,
    chunk_size: Any,
) -> Any:
    """A call of an operator (or of `eqxderiv.derivatives`) named `name`: checks
    the arguments, validates the wrapped fields once on the per-sample structs
    (`out_structure`, which raises for an unsuitable field) and maps the
    per-sample `evaluate(x, t, key)` over the batch.

    The work is compiled (`eqx.filter_jit`) and cached for the operator's
    structure, the batch's shapes and `chunk_size`, so that a call outside any
    `jit` compiles once and reuses it; under the user's own `jit` it is traced
    inline, as any nested `jit` is."""
    x, t, batch = check_inputs(x, t)
    if not isinstance(key, SampleKeys):
        # `SampleKeys` come from an enclosing call (an operator used as a field),
        # whose key was checked there.
        check_call_key(key, stochastic, name)
    chunk_size = check_chunk_size(chunk_size)
    return _compiled(out_structure, evaluate, x, t, key, chunk_size)


def batched_work(
    out_structure: Callable[[Any, Any], Any],
    evaluate: Callable[[Any, Any, Any], Any],
    x: Any,
    t: Any,
    key: Any,
    chunk_size: int | None,
) -> Any:
    batch = tuple(x.shape[:-1])
    out_structure(sample_struct(x, batch), sample_struct(t, batch))
    return map_batch(evaluate, x, t, key, batch, chunk_size)


# Compiled once per operator structure, input shapes and `chunk_size`.
_compiled = eqx.filter_jit(batched_work)
