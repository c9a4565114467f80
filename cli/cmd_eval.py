"""``polc eval POLICY_DIR MODULE CAPABILITY [ARG...]``: one decision, as the agent would make it.

Loads the directory exactly like :class:`polc.runtime.PolicyAgent` does (bad
artifacts are reported on stderr and their modules fall back to ``_global``),
types each ARG by the capability's signature (``port``/``int`` parameters as
integers), and prints the decision with the rule that decided it. With
``--explain`` it first lists every rule that could decide the request, in
evaluation order, matched or not and why (polc.runtime.enforce.explain).

Exit status: 0 allowed (including an audited "would deny"), 1 denied,
2 usage or I/O error. Imports click and the runtime only — never lark.
"""

from __future__ import annotations

import json
import os
import re
import sys

import click

from polc.errors import EXIT_DENIED, EXIT_OK, UsageOrIOError, failure
from polc.options import format_option
from polc.runtime import Decision, PolicyAgent
from polc.runtime.catalog import BUILTINS, GLOBAL_MODULE, INT, PORT, Capability


def _signature(agent: PolicyAgent, module: str, capability: str) -> Capability | None:
    snap = agent.snapshot
    mod = snap.modules.get(module) if module != GLOBAL_MODULE else None
    for linked in (mod, snap.glob):
        if linked is not None and capability in linked.caps:
            found: Capability = linked.caps[capability]
            return found
    return BUILTINS.get(capability)


def _typed(sig: Capability | None, args: tuple[str, ...]) -> tuple[object, ...]:
    """Arguments typed by the signature; a value that does not parse stays a string (and is denied)."""
    if sig is None:
        return args
    out: list[object] = []
    for i, raw in enumerate(args):
        if i < sig.arity and sig.params[i].type in (PORT, INT):
            try:
                out.append(int(raw, 10))
                continue
            except ValueError:
                pass
        out.append(raw)
    return tuple(out)


def _call(capability: str, args: tuple[object, ...]) -> str:
    return f"{capability}({', '.join(json.dumps(a) for a in args)})"


_PREFIX = "polc eval: "
_NEGATIVE_NUMBER = re.compile(r"-[0-9]")


