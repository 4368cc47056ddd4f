"""``python -m hyperplane.workloads --name LAB``: the workloads service of a lab that is up
(``lab up`` starts it; see hyperplane.workloads.service)."""
from __future__ import annotations

import argparse
import sys

from hyperplane import paths, proc
from hyperplane.workloads.runtimes import EntrypointError
from hyperplane.workloads.service import WorkloadsService


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hyperplane.workloads",
                                 description="the functions' code and the hosts' services "
                                             "of a lab")
    ap.add_argument("--name", required=True, help="the lab's name")
    args = ap.parse_args(argv)
    proc.configure_logging()   # HYPERPLANE_LOG_LEVEL, which lab up/restart pass on
    try:
        service = WorkloadsService(args.name)
    except (EntrypointError, OSError) as e:
        print(f"workloads of lab {args.name}: cannot install the functions' code: {e}",
              file=sys.stderr)
        return 1
    return service.run(paths.workloads_socket_path(args.name))


if __name__ == "__main__":
    sys.exit(main())
