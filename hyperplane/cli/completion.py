"""``hyperplane completion bash|zsh|fish``: the shell code that makes the shell complete
``hyperplane``'s commands, options and values (argcomplete: completion from the parser itself,
plus the dynamic completers of :mod:`hyperplane.cli.completers`). Enable it with

    eval "$(hyperplane completion bash)"             # ~/.bashrc
    eval "$(hyperplane completion zsh)"              # ~/.zshrc (after compinit)
    hyperplane completion fish | source              # ~/.config/fish/config.fish
"""
from __future__ import annotations

import argcomplete

from hyperplane.errors import EXIT_OK, PROG

#: The shells ``completion`` writes code for.
SHELLS = ("bash", "zsh", "fish")


def script(shell: str) -> str:
    """The completion code for ``shell`` (one of :data:`SHELLS`)."""
    return argcomplete.shellcode([PROG], shell=shell)


def cmd_completion(args) -> int:
    print(script(args.shell), end="")
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("completion", help="print the shell code that completes hyperplane's "
                                          "commands, options, labs, nodes and functions",
                       description="Enable it with `eval \"$(hyperplane completion bash)\"` "
                                   "(~/.bashrc), `eval \"$(hyperplane completion zsh)\"` "
                                   "(~/.zshrc, after compinit) or `hyperplane completion fish "
                                   "| source` (~/.config/fish/config.fish).")
    p.add_argument("shell", choices=SHELLS, help="the shell to write the code for")
    p.set_defaults(func=cmd_completion)
