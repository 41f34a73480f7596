"""The `method=` argument of the operators: a name or a method object."""

from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from .abstract import AbstractMethod
from .forward import Forward
from .nested import Nested
from .stochastic import Hutchinson, SparseSampling
from .taylor import Taylor


# The names `method=` accepts; a typo is a type error for pyright.
MethodName: TypeAlias = Literal[
    "auto", "taylor", "forward", "nested", "hutchinson", "sparse"
]

# What `method=` accepts. Static type checkers see the precise type (a typo in a
# name is an error); at run time it is `Any`, so that a wrong value reaches
# `as_method`, whose error says what to write, instead of a runtime type checker
# (jaxtyping's import hook checks the operators' `__init__`, which equinox
# annotates with this converter's argument type).
if TYPE_CHECKING:
    MethodLike: TypeAlias = AbstractMethod | MethodName
else:
    MethodLike: TypeAlias = Any

_BY_NAME: dict[str, type[AbstractMethod]] = {
    "auto": Taylor,
    "taylor": Taylor,
    "forward": Forward,
    "nested": Nested,
    "hutchinson": Hutchinson,
    "sparse": SparseSampling,
}
_NAMES = tuple(_BY_NAME)
# What to suggest to someone who passed a method's class instead of an instance.
_EXAMPLES = {
    "Hutchinson": "Hutchinson(num_probes=16)",
    "SparseSampling": "SparseSampling(num_samples=16)",
    "Taylor": "Taylor(chunk_size=64)",
    "Forward": "Forward(chunk_size=64)",
}


def as_method(method: MethodLike) -> AbstractMethod:
    """Converts the `method=` argument of an operator to a method object."""
    if isinstance(method, AbstractMethod):
        return method
    if isinstance(method, str):
        cls = _BY_NAME.get(method)
        if cls is None:
            raise ValueError(
                f"`method` must be one of {_NAMES} or a method object such as "
                f"`eqxderiv.Hutchinson(num_probes=16)`; got {method!r}."
            )
        return cls()
    given: Any = method
    if isinstance(given, type) and issubclass(given, AbstractMethod):
        name = given.__name__
        example = _EXAMPLES.get(name)
        also = "" if example is None else f" or `eqxderiv.{example}`"
        raise TypeError(
            f"`method` must be a method object, not the class `{name}`: "
            f"instantiate it, e.g. `method=eqxderiv.{name}()`{also}."
        )
    raise TypeError(
        f"`method` must be a string from {_NAMES} or an `eqxderiv` method object; "
        f"got {type(given).__name__}."
    )
