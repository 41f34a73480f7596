"""The operator base class and operator arithmetic.

Every operator is an `eqx.Module` wrapping a field; calling it on a batch maps a
per-sample computation over the leading axes. Arithmetic between operators builds
new operators in the lineax manner: small final wrappers. Sums of named
derivatives of the *same* field object (and scalar multiples of them) are fused
into one `_Fused` operator, evaluated in a single shared propagation.
"""

import abc
import numbers
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import ChunkSize, SpaceLike, TimeLike
from ._misc import (
    check_chunk_size,
    check_field,
    check_inputs,
    check_key,
    map_batch,
    sample_struct,
)


def _check_key(key: Any, stochastic: bool, name: str) -> None:
    if key is not None:
        # Checked even where unused: a batch of keys is a misunderstanding of the
        # calling convention, and `map_batch` splits whatever key it is given.
        check_key(key)
    if stochastic and key is None:
        raise ValueError(
            f"{name} uses a stochastic estimator and needs a PRNG key: call it "
            f"as `op(x, t, key=jax.random.key(0))`."
        )


class AbstractOperator(eqx.Module):
    """A field built from other fields by differentiation or arithmetic.

    Operators are fields themselves: they can be wrapped by further operators and
    combined with `+`, `-`, `*` and `/`. Calling one on `x` of shape `(*batch, d)`
    (and optionally `t` of shape `(*batch,)` or `(*batch, 1)`) returns
    `(*batch, *result)`.
    """

    @property
    @abc.abstractmethod
    def stochastic(self) -> bool:
        """Whether evaluating this operator needs a PRNG key."""

    @abc.abstractmethod
    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Array:
        """Evaluates the operator on a batch.

        **Arguments:**

        - `x`: points of shape `(*batch, d)`.
        - `t`: times of shape `(*batch,)` or `(*batch, 1)`, or `None` for fields
            of `x` alone.
        - `key`: one PRNG key for the whole call (each sample gets its own
            subkey), needed where a stochastic method estimates the result.
        - `chunk_size`: evaluate the batch this many samples at a time
            (`jax.lax.map`), to bound memory; `None` vectorises over the whole
            batch.

        **Returns:** the result, of shape `(*batch, *result)`.
        """

    @abc.abstractmethod
    def _out_struct(self, x: jax.ShapeDtypeStruct, t: Any) -> jax.ShapeDtypeStruct:
        """Validates the wrapped fields on one sample; returns the result's struct."""

    @abc.abstractmethod
    def _single(self, x: Array, t: Array | None, key: Any) -> Array:
        """Evaluates the operator on one sample."""

    def _apply(
        self,
        x: Any,
        t: Any,
        key: Any,
        chunk_size: ChunkSize,
    ) -> Array:
        x, t, batch = check_inputs(x, t)
        _check_key(key, self.stochastic, type(self).__name__)
        chunk_size = check_chunk_size(chunk_size)
        self._out_struct(sample_struct(x, batch), sample_struct(t, batch))
        return map_batch(self._single, x, t, key, batch, chunk_size)

    # Operator arithmetic. Every method returns a new (final) operator.

    def __add__(self, other: Any) -> "AbstractOperator":
        return _sum(self, _as_operator(other, "+", like=self))

    def __radd__(self, other: Any) -> "AbstractOperator":
        return _sum(_as_operator(other, "+", like=self), self)

    def __sub__(self, other: Any) -> "AbstractOperator":
        return _sum(self, _scale(_as_operator(other, "-", like=self), -1))

    def __rsub__(self, other: Any) -> "AbstractOperator":
        return _sum(_as_operator(other, "-", like=self), _scale(self, -1))

    def __neg__(self) -> "AbstractOperator":
        return _scale(self, -1)

    def __mul__(self, other: Any) -> "AbstractOperator":
        if _is_scalar(other):
            return _scale(self, other)
        return _Mul(self, _as_operator(other, "*"))

    def __rmul__(self, other: Any) -> "AbstractOperator":
        if _is_scalar(other):
            return _scale(self, other)
        return _Mul(_as_operator(other, "*"), self)

    def __truediv__(self, other: Any) -> "AbstractOperator":
        if not _is_scalar(other):
            raise TypeError(
                "Operators can only be divided by a scalar (a Python number or a "
                f"0-d floating array); got {_describe(other)}."
            )
        return _scale(self, 1 / other)


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    if shape is not None:
        return f"{type(x).__name__} of shape {tuple(shape)}"
    return type(x).__name__


def _is_scalar(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, numbers.Number):
        return True
    shape = getattr(x, "shape", None)
    if shape is None:
        return False
    if shape != ():
        raise TypeError(
            "Operators can only be scaled by a scalar (a Python number or a 0-d "
            f"array); got an array of shape {tuple(shape)}. Nothing is broadcast: "
            "wrap a space-dependent coefficient as a field instead."
        )
    return True


