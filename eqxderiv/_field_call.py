"""The field calling convention: a field is called on one sample, as `f(x)` or
`f(x, t)`; errors raised while tracing it are explained in those terms."""

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._batching import SampleKeys
from ._flax import explain_unbound_flax
from ._validation import FieldError


def call_field(field: Callable[..., Any], x: Any, t: Any, key: Any = None) -> Any:
    """Calls a field on one sample, with `t` only when one is given.

    A `key` is only ever given to a stochastic operator used as a field, the one
    kind of field that takes one. Inside an enclosing call it is that sample's
    `SampleKeys`, which the operator evaluates on directly (its one sample was
    validated with the enclosing call), so that the shared key the enclosing
    batch closes over reaches its method.
    """
    if isinstance(key, SampleKeys):
        return field.evaluate(x, t, key)
    if key is not None:
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


def _explain(
    e: Exception, field: Any, x: Any, t: Any, name: str, is_operator: bool
) -> Exception | None:
    """A clearer error for `e`, raised while tracing `field` on one sample, or
    `None` to let `e` through unchanged."""
    if is_operator or isinstance(e, FieldError):
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
    field: Callable[..., Any],
    x: Any,
    t: Any,
    *,
    is_operator: bool,
    stochastic: bool,
    name: str = "field",
) -> jax.ShapeDtypeStruct:
    """The shape and dtype of `field`'s output on one sample, without computing it.

    `is_operator` says whether `field` is an eqxderiv operator (which explains
    its own errors), `stochastic` whether it takes a key.
    """
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype) if stochastic else None
    try:
        if t is None:
            out = jax.eval_shape(lambda x_, k_: call_field(field, x_, None, k_), x, key)
        else:
            out = jax.eval_shape(
                lambda x_, t_, k_: call_field(field, x_, t_, k_), x, t, key
            )
    except Exception as e:
        flax_hint = explain_unbound_flax(field, e)
        if flax_hint is not None:
            raise flax_hint from e
        if not isinstance(e, (TypeError, ValueError, IndexError)):
            raise
        explained = _explain(e, field, x, t, name, is_operator)
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
