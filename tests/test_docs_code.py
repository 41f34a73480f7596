"""The Python blocks of the guide pages run as written, in order, each page in
one namespace (the blocks assert what they show)."""

import pathlib
import re
import warnings

import jax
import pytest

from eqxderiv._engine import registry


DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
PAGES = [
    "architecture.md",
    "getting-started.md",
    "operators.md",
    "composing.md",
    "higher-order.md",
]


@pytest.mark.parametrize("page", PAGES)
def test_page_code_runs(page):
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, page
    namespace: dict = {}
    # A rule a page registers is the page's own: the zoo checks that every
    # registered rule has an entry, so the registry is restored afterwards.
    rules = dict(registry.RULES)
    # The pages show code as a user runs it, under JAX's default promotion rules
    # (optax's Adam, for one, mixes a Python float with an int32 step count).
    defaults = (
        jax.numpy_dtype_promotion("standard"),
        jax.numpy_rank_promotion("allow"),
    )
    with warnings.catch_warnings(), defaults[0], defaults[1]:
        # A FallbackWarning here would mean a block's rule was not used.
        warnings.simplefilter("error")
        try:
            for block in blocks:
                exec(compile(block, f"{page}", "exec"), namespace)
        finally:
            registry.RULES.clear()
            registry.RULES.update(rules)