def _as_operator(
    other: Any, symbol: str, like: AbstractOperator | None = None
) -> AbstractOperator:
    from ._derivative import as_fused
    from ._value import Value

    if isinstance(other, AbstractOperator):
        return other
    if callable(other):
        # In a sum, the field takes the method of the named derivative it is added
        # to (of its own field, if the sum has one), so that `D(f, method=m) + f`
        # still fuses into one propagation.
        candidates = [] if like is None else [as_fused(op) for op in _terms(like)]
        candidates = [c for c in candidates if c is not None]
        same = [c for c in candidates if c.field is other]
        chosen = (same or candidates or [None])[0]
        return Value(other) if chosen is None else Value(other, method=chosen.method)
    raise TypeError(
        f"`{symbol}` between an operator and {_describe(other)} is not defined: "
        "expected another operator or a field (a callable `f(x)` / `f(x, t)`)"
        + (", or a scalar for `*` and `/`." if symbol in "*/" else ".")
    )


class _Sum(AbstractOperator):
    """A flat sum of terms. Terms on the same field object with the same method are
    kept merged in one fused term, however the expression was bracketed."""

    terms: tuple[AbstractOperator, ...]

    @property
    def stochastic(self) -> bool:
        return any(op.stochastic for op in self.terms)

    def _out_struct(self, x, t):
        structs = [op._out_struct(x, t) for op in self.terms]
        shapes = [s.shape for s in structs]
        if any(s != shapes[0] for s in shapes):
            raise ValueError(
                "Cannot add operator results of per-sample shapes "
                f"{', '.join(map(str, shapes))}; nothing is broadcast."
            )
        return jax.ShapeDtypeStruct(
            shapes[0], jnp.result_type(*(s.dtype for s in structs))
        )

    def _single(self, x, t, key):
        keys = (
            [None] * len(self.terms)
            if key is None
            else jax.random.split(key, len(self.terms))
        )
        outs = [op._single(x, t, k) for op, k in zip(self.terms, keys)]
        return sum(outs[1:], outs[0])

    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "..."]:
        return self._apply(x, t, key, chunk_size)


class _Mul(AbstractOperator):
    left: AbstractOperator
    right: AbstractOperator

    @property
    def stochastic(self) -> bool:
        return self.left.stochastic or self.right.stochastic

    def _out_struct(self, x, t):
        a = self.left._out_struct(x, t)
        b = self.right._out_struct(x, t)
        # A scalar field times any field is ordinary math; anything else must match.
        if a.shape != b.shape and a.shape != () and b.shape != ():
            raise ValueError(
                f"Cannot multiply operator results of per-sample shapes {a.shape} "
                f"and {b.shape}: the shapes must agree, or one side must be a "
                "scalar field."
            )
        shape = a.shape if a.shape != () else b.shape
        return jax.ShapeDtypeStruct(shape, jnp.result_type(a.dtype, b.dtype))

    def _single(self, x, t, key):
        kl, kr = (None, None) if key is None else jax.random.split(key)
        return self.left._single(x, t, kl) * self.right._single(x, t, kr)

    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "..."]:
        return self._apply(x, t, key, chunk_size)


class _Scale(AbstractOperator):
    operator: AbstractOperator
    scale: Any

    @property
    def stochastic(self) -> bool:
        return self.operator.stochastic

    def _out_struct(self, x, t):
        return self.operator._out_struct(x, t)

    def _single(self, x, t, key):
        return self.scale * self.operator._single(x, t, key)

    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "..."]:
        return self._apply(x, t, key, chunk_size)


def _scale(op: AbstractOperator, c: Any) -> AbstractOperator:
    from ._derivative import as_fused

    if isinstance(op, _Sum):
        # Distributed over the terms, so that the scaled terms can still fuse.
        return _Sum(tuple(_scale(term, c) for term in op.terms))
    fused = as_fused(op)
    if fused is not None:
        return fused.scaled(c)
    if isinstance(op, _Scale):
        return _Scale(op.operator, c * op.scale)
    return _Scale(op, c)


def _terms(op: AbstractOperator) -> tuple[AbstractOperator, ...]:
    return op.terms if isinstance(op, _Sum) else (op,)


def _sum(a: AbstractOperator, b: AbstractOperator) -> AbstractOperator:
    """`a + b` as a flat sum, each term merged into an earlier one of the same field
    and method where possible."""
    from ._derivative import as_fused

    terms: list[AbstractOperator] = []
    for op in _terms(a) + _terms(b):
        new = as_fused(op)
        for i, prev in enumerate(terms):
            old = as_fused(prev)
            merged = None if new is None or old is None else old.merged(new)
            if merged is not None:
                terms[i] = merged
                break
        else:
            terms.append(op)
    return terms[0] if len(terms) == 1 else _Sum(tuple(terms))


__all__ = ["AbstractOperator", "check_field"]
