"""polc: compiled capability policies with atomic hot reload.

Importing ``polc`` is cheap: the runtime (``polc.runtime``) needs msgpack
alone, and the compiler (``polc.compiler``, which needs lark) and the command
line (``polc.cli``, which needs click) are only imported when used.
"""

__version__ = "0.1.0"
