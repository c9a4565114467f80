"""C extensions, all optional: the build goes on without them when no compiler is at hand.

Everything else about the package is in pyproject.toml. Each extension is an
accelerator with a pure-Python reference beside it, and a switch that forces
the pure path (POLC_ACCEL for check(), docs/runtime.md; POLC_GUARD_ACCEL for
the guard's audit hook, docs/guard.md); ``optional=True`` makes a failed
compile a warning, not an install failure.
"""

from setuptools import Extension, setup

ext_modules = [
    # check()'s fused deciders and dispatch (runtime/enforce/accel.py)
    Extension("polc.runtime.enforce._accel", ["runtime/enforce/_accel.c"], optional=True),
    # the guard's audit hook (runtime/guard/accel.py)
    Extension("polc.runtime.guard._hook", ["runtime/guard/_hook.c"], optional=True),
]

setup(ext_modules=ext_modules)
