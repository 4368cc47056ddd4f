"""``hyperplane eni list``, ``function list|update`` and ``clock``: the lab's VPC control
plane, through its data path (``function invoke|logs|environments`` are in cli.functions)."""
from __future__ import annotations


from hyperplane.cli import completers, functions
from hyperplane.cli.common import (add_json, command_group, fill, ids, named, parse_duration,
                                   print_json, table)
from hyperplane.errors import EXIT_OK, EXIT_USAGE, HyperplaneError
from hyperplane.lab.api import Lab


def cmd_eni_list(args) -> int:
    enis = Lab.attach(args.name).enis()
    if args.json:
        print_json(enis)
        return EXIT_OK
    rows = [["ENI", "STATE", "SUBNET", "SECURITY GROUPS", "ADDRESSES", "FUNCTIONS", "PORTS USED"]]
    for e in enis:
        rows.append([e["id"], e["state"], e["subnet"], ",".join(e["security_groups"]),
                     " ".join(a for a in (e.get("ipv4"), e.get("ipv6")) if a),
                     ",".join(e.get("functions", [])) or "-", fill(e.get("pools", {}))])
    table(rows)
    return EXIT_OK


def cmd_function_list(args) -> int:
    fns = Lab.attach(args.name).functions()
    if args.json:
        print_json(fns)
        return EXIT_OK
    rows = [["FUNCTION", "STATE", "LAST UPDATE", "SUBNETS", "SECURITY GROUPS", "IPV6", "ENIS"]]
    for f in fns:
        rows.append([f["name"], f["state"] + (f" ({f['state_reason_code']})"
                                              if f.get("state_reason_code") else ""),
                     f.get("last_update_status", "-"), ",".join(f["subnet_ids"]) or "(no VPC)",
                     ",".join(f["security_group_ids"]) or "-",
                     "yes" if f.get("ipv6_allowed") else "no", ",".join(f.get("enis", [])) or "-"])
    table(rows)
    return EXIT_OK


def _show(f) -> None:
    print(f"{f['name']}: State={f['state']} LastUpdateStatus={f.get('last_update_status')}")


def cmd_function_update(args) -> int:
    if args.no_vpc and (args.subnets or args.security_groups):
        raise HyperplaneError("--no-vpc removes the VPC config; do not combine it with "
                              "--subnets or --security-groups", EXIT_USAGE)
    subnets = [] if args.no_vpc else ids(args.subnets)
    sgs = [] if args.no_vpc else ids(args.security_groups)
    if subnets is None and sgs is None and args.ipv6 is None:
        raise HyperplaneError("nothing to update: give --subnets, --security-groups, "
                              "--ipv6-dual-stack/--no-ipv6-dual-stack or --no-vpc", EXIT_USAGE)
    lab = Lab.attach(args.name)
    updated = lab.update_function(args.function, subnet_ids=subnets, security_group_ids=sgs,
                                  ipv6=args.ipv6)
    if not args.json:
        _show(updated)
    waited = lab.wait_function(args.function) if args.wait else None
    if args.json:   # the function as the update left it, and (--wait) once it has completed
        print_json({"updated": updated, "waited": waited})
    elif waited is not None:
        _show(waited)
    return EXIT_OK


def cmd_clock(args) -> int:
    seconds = parse_duration(args.advance) if args.advance else 0.0
    r = Lab.attach(args.name).advance_clock(seconds)
    if args.json:
        print_json({"now": r["now"], "offset": r["offset"]})
        return EXIT_OK
    print(f"lab clock: {r['now']:.1f} s (ahead of the machine's clock by {r['offset']:.1f} s)")
    return EXIT_OK


def register(sub) -> None:
    esub = command_group(sub, "eni", "the lab's Hyperplane ENIs (running lab)")
    q = named(esub.add_parser("list", help="ENIs with state, key, addresses, users, port use"))
    add_json(q, "machine-readable output")
    q.set_defaults(func=cmd_eni_list)

    fsub = command_group(sub, "function", "the lab's Lambda functions (running lab)")
    q = named(fsub.add_parser("list", help="functions with state and VPC config"))
    add_json(q, "machine-readable output")
    q.set_defaults(func=cmd_function_list)
    q = named(fsub.add_parser(
        "update", help="UpdateFunctionConfiguration(VpcConfig=...): the old ENI keeps "
                       "carrying traffic until the new one is available"))
    q.add_argument("function", help="function name").completer = completers.functions
    q.add_argument("--subnets", help="comma-separated subnet ids (SubnetIds)")
    q.add_argument("--security-groups", help="comma-separated security group ids")
    v6 = q.add_mutually_exclusive_group()
    v6.add_argument("--ipv6-dual-stack", dest="ipv6", action="store_true", default=None,
                    help="Ipv6AllowedForDualStack=true (every subnet must be dual-stack)")
    v6.add_argument("--no-ipv6-dual-stack", dest="ipv6", action="store_false",
                    help="Ipv6AllowedForDualStack=false")
    q.add_argument("--no-vpc", action="store_true", help="remove the VPC config (its ENIs are "
                   "deleted after the delete delay if no other function uses them)")
    q.add_argument("--wait", action="store_true", help="wait until the update has completed")
    add_json(q, "{updated: the function after the update, waited: after --wait or null}")
    q.set_defaults(func=cmd_function_update)
    functions.register(fsub)

    q = named(sub.add_parser("clock", help="show the lab clock, or move it forward "
                                           "(lifecycle timers and connection timeouts)"))
    q.add_argument("--advance", metavar="DURATION", help="e.g. 90, 20m, 30d")
    add_json(q, "{now: the lab clock, offset: seconds ahead of the machine's clock}")
    q.set_defaults(func=cmd_clock)
