"""The methods: how the quantities of a field are computed, one file per method
(`taylor.py`, `forward.py`, `nested.py`, `stochastic.py`) on the protocol of
`abstract.py`."""

from .abstract import (
    AbstractMethod as AbstractMethod,
    FieldProgram as FieldProgram,
    needs_key as needs_key,
)
from .convert import (
    MethodLike as MethodLike,
    MethodName as MethodName,
    as_method as as_method,
)
from .forward import Forward as Forward
from .jet_method import AbstractJetMethod as AbstractJetMethod
from .nested import Nested as Nested
from .stochastic import (
    Hutchinson as Hutchinson,
    SparseSampling as SparseSampling,
    shares_probes as shares_probes,
)
from .taylor import Taylor as Taylor
