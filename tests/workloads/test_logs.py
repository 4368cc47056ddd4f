"""Function logs (hyperplane.workloads.logs): the CloudWatch-shaped lines an environment
writes, ``--log-type Tail``'s last 4 KB, and reading them back merged and followed."""
from __future__ import annotations

import re
import threading
import time

from hyperplane.workloads.logs import TAIL_BYTES, EnvLog, follow_events, read_events


def test_lines_carry_time_stream_and_message(tmp_path):
    log = EnvLog(str(tmp_path / "fn" / "fn-0.log"))
    log.write("START RequestId: r1 Version: $LATEST\nsecond line")
    log.close()
    lines = (tmp_path / "fn" / "fn-0.log").read_text().splitlines()
    assert len(lines) == 2
    ts, stream, msg = lines[0].split("\t", 2)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts)
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[\$LATEST\][0-9a-f]{32}", stream)
    assert msg == "START RequestId: r1 Version: $LATEST"


def test_a_new_stream_per_runtime(tmp_path):
    log = EnvLog(str(tmp_path / "fn" / "fn-0.log"))
    first = log.stream
    assert log.new_stream() != first
    log.write("x")
    log.close()
    assert read_events(str(tmp_path), "fn")[0]["stream"] != first


def test_tail_is_what_was_written_since_the_mark_at_most_4_kb(tmp_path):
    log = EnvLog(str(tmp_path / "fn" / "fn-0.log"))
    log.write("before")
    log.capture_begin()
    log.write("START")
    log.write("x" * 10000)
    log.write("REPORT RequestId: r1\tDuration: 1.00 ms")
    tail = log.capture_end()
    assert "before" not in tail and tail.endswith("REPORT RequestId: r1\tDuration: 1.00 ms\n")
    assert len(tail.encode()) <= TAIL_BYTES
    log.close()


def test_environments_are_merged_by_time_and_followed(tmp_path):
    a = EnvLog(str(tmp_path / "fn" / "fn-0.log"))
    b = EnvLog(str(tmp_path / "fn" / "fn-1.log"))
    for log, msg in ((a, "one"), (b, "two"), (a, "three")):
        log.write(msg)
        time.sleep(0.002)        # times have milliseconds: one event per millisecond here
    events = read_events(str(tmp_path), "fn")
    assert [e["message"] for e in events] == ["one", "two", "three"]
    assert [e["environment"] for e in events] == ["fn-0", "fn-1", "fn-0"]
    stop = threading.Event()
    got = []
    gen = follow_events(str(tmp_path), "fn", poll=0.05, stop=stop)

    def consume():
        for e in gen:
            got.append(e["message"])
            if len(got) == 2:
                stop.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    b.write("four")
    c = EnvLog(str(tmp_path / "fn" / "fn-2.log"))    # an environment's first cold start
    c.write("five")
    t.join(5)
    assert not t.is_alive() and got == ["four", "five"], got
    for log in (a, b, c):
        log.close()


def test_follow_from_the_start_yields_what_is_there_first(tmp_path):
    log = EnvLog(str(tmp_path / "fn" / "fn-0.log"))
    log.write("old")
    stop = threading.Event()
    gen = follow_events(str(tmp_path), "fn", poll=0.05, stop=stop, from_start=True)
    log.write("new")
    assert [next(gen)["message"], next(gen)["message"]] == ["old", "new"]
    stop.set()
    log.close()
