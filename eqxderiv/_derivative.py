"""Named derivatives of a single field, and their fused linear combinations."""

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import ChunkSize, Field, SpaceLike, TimeLike
from ._method import AbstractMethod, needs_key
from ._misc import call_field, check_field, field_output
from ._operator import AbstractOperator


def _flat_field(field: Field, key: Any) -> Callable[[Array, Array | None], Array]:
    """The field as `(x, t) -> (m,)`, with any inner PRNG key closed over."""

    def fn(x, t):
        return jnp.reshape(call_field(field, x, t, key), (-1,))

    return fn


def _out_shape(field: Field, x: Array, t: Array | None) -> tuple[int, ...]:
    def struct(a):
        return None if a is None else jax.ShapeDtypeStruct(a.shape, a.dtype)

    return field_output(field, struct(x), struct(t)).shape


def _split(key: Any, field: Any, method: AbstractMethod) -> tuple[Any, Any]:
    """Splits the key between the wrapped field (if stochastic) and the method."""
    if key is None:
        inner, outer = None, None
    elif isinstance(field, AbstractOperator) and field.stochastic:
        inner, outer = jax.random.split(key)
    else:
        inner, outer = None, key
    if outer is None and method.stochastic:
        # Only reached for quantities the method computes exactly (the others
        # need a key, see `needs_key`), but `compute` draws its directions before
        # it looks at what is needed: any fixed key gives the same result.
        outer = jax.random.key(0)
    return inner, outer


class AbstractDerivative(AbstractOperator):
    """A named derivative of one field, computed from a set of *quantities*.

    Subclasses say which quantities they need (`needs`), which per-sample shape
    they return for a field of a given output shape (`result_shape`) and how they
    assemble their result from the quantities (`assemble`). Because these depend
    only on the class, a sum of several named derivatives of the same field can
    ask one method for the union of their quantities and share one propagation.
    """

    field: eqx.AbstractVar[Field]
    method: eqx.AbstractVar[AbstractMethod]

    needs: ClassVar[frozenset[str]]

    @classmethod
    @abc.abstractmethod
    def result_shape(cls, out: tuple[int, ...], d: int, has_t: bool) -> tuple[int, ...]:
        """The per-sample result shape, or a `ValueError` for an unsuitable field."""

    @classmethod
    @abc.abstractmethod
    def assemble(cls, q: dict[str, Array], out: tuple[int, ...], d: int) -> Array:
        """The per-sample result from the method's (flattened) quantities."""

    def __check_init__(self):
        check_field(self.field)

    @property
    def stochastic(self) -> bool:
        inner = isinstance(self.field, AbstractOperator) and self.field.stochastic
        return inner or needs_key(self.method, type(self).needs)

    def _out_struct(self, x, t):
        out = field_output(self.field, x, t)
        shape = type(self).result_shape(out.shape, x.shape[-1], t is not None)
        return jax.ShapeDtypeStruct(shape, out.dtype)

    def _single(self, x, t, key):
        inner, outer = _split(key, self.field, self.method)
        fn = _flat_field(self.field, inner)
        out = _out_shape(self.field, x, t)
        q = self.method.compute(fn, x, t, type(self).needs, outer)
        return type(self).assemble(q, out, x.shape[-1])


class _Fused(AbstractOperator):
    """`sum_i coeffs[i] * kinds[i](field)`, evaluated in one propagation."""

    field: Field
    method: AbstractMethod = eqx.field(static=True)
    kinds: tuple[type[AbstractDerivative], ...] = eqx.field(static=True)
    coeffs: tuple[Any, ...]

    @property
    def stochastic(self) -> bool:
        inner = isinstance(self.field, AbstractOperator) and self.field.stochastic
        needs = frozenset().union(*(k.needs for k in self.kinds))
        return inner or needs_key(self.method, needs)

    def _out_struct(self, x, t):
        out = field_output(self.field, x, t)
        d = x.shape[-1]
        shapes = [k.result_shape(out.shape, d, t is not None) for k in self.kinds]
        if any(s != shapes[0] for s in shapes):
            desc = ", ".join(f"{k.__name__}: {s}" for k, s in zip(self.kinds, shapes))
            raise ValueError(
                f"Cannot add operator results of different per-sample shapes "
                f"({desc}); nothing is broadcast."
            )
        return jax.ShapeDtypeStruct(shapes[0], out.dtype)

    def _single(self, x, t, key):
        inner, outer = _split(key, self.field, self.method)
        fn = _flat_field(self.field, inner)
        out = _out_shape(self.field, x, t)
        needs = frozenset().union(*(k.needs for k in self.kinds))
        q = self.method.compute(fn, x, t, needs, outer)
        d = x.shape[-1]
        terms = [c * k.assemble(q, out, d) for c, k in zip(self.coeffs, self.kinds)]
        return sum(terms[1:], terms[0])

    def scaled(self, c: Any) -> "_Fused":
        return _Fused(
            self.field, self.method, self.kinds, tuple(c * a for a in self.coeffs)
        )

    def merged(self, other: "_Fused") -> "AbstractOperator | None":
        if other.field is not self.field or other.method != self.method:
            return None
        return _Fused(
            self.field,
            self.method,
            self.kinds + other.kinds,
            self.coeffs + other.coeffs,
        )

    def __call__(
        self,
        x: SpaceLike,
        t: TimeLike | None = None,
        *,
        key: PRNGKeyArray | None = None,
        chunk_size: ChunkSize = None,
    ) -> Float[Array, "..."]:
        return self._apply(x, t, key, chunk_size)


def as_fused(op: AbstractOperator) -> _Fused | None:
    if isinstance(op, _Fused):
        return op
    if isinstance(op, AbstractDerivative):
        return _Fused(op.field, op.method, (type(op),), (1,))
    return None


__all__ = ["AbstractDerivative", "as_fused"]
