"""``hyperplane man``: the manual page hyperplane(1),
written from the argparse parser itself in man(7) macros, so it lists every command,
subcommand and option the command line has. ``man/hyperplane.1`` is this output, committed
and installed to ``share/man/man1`` (a test keeps the two equal: after changing the parser,
``hyperplane man > man/hyperplane.1``).

Sections: NAME, SYNOPSIS, DESCRIPTION, COMMANDS (each command with its synopsis, description
and options, subcommands under their group), EXIT STATUS, ENVIRONMENT, FILES, SEE ALSO. The
page carries the version but no date, so the same parser always gives the same page.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Iterator, List, Tuple

from hyperplane import engine, paths, proc
from hyperplane.cli.common import EXIT_STATUSES
from hyperplane.errors import EXIT_FAIL, EXIT_OK, HyperplaneError
from hyperplane.version import __version__

ENVIRONMENT = (
    ("HYPERPLANE_RUN_DIR", f"where labs keep their state (default {paths.DEFAULT_RUN_DIR})."),
    (engine.ENGINE_ENV, "reference: the pure-Python reference engine (for walk; the data path "
                        "needs the compiled one); compiled: the compiled engine or an error."),
    (proc.LOG_LEVEL_ENV, "debug, info, warning or error: what --log-level sets (this "
                         "command's logging, and the data path's and workloads service's that "
                         "lab up and lab restart start)."),
    ("HYPERPLANE_LAMBDA_INIT_TIMEOUT", "seconds a function's runtime has to ask for its first "
                                       "event (default 10), in the environment of lab up."),
    ("HYPERPLANE_TAP_IO", "how the data path that lab up starts moves a TAP environment's "
                          "packets: io_uring (the default, where the kernel allows it) or rw "
                          "(one read/writev per packet); hyperplane stats shows each link's."),
)

FILES = (
    (f"{paths.DEFAULT_RUN_DIR}/NAME/", "a lab's directory: state.json (its plan), the config, "
                                       "datapath.log, control.sock, conntrack.state (the "
                                       "connections lab restart keeps), workloads.sock, "
                                       "workloads.log, functions/FN/ENV.log, hosts/HOST.log, "
                                       "flowlogs/ENI.log."),
)

SEE_ALSO = ("ip-netns(8)", "conntrack(8)", "tcpdump(8)", "dot(1)")


def _roff(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, a leading ``.``/``'`` made
    literal, whitespace (line breaks of the help texts) folded."""
    return _roff_line(" ".join(text.split()))


def _roff_line(line: str) -> str:
    """One line kept as it is (in a ``.nf`` block), escaped like :func:`_roff`."""
    t = line.rstrip().replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + t if t[:1] in (".", "'") else t


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _usage(action: argparse.Action) -> str:
    """One argument as a synopsis shows it: ``[--name NAME]``, ``CONFIG``, ``[config]``."""
    if action.option_strings:
        opt = next((o for o in action.option_strings if o.startswith("--")),
                   action.option_strings[0])
        word = f"{opt} {_metavar(action)}" if _takes_value(action) else opt
        return word if action.required else f"[{word}]"
    mv = _metavar(action)
    if action.nargs == "?":
        return f"[{mv}]"
    if action.nargs in ("*", argparse.REMAINDER):
        return f"[{mv}...]"
    if action.nargs == "+":
        return f"{mv}..."
    return mv


def _arguments(parser: argparse.ArgumentParser) -> List[argparse.Action]:
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
            and a.help != argparse.SUPPRESS]


def _subcommands(parser: argparse.ArgumentParser
                 ) -> Iterator[Tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in the order ``--help`` lists them."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for choice in a._choices_actions:
                yield choice.dest, choice.help or "", a.choices[choice.dest]


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action) if action.help else ""


