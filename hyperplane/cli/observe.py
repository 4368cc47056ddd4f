"""``hyperplane stats``, ``metrics`` and ``top``: a running lab's counters, summed up
(hyperplane.observe.stats), served to Prometheus, or watched live (hyperplane.observe.top);
``metrics --grafana / --prometheus-config / --alerts`` print what Prometheus and Grafana need
to watch them (hyperplane.observe.dashboards)."""
from __future__ import annotations

import functools
import signal
import sys
import threading
import time

from hyperplane.cli.common import add_json, isatty, named, print_json, print_json_line
from hyperplane.errors import EXIT_FAIL, EXIT_OK, EXIT_USAGE, PROG, HyperplaneError
from hyperplane.lab import lifecycle
from hyperplane.lab.api import Lab
from hyperplane.lab.status import metrics_target, running_metrics_url
from hyperplane.observe import dashboards, exporter, stats, top


def cmd_stats(args) -> int:
    s = Lab.attach(args.name).stats()
    if args.json:
        print_json(s)
    elif isatty(sys.stdout):
        from rich.console import Console

        Console().print(stats.render_rich(stats.sections(s), stats.stats_head(s)))
    else:
        sys.stdout.write(stats.render_plain(stats.sections(s), stats.stats_head(s)))
    return EXIT_OK


def _listen(text: str):
    try:
        return stats.parse_listen(text)
    except ValueError as e:
        raise HyperplaneError(str(e), EXIT_USAGE) from None


