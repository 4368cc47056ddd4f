"""``hyperplane lab impair``: delay, jitter, loss, duplication, reordering and a rate limit on
a running lab's links, in netem's words, and ``--list`` of what is active.

    hyperplane lab impair fn-b-0 --loss 1% --rate 100mbit      # both directions
    hyperplane lab impair server --direction ingress --delay 10ms --jitter 2ms
    hyperplane lab impair fn-b-0 --clear
    hyperplane lab impair --list [--json]
"""
from __future__ import annotations


from hyperplane.cli.common import add_json, named, print_json
from hyperplane.errors import EXIT_OK, EXIT_USAGE, HyperplaneError
from hyperplane.lab import impair
from hyperplane.labconfig.model import IMPAIRMENT_DIRECTIONS
from hyperplane.labconfig.parse_impairments import SETTINGS

_EXAMPLES = {"delay": "10ms", "jitter": "2ms (with --delay)", "loss": "1%%",
             "duplicate": "1%%", "reorder": "5%%", "rate": "100mbit"}


def cmd_lab_impair(args) -> int:
    if args.list:
        if args.link or args.clear or any(getattr(args, k) is not None for k in SETTINGS):
            raise HyperplaneError("--list shows the active impairments; it takes no LINK or "
                                  "settings", EXIT_USAGE)
        doc = impair.impairments(args.name)
    else:
        if not args.link:
            raise HyperplaneError("name a LINK (an environment like fn-a-0, a host like server, "
                                  "an ENI like eni0), or give --list", EXIT_USAGE)
        doc = impair.impair(args.name, args.link, args.direction, clear=args.clear,
                            **{k: getattr(args, k) for k in SETTINGS})
    if args.json:
        print_json(doc)
    else:
        print("\n".join(impair.lines(doc)) or f"lab {args.name}: no impairments"
              + (f" ({doc['backend']}: {doc['backend_note']})" if doc["backend"] else ""))
    return EXIT_OK


def register(labsub) -> None:
    q = named(labsub.add_parser(
        "impair", help="delay, loss, duplicate, reorder or rate-limit a link (netem's words); "
                       "--list shows what is active"))
    q.add_argument("link", nargs="?", metavar="LINK", help="the node whose link it is: an "
                   "environment (fn-a-0), a host (server), an internet host, an ENI (eni0 or "
                   "its id)")
    q.add_argument("--direction", default="both", choices=IMPAIRMENT_DIRECTIONS,
                   help="seen from the node: egress (what it sends), ingress (what reaches "
                        "it) or both (default)")
    for key in SETTINGS:
        q.add_argument(f"--{key}", metavar=key.upper(), help=f"e.g. {_EXAMPLES[key]}")
    q.add_argument("--clear", action="store_true", help="take the link's impairment off")
    q.add_argument("--list", action="store_true", help="the active impairments and the "
                   "mechanism this kernel gives (netem, or tbf+eBPF)")
    add_json(q, "machine-readable output")
    q.set_defaults(func=cmd_lab_impair)
