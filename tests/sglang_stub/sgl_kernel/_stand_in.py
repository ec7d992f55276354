"""What every module of the stand-in is made of: attributes that fail loudly when called."""
from __future__ import annotations


def missing(module: str, name: str):
    """Any non-dunder attribute of a stand-in module: a function that raises when called (never a silent no-op).

    Dunder names raise AttributeError so that import machinery, `hasattr` probes (`torch.ops`-style feature
    checks, `__path__`, `__file__` look-ups) see an ordinary module without them."""
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    qualified = f"{module}.{name}"

    def fail(*args, **kwargs):
        raise NotImplementedError(f"{qualified} is the test-only sgl_kernel stand-in (tests/sglang_stub): a CUDA "
                                  "kernel was called on the CPU path; this is a failure, not a missing feature")

    fail.__name__ = fail.__qualname__ = name
    return fail
