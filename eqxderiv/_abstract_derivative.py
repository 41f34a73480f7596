"""Named derivatives of a single field, and their fused linear combinations.

A named derivative (`Laplacian`, `Jacobian`, ...) is described by its class
alone: which quantities it asks its method for (`needs`), the per-sample shape
of its result (`result_shape`) and how it assembles that result from the
quantities (`assemble`). So a sum of named derivatives of the same field object
with the same method is one `_Fused` operator, which asks the method for the
union of the quantities once and shares one propagation.
"""

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ._batching import SampleKeys, split_keys
from ._component import Component
from ._custom_types import Field
from ._engine import trace_field
from ._field_call import call_field, field_output
from ._methods import (
    AbstractMethod,
    FieldProgram,
    as_method,
    needs_key,
    shares_probes,
)
from ._operator import AbstractOperator, PlainField, scaled
from ._quantity import Need, PartialDerivative, Quantities, Quantity
from ._validation import check_field


# The quantities defined only for a field with as many outputs as inputs.
_SQUARE = frozenset({Quantity.DIVERGENCE, Quantity.GRADDIV, Quantity.ADVECTION})

# Each quantity's shape (see `Quantity`) for `m` flattened outputs on `d` inputs.
_SHAPES: dict[Quantity, Callable[[int, int], tuple[int, ...]]] = {
    Quantity.VALUE: lambda m, d: (m,),
    Quantity.JACOBIAN: lambda m, d: (m, d),
    Quantity.DT: lambda m, d: (m,),
    Quantity.DIVERGENCE: lambda m, d: (),
    Quantity.LAPLACIAN: lambda m, d: (m,),
    Quantity.GRADDIV: lambda m, d: (d,),
    Quantity.ADVECTION: lambda m, d: (d,),
    Quantity.HESSIAN: lambda m, d: (m, d, d),
    Quantity.BIHARMONIC: lambda m, d: (m,),
    Quantity.GRADLAPLACIAN: lambda m, d: (m, d),
}


def quantity_shape(n: Need, m: int, d: int) -> tuple[int, ...]:
    """The shape of the quantity `n` for `m` flattened outputs on `d` inputs."""
    if isinstance(n, PartialDerivative):
        return (m,)
    return _SHAPES[n](m, d)


def _needs_time(needs: frozenset[Any]) -> bool:
    return Quantity.DT in needs or any(
        isinstance(n, PartialDerivative) and n.t > 0 for n in needs
    )


class AbstractDerivative(AbstractOperator):
    """A named derivative of one field, computed from a set of quantities.

    A subclass declares the quantities it needs (`needs`, a frozenset of
    `eqxderiv.Quantity`) and how it assembles its per-sample result from them
    (`assemble`); evaluation, validation and fusion with other named derivatives
    of the same field come from this class. The result's shape is that of
    `assemble`'s output, found without computing anything.

    **Arguments:**

    - `field`: a callable `f(x)` or `f(x, t)` on one sample.
    - `method`: `"auto"` (default, `eqxderiv.Taylor`), `"taylor"`,
        `"forward"`, `"nested"`, `"hutchinson"`, `"sparse"` or a method object;
        stochastic ones need `key=` at call time.
    """

    # Every named derivative has exactly these two fields, so they are declared
    # once here rather than in each operator's file.
    field: Field
    method: AbstractMethod = eqx.field(default="auto", converter=as_method, static=True)

    needs: ClassVar[frozenset[Quantity]]
    # Whether the operator applies to scalar fields (output shape `()`) only.
    scalar_only: ClassVar[bool] = False

    def kind(self) -> "Kind":
        """What this operator computes, as a term of a fused sum: its class, for
        an operator described by its class alone (the default)."""
        return type(self)

    @classmethod
    @abc.abstractmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        """The per-sample result from the method's quantities (of the flattened
        field, shapes as in `eqxderiv.Quantity`) for a field of output shape
        `out` on `d` inputs. Raises a `ValueError` for a field the operator does
        not apply to (it is also called on shapes alone, to validate)."""

    def __check_init__(self) -> None:
        check_field(self.field)

    @property
    def stochastic(self) -> bool:
        return _fused(self).stochastic

    def out_structure(
        self,
        x: jax.ShapeDtypeStruct,
        t: Optional[jax.ShapeDtypeStruct],  # noqa: UP045
    ) -> jax.ShapeDtypeStruct:
        return _fused(self).out_structure(x, t)

    def evaluate(
        self, x: Array, t: Array | None, key: SampleKeys | PRNGKeyArray | None
    ) -> Array:
        return _fused(self).evaluate(x, t, key)

    def _merged(self, other: AbstractOperator) -> AbstractOperator | None:
        return _fused(self)._merged(other)

    def _scaled(self, c: Any) -> AbstractOperator:
        return _fused(self)._scaled(c)


