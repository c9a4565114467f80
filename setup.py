"""C extensions, all optional: the build goes on without them when no compiler is at hand.

Everything else about the package is in pyproject.toml. Each extension is an
accelerator with a pure-Python reference beside it (the POLC_ACCEL switch,
docs/runtime.md); ``optional=True`` makes a failed compile a warning, not an
install failure.
"""

from setuptools import Extension, setup

ext_modules = [
    Extension("polc.runtime.enforce._accel", ["runtime/enforce/_accel.c"], optional=True),
]

setup(ext_modules=ext_modules)
