"""Prints whether this interpreter runs under the guard (for `python -m whoami` and console scripts)."""

from polc.runtime.guard import current

guard = current()
print("guarded" if guard is not None else "unguarded", guard.mode if guard is not None else "-")
