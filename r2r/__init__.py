"""r2r: routed SLM/LLM decoding. The Python API (`load_pair`, `Pair.generate`) and the `r2r` command line."""
from r2r.api import Pair, load_pair

__all__ = ["Pair", "load_pair"]