# The field itself as a term of a fused sum, for a plain field merged into one
# (`Value` says the same as an operator; this is the form arithmetic needs, which
# `Value`'s own module cannot provide without importing this one).
class _Itself:
    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.VALUE})
    __name__ = "Value"

    @staticmethod
    def assemble(q: Quantities, out: tuple[int, ...], d: int) -> Array:
        return q[Quantity.VALUE].reshape(out)


@dataclasses.dataclass(frozen=True)
class PartialKind:
    """A mixed partial derivative as a term of a fused sum (the kind of
    `eqxderiv.Partial` and of `eqxderiv.TimeDerivative` of order other than 1):
    its orders are data, not a class."""

    x: tuple[int, ...]
    t: int
    label: str

    scalar_only: ClassVar[bool] = False

    @property
    def __name__(self) -> str:  # pyright: ignore
        return self.label

    @property
    def quantity(self) -> Need:
        if not self.x and not self.t:
            return Quantity.VALUE
        return PartialDerivative(self.x, self.t)

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({self.quantity})

    def assemble(self, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        bad = [i for i in self.x if i >= d]
        if bad:
            raise ValueError(
                f"{self.label}: `x` indexes the last axis of `x`, of size d = {d}; "
                f"got the indices {self.x} (expected each in [0, {d}))."
            )
        return q[self.quantity].reshape(out)


Kind = type[AbstractDerivative] | type[_Itself] | PartialKind


def result_struct(
    kind: Kind, out: jax.ShapeDtypeStruct, d: int, has_t: bool
) -> jax.ShapeDtypeStruct:
    """Validates a field of output struct `out` on `d` inputs for `kind`; returns
    the struct of `kind`'s per-sample result."""
    name = kind.__name__
    if _needs_time(kind.needs) and not has_t:
        raise ValueError(
            f"{name} needs a time: call it as `op(x, t)` with `t` of shape "
            "(*batch,), (*batch, 1) or (); it was called without `t`."
        )
    if kind.needs & _SQUARE:
        require_square(name, out.shape, d)
    if getattr(kind, "scalar_only", False):
        require_scalar(name, out.shape)
    m = math.prod(out.shape)
    q = {
        n: jax.ShapeDtypeStruct(quantity_shape(n, m, d), out.dtype) for n in kind.needs
    }
    return jax.eval_shape(lambda q_: kind.assemble(q_, out.shape, d), q)


def _split(key: Any, field: Any, method: AbstractMethod) -> tuple[Any, Any]:
    """Splits this sample's keys between the wrapped field (if stochastic) and
    the method; the method gets one PRNG key: the call's shared one for probes
    shared across the batch, else this sample's own."""
    if isinstance(field, AbstractOperator) and field.stochastic:
        inner, outer = split_keys(key, 2)
    else:
        inner, outer = None, key
    if isinstance(outer, SampleKeys):
        outer = outer.shared if shares_probes(method) else outer.sample
    if outer is None and method.stochastic:
        # Only reached for quantities the method computes exactly (the others
        # need a key, see `needs_key`), but `compute` draws its directions before
        # it looks at what is needed: any fixed key gives the same result.
        outer = jax.random.key(0)
    return inner, outer


def _flat(fn: Callable[[Any, Any], Array]) -> Callable[[Any, Any], Array]:
    return lambda x, t: jnp.reshape(fn(x, t), (-1,))


class _Fused(AbstractOperator):
    """`sum_i coeffs[i] * kinds[i](field)`, evaluated in one propagation."""

    field: Field
    method: AbstractMethod = eqx.field(static=True)
    kinds: tuple[Kind, ...] = eqx.field(static=True)
    coeffs: tuple[Any, ...]
    # Per term: `None`, or the `Component` of `field` the term is a derivative of.
    selects: tuple[Component | None, ...]

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset().union(
            *(_whole_needs(k) if c is not None else k.needs
              for k, c in zip(self.kinds, self.selects))
        )  # fmt: skip

    @property
    def field_stochastic(self) -> bool:
        return isinstance(self.field, AbstractOperator) and self.field.stochastic

    @property
    def stochastic(self) -> bool:
        return self.field_stochastic or needs_key(self.method, self.needs)

    def term_structures(self, x, t) -> tuple[jax.ShapeDtypeStruct, ...]:
        """Validates the field for every term; returns each term's result struct."""
        out = field_output(
            self.field,
            x,
            t,
            is_operator=isinstance(self.field, AbstractOperator),
            stochastic=self.field_stochastic,
        )
        d, has_t = x.shape[-1], t is not None
        structs = []
        for k, c in zip(self.kinds, self.selects):
            if c is not None:
                c.check_output(out.shape)
                shape = () if isinstance(c.index, int) else (len(c.positions),)
                out_k = jax.ShapeDtypeStruct(shape, out.dtype)
            else:
                out_k = out
            structs.append(result_struct(k, out_k, d, has_t))
        return tuple(structs)

    def out_structure(self, x, t):
        structs = self.term_structures(x, t)
        if any(s.shape != structs[0].shape for s in structs):
            desc = ", ".join(
                f"{k.__name__}: {s.shape}" for k, s in zip(self.kinds, structs)
            )
            raise ValueError(
                f"Cannot add operator results of different per-sample shapes "
                f"({desc}); nothing is broadcast."
            )
        return structs[0]

    def evaluate_terms(self, x, t, key) -> tuple[Array, ...]:
        """Every term `coeffs[i] * kinds[i](field)` on one sample, from one call
        of the method."""
        inner, outer = _split(key, self.field, self.method)
        # The one trace of the field at this level: its output shape, and the
        # program every method evaluates (no further Python call of the field).
        program = trace_field(lambda a, s: call_field(self.field, a, s, inner), x, t)
        out, d = program.out.shape, x.shape[-1]
        size = math.prod(out)
        call, forward = _flat(program.call), _flat(program.forward)
        field = FieldProgram(call, forward, program.reverse, size, program.collapsible)
        q = self.method.compute(field, x, t, self.needs, outer)
        terms = []
        for c, k, sel in zip(self.coeffs, self.kinds, self.selects):
            if sel is None:
                y = k.assemble(q, out, d)
            else:
                shape = () if isinstance(sel.index, int) else (len(sel.positions),)
                y = k.assemble(_restrict(q, sel, k.needs), shape, d)
            terms.append(scaled(c, y))
        return tuple(terms)

    def evaluate(self, x, t, key):
        terms = self.evaluate_terms(x, t, key)
        return sum(terms[1:], terms[0])

    def _scaled(self, c):
        coeffs = tuple(c * a for a in self.coeffs)
        return _Fused(self.field, self.method, self.kinds, coeffs, self.selects)

    def _merged(self, other):
        if isinstance(other, PlainField):
            base, select = _unwrap(other.field, _Itself)
            if base is not self.field:
                return None
            kinds, coeffs, selects = (_Itself,), (other.coeff,), (select,)
        elif isinstance(other, (AbstractDerivative, _Fused)):
            other = _fused(other)
            if other.field is not self.field or other.method != self.method:
                return None
            kinds, coeffs, selects = other.kinds, other.coeffs, other.selects
        else:
            return None
        return _Fused(
            self.field,
            self.method,
            self.kinds + kinds,
            self.coeffs + coeffs,
            self.selects + selects,
        )


# How a quantity of a component is read off the whole field's quantities: the
# quantities of the whole field it needs. `GRADDIV` is missing: the gradient of a
# component's divergence is not a restriction of anything the whole field's
# propagation gives.
_FROM_WHOLE: dict[Quantity, frozenset[Quantity]] = {
    Quantity.VALUE: frozenset({Quantity.VALUE}),
    Quantity.JACOBIAN: frozenset({Quantity.JACOBIAN}),
    Quantity.DT: frozenset({Quantity.DT}),
    Quantity.LAPLACIAN: frozenset({Quantity.LAPLACIAN}),
    Quantity.HESSIAN: frozenset({Quantity.HESSIAN}),
    Quantity.DIVERGENCE: frozenset({Quantity.JACOBIAN}),
    Quantity.ADVECTION: frozenset({Quantity.JACOBIAN, Quantity.VALUE}),
    Quantity.BIHARMONIC: frozenset({Quantity.BIHARMONIC}),
    Quantity.GRADLAPLACIAN: frozenset({Quantity.GRADLAPLACIAN}),
}


def _from_whole(n: Need) -> frozenset[Any] | None:
    """The whole field's quantities a component's `n` is read off, or `None`."""
    if isinstance(n, PartialDerivative):
        return frozenset({n})
    return _FROM_WHOLE.get(n)


def _whole_needs(kind: Kind) -> frozenset[Any]:
    return frozenset().union(*(_from_whole(n) or () for n in kind.needs))


# The quantities whose rows are the component's.
_ROWS = frozenset(
    {
        Quantity.VALUE,
        Quantity.DT,
        Quantity.LAPLACIAN,
        Quantity.HESSIAN,
        Quantity.BIHARMONIC,
        Quantity.GRADLAPLACIAN,
    }
)


def _restrict(q: Quantities, c: Component, needs: frozenset[Need]) -> Quantities:
    """The quantities `needs` of the component `c`, from those of its field."""
    idx = jnp.asarray(c.positions)
    rows = {n for n in needs if isinstance(n, PartialDerivative)} | (needs & _ROWS)
    out: Quantities = {n: q[n][idx] for n in rows}
    if needs & {Quantity.JACOBIAN, Quantity.DIVERGENCE, Quantity.ADVECTION}:
        J = q[Quantity.JACOBIAN][idx]
        out[Quantity.JACOBIAN] = J
        if Quantity.DIVERGENCE in needs:
            out[Quantity.DIVERGENCE] = jnp.trace(J)
        if Quantity.ADVECTION in needs:
            out[Quantity.ADVECTION] = J @ q[Quantity.VALUE][idx]
    return out


def _unwrap(field: Field, kind: Kind) -> tuple[Field, Component | None]:
    """The field whose propagation a `kind` of `field` is read off, and the
    component of it `field` is (`None` where `field` is read as it is)."""
    if isinstance(field, Component) and all(
        _from_whole(n) is not None for n in kind.needs
    ):
        return field.field, field
    return field, None


def _fused(op: "AbstractDerivative | _Fused") -> _Fused:
    if isinstance(op, _Fused):
        return op
    kind = op.kind()
    field, select = _unwrap(op.field, kind)
    return _Fused(field, op.method, (kind,), (1,), (select,))


def fused(field: Field, method: AbstractMethod, kinds: tuple[Kind, ...]) -> _Fused:
    """The named derivatives `kinds` of `field`, as one fused operator with unit
    coefficients (see `eqxderiv.derivatives`)."""
    return _Fused(field, method, kinds, (1,) * len(kinds), (None,) * len(kinds))


def require_square(name: str, out: tuple[int, ...], d: int) -> None:
    """Raises unless a field with output shape `out` maps `d` inputs to `d`
    outputs."""
    if tuple(out) != (d,):
        raise ValueError(
            f"{name} needs a vector field with as many outputs as inputs: output "
            f"shape (d,) = ({d},) for `x` of shape (..., {d}); got a field with "
            f"output shape {tuple(out)}."
        )


def require_scalar(name: str, out: tuple[int, ...]) -> None:
    """Raises unless `out` is the output shape of a scalar field."""
    if tuple(out) != ():
        raise ValueError(
            f"{name} needs a scalar field (output shape () for one sample); got a "
            f"field with output shape {tuple(out)}. Use `Jacobian` for vector "
            "fields."
        )
