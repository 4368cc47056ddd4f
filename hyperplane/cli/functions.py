"""``hyperplane function invoke|update-code|logs|environments``: running a lab's functions' code, as
``aws lambda invoke`` and ``aws logs tail /aws/lambda/FN`` do (hyperplane.lab.functions)."""
from __future__ import annotations

import base64
import binascii
import json
import sys

from hyperplane.cli import completers
from hyperplane.cli.common import add_json, named, print_json, table
from hyperplane.errors import EXIT_OK, EXIT_USAGE, HyperplaneError
from hyperplane.lab import functions as fns


def read_payload(arg, binary_format: str):
    """``--payload``: JSON text, ``file://PATH`` (text) or ``fileb://PATH`` (bytes), as the AWS
    CLI takes it; with ``--cli-binary-format base64`` the text is base64 (AWS CLI v2's
    default, which raw-in-base64-out turns off)."""
    if arg is None:
        return None
    for scheme, mode in (("fileb://", "rb"), ("file://", "r")):
        if arg.startswith(scheme):
            path = arg[len(scheme):]
            try:
                with open(path, mode) as f:
                    return f.read()
            except OSError as e:
                raise HyperplaneError(f"--payload {arg}: cannot read {path}: {e.strerror}",
                                      EXIT_USAGE) from None
    if binary_format == "base64":
        try:
            return base64.b64decode(arg, validate=True)
        except binascii.Error:
            raise HyperplaneError("--payload is not base64; with --cli-binary-format "
                                  "raw-in-base64-out (the default here) give the JSON itself",
                                  EXIT_USAGE) from None
    return arg


def cmd_function_invoke(args) -> int:
    payload = read_payload(args.payload, args.cli_binary_format)
    meta, body = fns.invoke(args.name, args.function, payload, args.log_type)
    if args.outfile == "-":
        sys.stdout.buffer.write(body + b"\n")
        sys.stdout.flush()
    else:
        try:
            with open(args.outfile, "wb") as f:
                f.write(body)
        except OSError as e:
            raise HyperplaneError(f"cannot write the response to {args.outfile}: "
                                  f"{e.strerror}", EXIT_USAGE) from None
    print(json.dumps(meta, indent=4), file=sys.stderr if args.outfile == "-" else sys.stdout)
    return EXIT_OK


def cmd_function_logs(args) -> int:
    show = (lambda e: print(json.dumps(e), flush=True)) if args.json else \
        (lambda e: print(fns.format_event(e), flush=True))
    if not args.follow:
        for e in fns.logs(args.name, args.function):
            show(e)
        return EXIT_OK
    try:
        for e in fns.follow_logs(args.name, args.function):
            show(e)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_function_update_code(args) -> int:
    print(json.dumps(fns.update_code(args.name, args.function, args.code), indent=4))
    return EXIT_OK


def cmd_function_environments(args) -> int:
    envs = fns.environments(args.name)
    if args.json:
        print_json(envs)
        return EXIT_OK
    rows = [["ENVIRONMENT", "FUNCTION", "STATE", "PID", "INVOCATIONS", "COLD STARTS",
             "LAST ERROR"]]
    for e in envs:
        rows.append([e["environment"], e["function"], e["state"], str(e["pid"] or "-"),
                     str(e["invocations"]), str(e["cold_starts"]), e["last_error"] or "-"])
    table(rows)
    return EXIT_OK


def register(fsub) -> None:
    """The code-running commands of the ``function`` group."""
    q = named(fsub.add_parser(
        "invoke", help="run the function's code (aws lambda invoke): writes the response to "
                       "OUTFILE and prints StatusCode/ExecutedVersion; fails while Pending or "
                       "Inactive (an Inactive function then starts Pending)"))
    q.add_argument("function", help="function name").completer = completers.functions
    q.add_argument("outfile", help="file for the response payload ('-': standard output, "
                                   "the metadata then goes to standard error)")
    q.add_argument("--payload", help="the event: JSON text, file://PATH or fileb://PATH "
                                     "(default {})")
    q.add_argument("--log-type", choices=("None", "Tail"), default="None",
                   help="Tail: add LogResult, the invocation's last 4 KB of log in base64")
    q.add_argument("--cli-binary-format", choices=("raw-in-base64-out", "base64"),
                   default="raw-in-base64-out",
                   help="how --payload text is read (as the AWS CLI; default: raw JSON)")
    add_json(q, "accepted everywhere for scripts: the metadata is JSON already")
    q.set_defaults(func=cmd_function_invoke)
    q = named(fsub.add_parser(
        "update-code", help="UpdateFunctionCode: deploy the code folder again (or --code "
                            "DIR); the next invocations start cold on it"))
    q.add_argument("function", help="function name").completer = completers.functions
    q.add_argument("--code", help="the folder to deploy (default: the function's `code` "
                                  "from the lab file, read again)")
    add_json(q, "accepted everywhere for scripts: the output is JSON already")
    q.set_defaults(func=cmd_function_update_code)
    q = named(fsub.add_parser("logs", help="the function's log (START/END/REPORT and what "
                                           "its code printed), like aws logs tail"))
    q.add_argument("function", help="function name").completer = completers.functions
    q.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    add_json(q, "one JSON object per event")
    q.set_defaults(func=cmd_function_logs)
    q = named(fsub.add_parser("environments", help="the execution environments: cold, warm "
                                                   "or busy, runtime pid, cold starts"))
    add_json(q, "machine-readable output")
    q.set_defaults(func=cmd_function_environments)