def _command(path: str, summary: str, parser: argparse.ArgumentParser, out: List[str]) -> None:
    subs = list(_subcommands(parser))
    args = _arguments(parser)
    # as argparse's usage: options first, then the positional arguments
    args.sort(key=lambda a: not a.option_strings)
    synopsis = " ".join([path] + [_usage(a) for a in args]
                        + ([f"{'_'.join(path.split()[1:]).upper()}_COMMAND"] if subs else []))
    out += [".SS", _roff(synopsis)]
    if summary:
        out.append(_roff(summary[:1].upper() + summary[1:] + ("" if summary.endswith(".")
                                                                  else ".")))
    raw = issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter)
    for para in (parser.description or "").split("\n\n"):
        if para.strip() and raw:           # laid out by hand: kept line by line
            out += [".PP", ".nf"] + [_roff_line(x) for x in para.strip("\n").splitlines()] \
                + [".fi"]
        elif para.strip():
            out += [".PP", _roff(para)]
    for a in args:
        names = ", ".join(f"\\fB{_roff(o)}\\fR" for o in a.option_strings)
        if not a.option_strings:
            names = f"\\fI{_roff(_metavar(a))}\\fR"
        elif _takes_value(a):
            names += f" \\fI{_roff(_metavar(a))}\\fR"
        out += [".TP", names, _roff(_help(parser, a)) or "(no description)"]
    for name, helptext, sub in subs:
        _command(f"{path} {name}", helptext, sub, out)


def manpage(parser: argparse.ArgumentParser) -> str:
    """hyperplane(1) in man(7) macros, from ``parser`` (the command line's:
    ``hyperplane.cli.build_parser()``)."""
    name = parser.prog
    summary = (parser.description or "").split(": ", 1)[-1]      # after "hyperplane: "
    out = [f'.TH {name.upper()} 1 "" "{name} {__version__}" "User Commands"',
           ".SH NAME", f"{name} \\- {_roff(summary.rstrip('.'))}",
           ".SH SYNOPSIS", f".B {name}", "\\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGS\\fR]", ".br",
           f".B {name}", "[\\fB\\-\\-version\\fR | \\fB\\-\\-help\\fR]",
           ".SH DESCRIPTION", _roff(f"{name} is {summary}"),
           ".PP", _roff(f"Labs are built in network namespaces and need root (CAP_NET_ADMIN); "
                        f"`{name} walk` needs neither. Every command takes --help. Several "
                        "labs run side by side under different names (--name, default "
                        "default)."),
           ".SH COMMANDS"]
    for cmd, helptext, sub in _subcommands(parser):
        _command(f"{name} {cmd}", helptext, sub, out)
    out.append(".SH \"EXIT STATUS\"")
    for code, what in EXIT_STATUSES:
        out += [".TP", f".B {code}", _roff(what[:1].upper() + what[1:] + ".")]
    out += [".PP", _roff(f"{name} lab exec returns the command's own status (127 when it is "
                         "not found).")]
    out.append(".SH ENVIRONMENT")
    for var, what in ENVIRONMENT:
        out += [".TP", f".B {_roff(var)}", _roff(what)]
    out.append(".SH FILES")
    for path, what in FILES:
        out += [".TP", f".I {_roff(path)}", _roff(what)]
    out += [".SH \"SEE ALSO\"", ",\n".join(f".BR {p.replace('(', ' (')}" for p in SEE_ALSO),
            ".PP", _roff("README.md and docs/ in the source distribution.")]
    return "\n".join(out) + "\n"


def register(sub, build_parser: Callable[[], argparse.ArgumentParser]) -> None:
    """Add ``man``, which prints the page of the parser ``build_parser`` makes (passed in, as
    this module cannot import the package that imports it)."""
    def cmd_man(args) -> int:
        page = manpage(build_parser())
        if args.install is None:
            sys.stdout.write(page)
            return EXIT_OK
        path = install(page, args.install or sys.prefix)
        print(f"installed {path}; read it with `man hyperplane` (or `man -l {path}` when "
              f"{os.path.dirname(os.path.dirname(path))} is not on your manpath)")
        return EXIT_OK

    p = sub.add_parser("man", help="print the manual page hyperplane(1) in man(7) format "
                                   "(read it with `hyperplane man | man -l -`)")
    p.add_argument("--install", nargs="?", const="", metavar="PREFIX",
                   help="write it to PREFIX/share/man/man1/hyperplane.1 instead (default "
                        "PREFIX: this Python's prefix, where `pip install .` puts it; an "
                        "editable install `pip install -e .` does not install it)")
    p.set_defaults(func=cmd_man)


def install(page: str, prefix: str) -> str:
    """Write ``page`` as ``PREFIX/share/man/man1/hyperplane.1`` (the folders made as needed);
    returns its path. An unwritable prefix is a HyperplaneError naming it."""
    folder = os.path.join(prefix, "share", "man", "man1")
    path = os.path.join(folder, "hyperplane.1")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as e:
        raise HyperplaneError(f"man --install {prefix}: cannot write {path}: "
                              f"{e.strerror or e}; give a PREFIX you can write to", EXIT_FAIL) \
            from None
    return path

