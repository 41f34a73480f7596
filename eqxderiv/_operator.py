"""The operator base class and operator arithmetic.

Every operator is an `eqx.Module` wrapping one or more fields. Calling one on a
batch validates the wrapped fields once on the per-sample structs
(`out_structure`) and maps the per-sample `evaluate` over the leading axes.
Arithmetic between operators builds small final wrappers, in the lineax manner.
"""

import abc
import numbers
from typing import Any, Optional, final

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._batching import SampleKeys, evaluate_batched, split_keys
from ._custom_types import ChunkSize, Field, SpaceLike, TimeLike
from ._field_call import call_field, field_output


class AbstractOperator(eqx.Module):
    """A field built from other fields by differentiation or arithmetic.

    Operators are fields themselves: they can be wrapped by further operators and
    combined with `+`, `-`, `*` and `/`. Calling one on `x` of shape `(*batch, d)`
    (and optionally `t` of shape `(*batch,)`, `(*batch, 1)` or `()`) returns
    `(*batch, *result)`.

    A new operator implements three things, all for one sample: `stochastic`,
    `out_structure` (validation and the result's shape) and `evaluate`. Calling it
    on a batch is the same for every operator (`__call__` is final).
    """

    @property
    @abc.abstractmethod
    def stochastic(self) -> bool:
        """Whether evaluating this operator needs a PRNG key."""

    @abc.abstractmethod
    def out_structure(
        self,
        x: jax.ShapeDtypeStruct,
        t: Optional[jax.ShapeDtypeStruct],  # noqa: UP045
    ) -> jax.ShapeDtypeStruct:
        """Validates the wrapped fields for one sample, without computing anything.

        **Arguments:**

        - `x`: the struct of one sample's point, shape `(d,)`.
        - `t`: the struct of one sample's time, shape `()` or `(1,)`, or `None`.

        **Returns:** the struct of one sample's result. Raises a `ValueError` or
        `TypeError` for a field this operator does not apply to.
        """

    @abc.abstractmethod
    def evaluate(
        self,
        x: Float[Array, " d"],
        t: Float[Array, ""] | Float[Array, "1"] | None,
        key: SampleKeys | PRNGKeyArray | None,
    ) -> Float[Array, "..."]:
        """Evaluates the operator on one sample.

        **Arguments:**

        - `x`: one point, shape `(d,)`.
        - `t`: its time, shape `()` or `(1,)`, or `None`.
        - `key`: this sample's keys where the operator is stochastic, else
            `None`: pass them on unchanged to the operators this one evaluates.
            (They hold this sample's own PRNG key and the call's, which is the
            same for every sample, for probes shared across the batch; see
            `eqxderiv.Hutchinson`.)

        **Returns:** the result for this sample, of the shape `out_structure`
        gives.
        """

    @final
    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "..."]:
        """Evaluates the operator on a batch.

        **Arguments:**

        - `x`: points of shape `(*batch, d)`.
        - `t`: times of shape `(*batch,)` or `(*batch, 1)`, or one time of shape
            `()` (a Python float too) for every point, or `None` for fields of `x`
            alone.
        - `key`: one PRNG key for the whole call (each sample gets its own
            subkey), needed where a stochastic method estimates the result.
        - `chunk_size`: evaluate the batch this many samples at a time
            (`jax.lax.map`), to bound memory; `None` vectorises over the whole
            batch.

        **Returns:** the result, of shape `(*batch, *result)`.
        """
        # The internal classes of operator arithmetic are not named to users.
        name = type(self).__name__
        name = "This operator" if name.startswith("_") else name
        return evaluate_batched(
            name, self.stochastic, self.out_structure, self.evaluate, x, t, key,
            chunk_size,
        )  # fmt: skip

    # How the arithmetic below keeps work shared. Named derivatives of one field
    # override these two (in `_abstract_derivative.py`, which can see the classes
    # they build); every other operator keeps the defaults. They are ordinary
    # methods with defaults, not abstract ones, so that a new operator needs
    # neither.

    def _merged(self, other: "AbstractOperator") -> "AbstractOperator | None":
        """`self + other` as one operator sharing their work, or `None`."""
        return None

    def _scaled(self, c: Any) -> "AbstractOperator":
        """`c * self`, for a scalar `c`."""
        return _Scale(self, c)

    # Operator arithmetic. Every method returns a new (final) operator.

    def __add__(self, other: Any) -> "AbstractOperator":
        return _sum(self, _as_operator(other, "+"))

    def __radd__(self, other: Any) -> "AbstractOperator":
        return _sum(_as_operator(other, "+"), self)

    def __sub__(self, other: Any) -> "AbstractOperator":
        return _sum(self, _as_operator(other, "-")._scaled(-1))

    def __rsub__(self, other: Any) -> "AbstractOperator":
        return _sum(_as_operator(other, "-"), self._scaled(-1))

    def __neg__(self) -> "AbstractOperator":
        return self._scaled(-1)

    def __mul__(self, other: Any) -> "AbstractOperator":
        if _is_scalar(other):
            return self._scaled(other)
        return _Mul(self, _as_operator(other, "*"))

    def __rmul__(self, other: Any) -> "AbstractOperator":
        if _is_scalar(other):
            return self._scaled(other)
        return _Mul(_as_operator(other, "*"), self)

    def __truediv__(self, other: Any) -> "AbstractOperator":
        if not _is_scalar(other):
            raise TypeError(
                "Operators can only be divided by a scalar (a Python number or a "
                f"0-d floating array); got {_describe(other)}."
            )
        return self._scaled(1 / other)