def scrape_address(name: str, listen=None) -> str:
    """``HOST:PORT`` Prometheus should scrape: ``listen`` (``--listen``) when given, else
    where lab ``name``'s exporter serves (lab.status.metrics_target)."""
    if listen is None:
        return metrics_target(name)
    host, port = _listen(listen)
    if port == 0:
        raise HyperplaneError(f"--listen {listen}: port 0 is not an address Prometheus can "
                              "scrape; give the port the exporter really listens on",
                              EXIT_USAGE)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cmd_metrics(args) -> int:
    if args.grafana:
        sys.stdout.write(dashboards.to_json(dashboards.grafana_dashboard()))
        return EXIT_OK
    if args.alerts:
        sys.stdout.write(dashboards.to_yaml(dashboards.alert_rules(), dashboards.ALERTS_HEADER))
        return EXIT_OK
    if args.prometheus_config:
        address = scrape_address(args.name, args.listen)
        sys.stdout.write(dashboards.to_yaml(dashboards.scrape_config(address, args.name),
                                            dashboards.SCRAPE_HEADER))
        return EXIT_OK
    args.listen = stats.DEFAULT_LISTEN if args.listen is None else args.listen
    host, port = _listen(args.listen)
    lifecycle.load_lab(args.name)   # a lab that does not exist at all is a usage mistake: say so

    registry, collector = stats.registry_for(
        functools.partial(lifecycle.request, args.name, "counters"), args.name)
    if args.once:
        from prometheus_client import generate_latest

        sys.stdout.write(generate_latest(registry).decode())
        err = collector.last_error
        if err:   # still printed hyperplane_up 0 (what a scrape would see); say why, fail
            print(f"{PROG}: error: no counters from lab {args.name!r}: {err}", file=sys.stderr)
            return EXIT_FAIL
        return EXIT_OK
    try:
        srv = stats.serve(registry, host, port)
    except OSError as e:
        url = running_metrics_url(lifecycle.load_lab(args.name)[0])
        served = (f"; lab {args.name} already serves its metrics at {url} ([metrics] in its "
                  "lab file)" if url else "")
        raise HyperplaneError(f"--listen {args.listen}: cannot listen: {e.strerror or e}"
                              + served) from None
    print(f"serving Prometheus metrics of lab {args.name} on "
          f"{exporter.url_of(host, srv.server_address[1])} (Ctrl-C to stop)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(3600):
            pass
    finally:
        srv.shutdown()
        srv.server_close()
    return EXIT_OK


def cmd_top(args) -> int:
    if not args.interval > 0 or args.interval > 3600:
        raise HyperplaneError(f"--interval {args.interval:g}: give seconds between refreshes, "
                              "more than 0 and at most 3600 (e.g. --interval 0.5)", EXIT_USAGE)
    if args.iterations is not None and args.iterations < 1:
        raise HyperplaneError(f"--iterations {args.iterations}: give at least 1 (or leave it "
                              "out to run until Ctrl-C)", EXIT_USAGE)

    request = functools.partial(lifecycle.request, args.name)
    tty = isatty(sys.stdout) and not args.json
    prev = top.snapshot(request, args.name)
    frame = 0
    live = None
    try:
        if tty:
            from rich.live import Live

            live = Live(auto_refresh=False, screen=False, redirect_stdout=False)
            live.start()
        while args.iterations is None or frame < args.iterations:
            time.sleep(args.interval)
            cur = top.snapshot(request, args.name)
            frame += 1
            head = top.frame_head(args.name, cur, args.interval, frame)
            if args.json:
                print_json_line(top.frame_json(args.name, prev, cur, args.interval, frame,
                                               by=args.sort))
                prev = cur
                continue
            secs = top.frame_sections(prev, cur, by=args.sort)
            if live is not None:
                live.update(stats.render_rich(secs, head), refresh=True)
            else:
                sys.stdout.write(stats.render_plain(secs, "---- " + head))
                sys.stdout.write("\n")
                sys.stdout.flush()
            prev = cur
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
    return EXIT_OK


def register(sub) -> None:
    q = named(sub.add_parser("stats", help="packets and bytes per direction and ENI, drops by "
                                           "reason, table and port-pool fill (running lab)"))
    add_json(q, "one JSON document (schema in `pydoc hyperplane.observe.stats`)")
    q.set_defaults(func=cmd_stats)
    q = named(sub.add_parser(
        "metrics", help="serve the lab's counters as Prometheus metrics on a loopback port",
        description="Serve the lab's counters in the Prometheus text format at /metrics. Each "
                    "scrape asks the data path for fresh counters; hyperplane_up is 0 when it "
                    "does not answer. Only this lab's metrics are served (no process_* "
                    "metrics of the exporter itself)."))
    q.add_argument("--listen", default=None, metavar="ADDR:PORT",
                   help=f"loopback address and port (default {stats.DEFAULT_LISTEN}; port 0 "
                        "picks a free one); with --prometheus-config: the address to scrape")
    what = q.add_mutually_exclusive_group()
    what.add_argument("--once", action="store_true",
                      help="print one exposition to stdout and exit")
    what.add_argument("--grafana", action="store_true",
                      help="print a Grafana dashboard (JSON) of these metrics and exit")
    what.add_argument("--prometheus-config", action="store_true",
                      help="print a Prometheus scrape config (YAML) for the lab's exporter "
                           "([metrics] listen of --name, or --listen) and exit")
    what.add_argument("--alerts", action="store_true",
                      help="print Prometheus alert rules (YAML) and exit")
    q.set_defaults(func=cmd_metrics)
    q = named(sub.add_parser("top", help="a live view of rates, drops, pool fill and the top "
                                         "flows of a running lab"))
    q.add_argument("--interval", type=float, default=top.DEFAULT_INTERVAL, metavar="S",
                   help=f"seconds between refreshes (default {top.DEFAULT_INTERVAL:g})")
    q.add_argument("--iterations", type=int, default=None, metavar="N",
                   help="stop after N refreshes (default: until Ctrl-C)")
    q.add_argument("--sort", choices=("bytes", "packets"), default="bytes",
                   help="order the top flows by bytes or packets moved since the last refresh")
    add_json(q, "one JSON object per refresh (JSON Lines): totals, rates, drops, "
                        "tables, pools, top flows")
    q.set_defaults(func=cmd_top)
