"""Input validation and batching shared by every operator."""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _dtype_name(a: Any) -> str:
    return str(getattr(a, "dtype", type(a).__name__))


def _is_float(a: Any) -> bool:
    dtype = getattr(a, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def as_float_array(value: Any, name: str) -> jax.Array:
    """Converts `value` to a JAX array, refusing integer, boolean and complex input.

    Python floats are accepted (they carry no dtype of their own).
    """
    if isinstance(value, bool) or (
        isinstance(value, int) and not isinstance(value, float)
    ):
        raise TypeError(
            f"`{name}` must be a floating-point array; got the Python "
            f"{type(value).__name__} {value!r}. Pass a float, e.g. "
            f"`jnp.asarray({value}, dtype=float)`."
        )
    if isinstance(value, float):
        return jnp.asarray(value)
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        try:
            value = np.asarray(value)
        except Exception as e:  # pragma: no cover - exotic input
            raise TypeError(
                f"`{name}` must be an array; got {type(value).__name__}."
            ) from e
    if not _is_float(value):
        raise TypeError(
            f"`{name}` must be a floating-point array; got dtype "
            f"{_dtype_name(value)} with shape {tuple(value.shape)}. Convert it "
            f"with `.astype(float)` (derivatives of integer inputs are undefined)."
        )
    return jnp.asarray(value)


def check_inputs(x: Any, t: Any) -> tuple[jax.Array, jax.Array | None, tuple[int, ...]]:
    """Validates `x` of shape `(*batch, d)` and `t` of shape `(*batch,)` or
    `(*batch, 1)`. Returns the arrays and the batch shape.
    """
    x = as_float_array(x, "x")
    if x.ndim == 0:
        raise ValueError(
            "`x` must have shape (*batch, d) with at least one axis (the "
            "spatial one); got a scalar of shape (). For a one-dimensional "
            "problem pass `x[..., None]`, of shape (*batch, 1)."
        )
    batch = tuple(x.shape[:-1])
    if t is None:
        return x, None, batch
    t_is_python_float = isinstance(t, float)
    t = as_float_array(t, "t")
    if tuple(t.shape) not in (batch, batch + (1,)):
        raise ValueError(
            f"`t` must have shape (*batch,) = {batch} or (*batch, 1) = "
            f"{batch + (1,)} to match `x` of shape {tuple(x.shape)}; got "
            f"shape {tuple(t.shape)}. Times are never broadcast: give one time "
            f"per point."
        )
    if t_is_python_float:
        # A Python float has no dtype of its own: it takes that of `x`.
        t = t.astype(x.dtype)
    if t.dtype != x.dtype:
        # Mixed precision would silently promote one side; ask for consistency.
        raise TypeError(
            f"`x` and `t` must have the same dtype; got x: {x.dtype}, t: {t.dtype}."
        )
    return x, t, batch


def check_chunk_size(chunk_size: Any) -> None:
    """Validates the `chunk_size=` call argument: a positive int or `None`."""
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or chunk_size < 1
    ):
        raise ValueError(
            f"`chunk_size` must be a positive int or None; got {chunk_size!r}."
        )


def check_field(field: Any, name: str = "field") -> None:
    if not callable(field):
        raise TypeError(
            f"`{name}` must be callable as `{name}(x)` or `{name}(x, t)` on one "
            f"sample; got a non-callable {type(field).__name__}."
        )


def call_field(field: Callable[..., Any], x: Any, t: Any, key: Any = None) -> Any:
    """Calls a field on one sample, with `t` only when one is given.

    Operators (which may be stochastic) also receive the PRNG key.
    """
    from ._operator import AbstractOperator

    if isinstance(field, AbstractOperator):
        return field(x, t, key=key)
    if t is None:
        return field(x)
    return field(x, t)


def field_output(
    field: Callable[..., Any], x: Any, t: Any, name: str = "field"
) -> jax.ShapeDtypeStruct:
    """The shape and dtype of `field`'s output on one sample, without computing it."""
    from ._operator import AbstractOperator

    if isinstance(field, AbstractOperator) and field.stochastic:
        key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    else:
        key = None
    try:
        if t is None:
            out = jax.eval_shape(lambda x_, k_: call_field(field, x_, None, k_), x, key)
        else:
            out = jax.eval_shape(
                lambda x_, t_, k_: call_field(field, x_, t_, k_), x, t, key
            )
    except TypeError as e:
        if t is None and "positional argument" in str(e):
            raise TypeError(
                f"Calling `{name}(x)` failed: {e}. If the field needs a time, "
                f"call the operator as `op(x, t)`."
            ) from e
        raise
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"`{name}` must return a single array for one sample; got "
            f"{jax.tree_util.tree_structure(out)}."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must return a floating-point array; got dtype {out.dtype}."
        )
    return out


def sample_struct(a: jax.Array | None, batch: tuple[int, ...]) -> Any:
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


def map_batch(
    fn: Callable[[Any, Any, Any], Any],
    x: jax.Array,
    t: jax.Array | None,
    key: Any,
    batch: tuple[int, ...],
    chunk_size: int | None,
) -> Any:
    """Applies the per-sample `fn(x, t, key)` over every leading batch axis; `fn`
    returns an array or a tuple of arrays.

    Without chunking this is one `vmap` per batch axis, so a batch sharded over
    devices (along any of its axes) stays sharded. With chunking, the chunks are
    *strided* (sample `i` goes to chunk `i % num_chunks`), so that each chunk
    holds samples from every device and a sharded batch is never gathered.
    """
    if batch == ():
        return fn(x, t, key)
    nb = len(batch)
    keys = None
    if key is not None:
        keys = _keys_like_batch(jax.random.split(key, batch), x, nb)
    if chunk_size is None:
        f = fn
        for _ in batch:
            f = jax.vmap(f)
        return f(x, t, keys)
    n = math.prod(batch)
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

    out = jax.lax.map(
        lambda args: jax.vmap(fn)(*args), (strided(x), strided(t), strided(keys))
    )

    def unstrided(o):
        o = jnp.swapaxes(o, 0, 1).reshape((num * size,) + o.shape[2:])[:n]
        return o.reshape(batch + o.shape[1:])

    return jax.tree.map(unstrided, out)
