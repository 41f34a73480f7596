"""Validation of what users pass: points, times, counts, keys and fields. Every
error names the argument, what was received and what was expected."""

import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class FieldError(ValueError):
    """A field that does not fit what it is used for, found while tracing it
    (already explained: the per-sample hints of `_field_call` leave it alone)."""


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
    """Validates `x` of shape `(*batch, d)` and `t` of shape `(*batch,)`,
    `(*batch, 1)` or `()` (one time for every point, broadcast to `(*batch,)`).
    Returns the arrays and the batch shape.
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
    if tuple(t.shape) == () and batch != ():
        # One time for every point (an initial condition, an ODE solver's
        # right-hand side): the only broadcast there is.
        t = jnp.broadcast_to(t, batch)
    if tuple(t.shape) not in (batch, batch + (1,)):
        raise ValueError(
            f"`t` must have shape (*batch,) = {batch} or (*batch, 1) = "
            f"{batch + (1,)} to match `x` of shape {tuple(x.shape)}; got shape "
            f"{tuple(t.shape)}. A single time of shape () is broadcast to every "
            f"point; nothing else is."
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


def as_bool(value: Any) -> Any:
    """Converts a NumPy bool to a Python bool; anything else is returned as is,
    for the method's check to refuse. The converter of static flags."""
    return bool(value) if isinstance(value, np.bool_) else value


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
    """Validates a wrapped field: anything callable on one sample."""
    if not callable(field):
        raise TypeError(
            f"`{name}` must be callable as `{name}(x)` or `{name}(x, t)` on one "
            f"sample; got a non-callable {type(field).__name__}."
        )


def check_call_key(key: Any, stochastic: bool, name: str) -> None:
    """Validates the `key=` of a call of `name`, which needs one when
    `stochastic`."""
    if key is not None:
        # Checked even where unused: a batch of keys is a misunderstanding of the
        # calling convention, and the batching splits whatever key it is given.
        check_key(key)
    if stochastic and key is None:
        raise ValueError(
            f"{name} uses a stochastic estimator and needs a PRNG key: call it "
            f"as `op(x, t, key=jax.random.key(0))`."
        )


def check_order(value: Any, name: str) -> int:
    """Validates a non-negative integer order of differentiation (a bool is
    refused) and returns it as a Python int."""
    n = as_int(value)
    if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
        return n
    raise ValueError(f"`{name}` must be a non-negative int; got {value!r}.")


def as_indices(value: Any) -> Any:
    """The converter of `Partial`'s `x`: an int or a sequence of ints to a tuple
    of Python ints; anything else is returned as is, for `check_indices` to
    refuse."""
    if isinstance(value, (list, tuple)):
        return tuple(as_int(v) for v in value)
    n = as_int(value)
    return (n,) if isinstance(n, int) and not isinstance(n, bool) else value


def check_indices(value: Any, name: str) -> tuple[int, ...]:
    """Validates a tuple of non-negative int indices (the upper bound, the size
    of `x`, is only known at call time)."""
    ok = isinstance(value, tuple) and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
    )
    if not ok:
        raise ValueError(
            f"`{name}` must be an int or a tuple of ints, each a non-negative index "
            f"into the last axis of `x`; got {value!r}."
        )
    return value
