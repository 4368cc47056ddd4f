"""Per-worker figures in `hyperplane stats` and `hyperplane top` (issue 19), from hand-made
``counters`` replies (tests/observe/test_stats.py's) with a ``workers`` list: shown only with
more than one worker, passed through unchanged in ``stats --json``, rates between two
snapshots in ``top``. The lab test with two real workers is test_workers_lab.py."""
from __future__ import annotations

import copy
import json

from hyperplane.observe import stats, top, workers
from test_stats import ENI_A, ENI_B, _entry, counters


def _worker(w, scale=1, cpu=None, used=(0, 0)):
    return {"worker": w, "cpu": cpu, "rx_packets": 100 * scale + w,
            "forwarded_outbound": 60 * scale, "forwarded_inbound": 40 * scale,
            "handoff_out": (30 if w == 0 else 2) * scale, "handoff_in": (2 if w == 0 else 30)
            * scale, "handoff_full": w, "spilled": 3 * w, "connections": 10 + w,
            "translated_outbound": 55 * scale, "translated_inbound": 38 * scale,
            "engine_drops": 4 + w,
            "pools": [{"eni": ENI_A, "family": 4, "proto": "tcp", "used": used[0],
                       "size": 32500},
                      {"eni": ENI_A, "family": 4, "proto": "udp", "used": used[1],
                       "size": 32500}]}


def with_workers(n, now=100.0, scale=1):
    c = counters(now=now, scale=scale)
    c["workers"] = [_worker(w, scale, cpu=[1, 0][w] if n == 2 else None,
                            used=[(13000, 7), (650, 1)][w % 2]) for w in range(n)]
    return c


def _section(text, title):
    return text.split(title.upper() + "\n")[1].split("\n\n")[0].splitlines()


def test_stats_json_passes_the_worker_rows_through_unchanged():
    c = with_workers(2)
    rows = copy.deepcopy(c["workers"])
    s = stats.summarize(c, lab="lab1")
    assert s["workers"] == rows
    assert json.loads(json.dumps(s))["workers"] == rows
    assert stats.summarize(counters())["workers"] == []       # an older daemon: none


def test_stats_text_has_a_workers_section_only_with_more_than_one_worker():
    one = with_workers(1)
    plain = stats.summarize(counters(), lab="lab1")
    text1 = stats.render_plain(stats.sections(stats.summarize(one, "lab1")),
                               stats.stats_head(plain))
    # one worker: exactly today's output
    assert text1 == stats.render_plain(stats.sections(plain), stats.stats_head(plain))
    assert "WORKERS" not in text1
    s = stats.summarize(with_workers(2), lab="lab1")
    text = stats.render_plain(stats.sections(s), stats.stats_head(s))
    rows = _section(text, "workers")
    assert rows[0].split()[:4] == ["WORKER", "CPU", "RX", "PACKETS"]
    w0, w1 = (r.split() for r in rows[1:])
    # worker, cpu, rx, fwd out, fwd in, handoff out, in, drops, spilled, conns, engine drops
    assert w0[:11] == ["0", "1", "100", "60", "40", "30", "2", "0", "0", "10", "4"]
    assert w1[:11] == ["1", "0", "101", "60", "40", "2", "30", "1", "3", "11", "5"]
    # slices: used/size summed over the pools, fill, and the fullest slice
    assert w0[11:13] == ["13007/65000", "20.0%"]
    assert w0[13:] == [ENI_A, "ipv4/tcp", "13000/32500"]
    assert w1[11:] == ["651/65000", "1.0%", ENI_A, "ipv4/tcp", "650/32500"]
    assert len(rows) == 3


def test_slice_fill_without_pools_and_with_a_full_small_slice():
    f = workers.slice_fill({"pools": []})
    assert f == {"used": 0, "size": 0, "percent": 0.0, "fullest": None}
    f = workers.slice_fill({"pools": [{"eni": ENI_B, "family": 6, "proto": "udp", "used": 5,
                                       "size": 5},
                                      {"eni": ENI_A, "family": 4, "proto": "tcp",
                                       "used": 100, "size": 32500}]})
    assert (f["used"], f["size"], f["fullest"]["eni"]) == (105, 32505, ENI_B)


def test_top_shows_per_worker_rates_only_with_more_than_one_worker():
    a = top.Snapshot(stats.summarize(with_workers(2, now=100.0)), [_entry(1000, 1, 100)],
                     100.0, 5.0)
    b = top.Snapshot(stats.summarize(with_workers(2, now=102.0, scale=3)),
                     [_entry(1000, 3, 300)], 102.0, 7.0)
    r = workers.worker_rates(a.summary, b.summary, 2.0)
    assert [x["worker"] for x in r] == [0, 1]
    assert r[0]["rx_packets_per_second"] == 100.0          # (300 - 100) / 2
    assert r[0]["handoff_out_per_second"] == 30.0 and r[1]["handoff_in_per_second"] == 30.0
    assert r[1]["handoff_full_per_second"] == 0.0 and r[1]["handoff_full"] == 1
    assert r[0]["ports"] == {"used": 13007, "size": 65000, "percent": 20.010769}
    text = stats.render_plain(top.frame_sections(a, b), top.frame_head("lab1", b, 1.0, 1))
    rows = [ln.split() for ln in _section(text, "workers")]
    assert rows[1][:7] == ["0", "1", "100/s", "60/s", "40/s", "30/s", "2/s"]
    assert rows[2][:2] == ["1", "0"] and rows[2][-2:] == ["651/65000", "1.0%"]
    doc = top.frame_json("lab1", a, b, 1.0, 1)
    assert [w["worker"] for w in doc["workers"]] == [0, 1]
    # a counter reset (the data path restarted): the new value is the whole delta
    assert workers.worker_rates(b.summary, a.summary, 2.0)[0]["rx_packets_per_second"] == 50.0
    # one worker: no workers section and no "workers" key, as before
    a1 = a._replace(summary=stats.summarize(with_workers(1, now=100.0)))
    b1 = b._replace(summary=stats.summarize(with_workers(1, now=102.0, scale=3)))
    assert "WORKERS" not in stats.render_plain(top.frame_sections(a1, b1))
    assert "workers" not in top.frame_json("lab1", a1, b1, 1.0, 1)
