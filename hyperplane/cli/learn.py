"""``hyperplane demo``, ``walk`` and ``engine``: the guided tours and which engine is in use."""
from __future__ import annotations

from hyperplane import engine
from hyperplane.cli.common import add_json, print_json
from hyperplane.errors import EXIT_OK
from hyperplane.learn import demo, walk


def cmd_demo(args) -> int:
    return demo.run(name=args.name, keep=args.keep)


def cmd_walk(args) -> int:
    return walk.run_walk()


def cmd_engine(args) -> int:
    if args.json:
        print_json({"engine": engine.ENGINE, "why": engine.engine_reason(),
                    "fallback_reason": engine.ENGINE_FALLBACK_REASON})
        return EXIT_OK
    print(f"engine: {engine.ENGINE}")
    print(f"why: {engine.engine_reason()}")
    return EXIT_OK


def register_demo(sub) -> None:
    p = sub.add_parser("demo", help="bring up the default lab, send TCP and UDP over IPv4 and "
                                    "IPv6 through the data path, show the table, counters and "
                                    "an unsolicited packet dropped, tear down (root)")
    p.add_argument("--name", default=None, help="lab name (default: demo-XXXX, unique)")
    p.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    p.set_defaults(func=cmd_demo)


def register(sub) -> None:
    p = sub.add_parser("walk", help="walk packets through the engine in memory (no root)",
                       description=walk.WALK_HELP)
    p.set_defaults(func=cmd_walk)
    p = sub.add_parser("engine", help="print which engine is in use, and why")
    add_json(p, "{engine, why, fallback_reason (null unless it fell back)}")
    p.set_defaults(func=cmd_engine)
