"""polc guard's boot module: ``polc guard`` puts this directory first on PYTHONPATH, so
every Python interpreter it starts (and their Python children) installs the guard
before the program's own imports. Not a module to import yourself.
"""

import os
import sys

try:
    from polc.runtime.guard.launch import boot
except BaseException as exc:  # fail closed: a program polc guard starts never runs unguarded
    sys.stderr.write(
        f"polc guard: error: cannot load the guard in {sys.executable} ({type(exc).__name__}: {exc}); "
        "run the program with an interpreter that has polc installed\n"
    )
    sys.stderr.flush()
    os._exit(2)
boot(os.path.dirname(os.path.abspath(__file__)))