def scaled(c: Any, y: Array) -> Array:
    """`c * y` in the dtype of `y`: a coefficient (a NumPy float32, a 0-d array)
    never changes the result's precision, nor fails under strict promotion."""
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        return c * y  # a weakly typed Python number takes the dtype of `y`
    return jnp.asarray(c).astype(y.dtype) * y


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


class PlainField(AbstractOperator):
    """`coeff * field(x, t)`: a plain field met in operator arithmetic
    (`TimeDerivative(f) + f`). In a sum with named derivatives of the same field,
    it becomes a `Value` term of their shared propagation."""

    field: Field
    coeff: Any = 1

    @property
    def stochastic(self) -> bool:
        return False

    def out_structure(self, x, t):
        return field_output(self.field, x, t, is_operator=False, stochastic=False)

    def evaluate(self, x, t, key):
        return scaled(self.coeff, call_field(self.field, x, t))

    def _scaled(self, c):
        return PlainField(self.field, c * self.coeff)


def _as_operator(other: Any, symbol: str) -> AbstractOperator:
    if isinstance(other, AbstractOperator):
        return other
    if callable(other):
        return PlainField(other)
    raise TypeError(
        f"`{symbol}` between an operator and {_describe(other)} is not defined: "
        "expected another operator or a field (a callable `f(x)` / `f(x, t)`)"
        + (", or a scalar for `*` and `/`." if symbol in "*/" else ".")
    )


def _same_shapes(structs: list[jax.ShapeDtypeStruct], what: str) -> None:
    shapes = [s.shape for s in structs]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(
            f"Cannot {what} operator results of per-sample shapes "
            f"{', '.join(map(str, shapes))}; nothing is broadcast."
        )


class _Sum(AbstractOperator):
    """A flat sum of terms. Terms that share work (named derivatives of the same
    field object with the same method) are kept merged in one term, however the
    expression was bracketed."""

    terms: tuple[AbstractOperator, ...]

    @property
    def stochastic(self) -> bool:
        return any(op.stochastic for op in self.terms)

    def out_structure(self, x, t):
        structs = [op.out_structure(x, t) for op in self.terms]
        _same_shapes(structs, "add")
        dtype = jnp.result_type(*(s.dtype for s in structs))
        return jax.ShapeDtypeStruct(structs[0].shape, dtype)

    def evaluate(self, x, t, key):
        keys = split_keys(key, len(self.terms))
        outs = [op.evaluate(x, t, k) for op, k in zip(self.terms, keys)]
        return sum(outs[1:], outs[0])

    def _scaled(self, c):
        # Distributed over the terms, so that the scaled terms can still merge.
        return _Sum(tuple(term._scaled(c) for term in self.terms))


class _Mul(AbstractOperator):
    left: AbstractOperator
    right: AbstractOperator

    @property
    def stochastic(self) -> bool:
        return self.left.stochastic or self.right.stochastic

    def out_structure(self, x, t):
        a = self.left.out_structure(x, t)
        b = self.right.out_structure(x, t)
        # A scalar field times any field is ordinary math; anything else must match.
        if a.shape != b.shape and a.shape != () and b.shape != ():
            raise ValueError(
                f"Cannot multiply operator results of per-sample shapes {a.shape} "
                f"and {b.shape}: the shapes must agree, or one side must be a "
                "scalar field."
            )
        shape = a.shape if a.shape != () else b.shape
        return jax.ShapeDtypeStruct(shape, jnp.result_type(a.dtype, b.dtype))

    def evaluate(self, x, t, key):
        kl, kr = split_keys(key, 2)
        return self.left.evaluate(x, t, kl) * self.right.evaluate(x, t, kr)


class _Scale(AbstractOperator):
    operator: AbstractOperator
    scale: Any

    @property
    def stochastic(self) -> bool:
        return self.operator.stochastic

    def out_structure(self, x, t):
        return self.operator.out_structure(x, t)

    def evaluate(self, x, t, key):
        return scaled(self.scale, self.operator.evaluate(x, t, key))

    def _scaled(self, c):
        return _Scale(self.operator, c * self.scale)


def _terms(op: AbstractOperator) -> tuple[AbstractOperator, ...]:
    return op.terms if isinstance(op, _Sum) else (op,)


def _sum(a: AbstractOperator, b: AbstractOperator) -> AbstractOperator:
    """`a + b` as a flat sum, each term merged into an earlier one where they
    share work."""
    terms: list[AbstractOperator] = []
    for op in _terms(a) + _terms(b):
        for i, prev in enumerate(terms):
            merged = prev._merged(op)
            if merged is None:
                merged = op._merged(prev)
            if merged is not None:
                terms[i] = merged
                break
        else:
            terms.append(op)
    return terms[0] if len(terms) == 1 else _Sum(tuple(terms))
