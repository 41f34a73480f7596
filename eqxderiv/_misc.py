"""Input validation and batching shared by every operator."""

import contextlib
import inspect
import math
import operator
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


def as_int(value: Any) -> Any:
    """Converts any integer (a NumPy integer or a 0-d integer array too, never a
    bool) to a Python int; anything else is returned as is, for `check_count` to
    refuse. Used as the converter of static count fields, which must hash and
    compare as plain ints (a NumPy scalar set as static also makes equinox warn).
    """
    if isinstance(value, np.bool_):
        # Refused as a Python bool: a NumPy scalar set as static makes equinox warn.
        return bool(value)
    dtype = getattr(value, "dtype", None)
    if isinstance(value, bool) or (dtype is not None and jnp.issubdtype(dtype, bool)):
        return value
    try:
        return operator.index(value)
    except (TypeError, IndexError, ValueError):
        return value


def check_count(value: Any, name: str, optional: bool = False) -> int | None:
    """Validates a positive integer argument (`None` too when `optional`), and
    returns it as a Python int. Every count of eqxderiv goes through here, so that
    methods and calls accept and refuse the same values."""
    if optional and value is None:
        return None
    n = as_int(value)
    if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
        return n
    expected = "a positive int" + (" or None" if optional else "")
    if isinstance(value, (bool, np.bool_)):
        # A bool is an int to Python, but `True` for a count is always a slip.
        why = " (a bool, not a count)"
    elif isinstance(n, int):
        why = ""
    else:
        why = f" of type {type(value).__name__}"
    raise ValueError(f"`{name}` must be {expected}; got {value!r}{why}.")


def check_chunk_size(chunk_size: Any) -> int | None:
    """Validates the `chunk_size=` call argument: a positive int or `None`."""
    return check_count(chunk_size, "chunk_size", optional=True)


def check_key(key: Any) -> None:
    """Validates the `key=` call argument: one PRNG key for the whole call."""
    dtype = getattr(key, "dtype", None)
    shape = tuple(getattr(key, "shape", ()))
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return
        got, exc = f"a key array of shape {shape}", ValueError
    elif dtype is not None and dtype == jnp.uint32:
        if shape == (2,):
            return
        got, exc = f"a uint32 array of shape {shape}", ValueError
    elif dtype is not None:
        got, exc = f"an array of dtype {dtype} and shape {shape}", TypeError
    else:
        got, exc = f"{type(key).__name__} {key!r}", TypeError
    raise exc(
        "`key` must be a single PRNG key for the whole call: a scalar typed key "
        "from `jax.random.key(seed)` (shape ()), or a legacy uint32 key of shape "
        f"(2,) from `jax.random.PRNGKey(seed)`; got {got}. Each sample gets its "
        "own subkey, split from this one, so there is no need to pass one key "
        "per sample."
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


# How the hint on errors raised while tracing a field starts; an error that
# already carries it (from a field nested in another) is not annotated twice.
_PER_SAMPLE = "is called on one sample at a time"

# Words in jax's and numpy's messages about shapes and indexing (a field written
# for a batch fails with these); other errors are left as they are.
_SHAPE_WORDS = ("shape", "dimension", "axis", "axes", "index", "indic", "rank")


def _binds(field: Callable[..., Any], *args: Any) -> bool | None:
    """Whether `field` accepts these positional arguments; `None` when its
    signature cannot be read (some builtins)."""
    try:
        signature = inspect.signature(field)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*args)
    except TypeError:
        return False
    return True


def _explain(e: Exception, field: Any, x: Any, t: Any, name: str) -> Exception | None:
    """A clearer error for `e`, raised while tracing `field` on one sample, or
    `None` to let `e` through unchanged."""
    from ._operator import AbstractOperator

    if isinstance(field, AbstractOperator):
        # Its own validation already explained the failure in its terms.
        return None
    message = str(e)
    if isinstance(e, TypeError) and "positional argument" in message:
        # The message alone cannot tell a call of the field with the wrong
        # arguments from a bad call inside it; the signature can, where readable.
        binds = _binds(field, x) if t is None else _binds(field, x, t)
        if binds is not True:
            if t is None:
                return TypeError(
                    f"`{name}` takes a time `t` as well as `x`: calling "
                    f"`{name}(x)` failed with: {message}; call the operator as "
                    f"`op(x, t)`, with `t` of shape (*batch,) or (*batch, 1)."
                )
            return TypeError(
                f"`{name}` takes only `x`, but the operator was called with a "
                f"time `t` as well: calling `{name}(x, t)` failed with: "
                f"{message}; call the operator as `op(x)`, or give the field a "
                f"time argument, `{name}(x, t)`."
            )
    if isinstance(e, (jax.errors.JAXTypeError, jax.errors.JAXIndexError)):
        # Value-dependent control flow and the like: not a matter of shapes.
        return None
    if _PER_SAMPLE in message:
        return None
    if not isinstance(e, IndexError) and not any(
        w in message.lower() for w in _SHAPE_WORDS
    ):
        return None
    exc = next(c for c in (IndexError, ValueError, TypeError) if isinstance(e, c))
    shapes = f"`x` of shape (d,) = {tuple(x.shape)}"
    if t is not None:
        shapes += (
            f" and `t` of shape {tuple(t.shape)} (() for `t` of shape (*batch,), "
            f"(1,) for (*batch, 1))"
        )
    return exc(
        f"Tracing `{name}` on one sample failed with {type(e).__name__}: "
        f"{message}\n`{name}` {_PER_SAMPLE}, with {shapes}, and the operator "
        f"maps it over the batch: if it was written for a batch (say `x[:, 0]`), "
        f"write it for one sample (`x[0]`)."
    )


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
    except (TypeError, ValueError, IndexError) as e:
        explained = _explain(e, field, x, t, name)
        if explained is None:
            raise
        raise explained from e
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"`{name}` must return a single array for one sample; got "
            f"{jax.tree_util.tree_structure(out)}."
        )
    if jnp.issubdtype(out.dtype, jnp.complexfloating):
        raise TypeError(
            f"`{name}` must return a floating-point array; got dtype {out.dtype} "
            f"(shape {tuple(out.shape)}). Derivatives of complex outputs are not "
            f"defined here: return the real and imaginary parts stacked as a real "
            f"array, e.g. `lambda x: jnp.stack([f(x).real, f(x).imag])` (or "
            f"`jnp.concatenate` for vector outputs). Complex intermediates inside "
            f"the field are fine."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must return a floating-point array; got dtype {out.dtype} "
            f"(shape {tuple(out.shape)}). Derivatives of integer or boolean outputs "
            f"are undefined: compute the output in floating point."
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