class _EvalCommand(click.Command):
    """Options may follow the arguments; an unknown one is an error, never an argument.

    Only a negative number (``-5``) passes as an argument without ``--``; after
    ``--`` everything is an argument (``polc eval DIR m cap -- -v``).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value: dict[str, bool] = {}
        for param in self.get_params(ctx):
            if isinstance(param, click.Option):
                for opt in (*param.opts, *param.secondary_opts):
                    takes_value[opt] = not (param.is_flag or param.count)
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                break
            if arg.startswith("--"):
                name = arg.split("=", 1)[0]
                if name not in takes_value:
                    self._no_such_option(ctx, name, arg)
                if takes_value[name] and "=" not in arg:
                    i += 1
            elif arg.startswith("-") and len(arg) > 1 and not _NEGATIVE_NUMBER.match(arg):
                for k, ch in enumerate(arg[1:], start=1):
                    opt = "-" + ch
                    if opt not in takes_value:
                        self._no_such_option(ctx, opt, arg)
                    if takes_value[opt]:
                        i += k == len(arg) - 1  # the value is the next argument
                        break
        return super().parse_args(ctx, args)

    @staticmethod
    def _no_such_option(ctx: click.Context, opt: str, arg: str) -> None:
        raise click.UsageError(
            f"no such option: {opt} (an argument that starts with '-' goes after '--': "
            f"polc eval POLICY_DIR MODULE CAPABILITY -- {arg})",
            ctx,
        )


@click.command(
    "eval",
    cls=_EvalCommand,
    # negative numbers ("-5") reach the arguments; _EvalCommand rejects every other unknown option
    context_settings={"ignore_unknown_options": True},
)
@click.argument("policy_dir", metavar="POLICY_DIR")
@click.argument("module")
@click.argument("capability")
@click.argument("args", nargs=-1, metavar="[ARG]...")
@click.option("--explain", is_flag=True,
              help="List every rule that could decide the request, in evaluation order, matched or not and why.")
@format_option()
def eval_cmd(policy_dir: str, module: str, capability: str, args: tuple[str, ...], explain: bool, fmt: str) -> None:
    """Decide MODULE's use of CAPABILITY(ARG...) with the artifacts in POLICY_DIR.

    \b
    Examples:
      polc eval policies tenant.acme network.outbound api.acme.com 443
      polc eval policies tenant.acme fs.read tenants/acme a/b.txt --format json
      polc eval policies tenant.acme process.exec -- -rf   # an argument starting with '-'
      polc eval policies tenant.acme network.outbound 169.254.169.254 80 --explain

    Exit status: 0 allowed, 1 denied, 2 error.
    """
    if not os.path.isdir(policy_dir):
        what = "not a directory" if os.path.exists(policy_dir) else "no such directory"
        raise UsageOrIOError(f"{policy_dir}: {what}", prefix=_PREFIX)
    try:
        agent = PolicyAgent(policy_dir, reload=False).start()
    except ValueError as exc:
        raise failure(exc, prefix=_PREFIX) from None
    status = agent.status()
    for info in status["modules"].values():
        if info["last_error"]:
            note = "falls back to _global only" if info["revision"] is None else "previous policy kept"
            click.echo(f"polc eval: warning: {info['file']}: {info['last_error']} ({note})", err=True)
    if status["unavailable"]:
        click.echo(f"polc eval: warning: {status['unavailable']}", err=True)

    typed = _typed(_signature(agent, module, capability), args)
    d = _explain(agent, module, capability, typed, fmt) if explain else agent.check(module, capability, *typed)
    if fmt == "json":
        if not explain:
            out = d.to_dict()
            out["request"] = {"module": module, "capability": capability, "args": list(typed)}
            click.echo(json.dumps(out, indent=2))
    else:
        verdict = "allow" if not d.audit and d.allowed else ("allow (audit: would deny)" if d.audit else "deny")
        click.echo(f"{verdict}: {module} {_call(capability, typed)}")
        click.echo(f"  reason:   {d.reason}")
        click.echo(f"  rule:     {d.rule or '-'}")
        click.echo(f"  revision: {d.revision or '-'}")
    sys.exit(EXIT_OK if d.allowed else EXIT_DENIED)


def _explain(agent: PolicyAgent, module: str, capability: str, typed: tuple[object, ...], fmt: str) -> Decision:
    """Print the explanation (text, or the whole JSON document); return the enforcer's decision."""
    from polc.loaded import programs_of
    from polc.runtime.enforce.explain import explain
    from polc.runtime.format.disasm import printable

    programs = programs_of(agent, (module, GLOBAL_MODULE), prefix=_PREFIX)
    ex = explain(programs, agent.snapshot, module, capability, *typed)
    for w in ex.warnings:
        click.echo(f"polc eval: warning: {w}", err=True)
    if not ex.agrees:  # a bug: say so rather than show an explanation of another decision
        click.echo(f"polc eval: error: the explanation finds {ex.expected_rule or 'no rule'} deciding, the enforcer "
                   f"{ex.decision.rule or 'no rule'}; trust the decision below", err=True)
    if fmt == "json":
        out = ex.decision.to_dict()
        out["request"] = {"module": module, "capability": capability, "args": list(typed)}
        out["explain"] = ex.as_dict()
        click.echo(json.dumps(out, indent=2))
        return ex.decision
    click.echo(f"explain: {module} {_call(capability, typed)}")
    click.echo(f"  signature: {ex.signature or '-'}")
    if ex.refused is not None:
        click.echo(f"  refused before any rule: {ex.refused}")
    elif not ex.rules:
        click.echo(f"  no rule of {GLOBAL_MODULE} or {module} names {capability}")
    for n, r in enumerate(ex.rules, 1):
        click.echo(printable(f"  {n}. {r.location}  [{r.tier}]  {r.text}"))
        if r.matched:
            click.echo("       matched" + (": decides" if r.decides else " (an earlier rule decides)"))
        else:
            click.echo(printable(f"       not matched: {r.why}"))
    if ex.refused is None and ex.expected_rule is None:
        click.echo("  no rule matched: no entitlement")
    return ex.decision
