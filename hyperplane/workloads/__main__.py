"""``python -m hyperplane.workloads --name LAB``: the workloads service of a lab that is up
(``lab up`` starts it; see hyperplane.workloads.service)."""
from __future__ import annotations

import argparse
import logging
import sys

from hyperplane import paths
from hyperplane.workloads.runtimes import EntrypointError
from hyperplane.workloads.service import WorkloadsService


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hyperplane.workloads",
                                 description="the functions' code and the hosts' services "
                                             "of a lab")
    ap.add_argument("--name", required=True, help="the lab's name")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        service = WorkloadsService(args.name)
    except (EntrypointError, OSError) as e:
        print(f"workloads of lab {args.name}: cannot install the functions' code: {e}",
              file=sys.stderr)
        return 1
    return service.run(paths.workloads_socket_path(args.name))


if __name__ == "__main__":
    sys.exit(main())
