"""r2r: routed SLM/LLM decoding. The Python API (`load_pair`, `Pair.generate`) and the `r2r` command line.

The library's packages install under this one name (`r2r.router`, `r2r.serving`, `r2r.evals`, `r2r.testbed`,
`r2r.data_gen`; the repository keeps them as top-level folders, pyproject's package-dir maps them). The API is
loaded on first use, so importing one of them (the router alone, say) does not load the serving stack."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from r2r.api import Pair, load_pair

__all__ = ["Pair", "load_pair"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from r2r import api
        return getattr(api, name)
    raise AttributeError(f"module 'r2r' has no attribute {name!r}")
