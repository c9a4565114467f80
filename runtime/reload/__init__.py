"""Hot reload of a policy directory: the poller and what it needs.

* :mod:`.filestate` — what is recorded of each file (stat key, racy window);
* :mod:`.outcomes` — what examining one file found, as dataclasses;
* :mod:`.poller` — the :class:`~.poller.Poller`: the reloader's state and one step;
* :mod:`.delivery` — events delivered in commit order, one thread at a time;
* :mod:`.switch` — the lowered switch interval while a step runs;
* :mod:`.fork` — a child of ``os.fork()`` gets its own locks and poller.

The agent (runtime/agent.py) owns the step lock and the poller thread and
delegates each step here.
"""
