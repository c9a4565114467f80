"""Optional C extensions (pyproject.toml holds everything else).

Each is ``optional=True``: where it cannot be built (no compiler, no Python
headers) the install goes on and polc uses the pure-Python code it speeds up.
"""

from setuptools import Extension, setup

ext_modules = [
    # the guard's audit hook in C (runtime/guard/accel.py, docs/guard.md)
    Extension("polc.runtime.guard._hook", ["runtime/guard/_hook.c"], optional=True),
]

setup(ext_modules=ext_modules)
