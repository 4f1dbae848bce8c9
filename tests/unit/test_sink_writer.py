"""The background sink writer (sinks/writer.py): group commit keeps order and the last state."""

from __future__ import annotations

import threading
import time

from cryptostream.processing.engine import Output
from cryptostream.sinks.base import Checkpoint
from cryptostream.sinks.writer import SinkWriter, merged


def _window(symbol: str, start_us: int, count: int) -> dict:
    return {"symbol": symbol, "window_start_us": start_us, "trade_count": count}


def test_merged_flushes_keep_order_and_the_latest_state():
    a = (Output(windows={"agg_1m": [_window("AAUSDT", 0, 1)]}), [{"run_id": "r", "n": 1}], 10,
         [Checkpoint("g", "t", 0, 5, b"a"), Checkpoint("g", "t", 1, 7, b"b")], {"AAUSDT": 100})
    b = (Output(windows={"agg_1m": [_window("AAUSDT", 0, 2), _window("BBUSDT", 0, 3)]}),
         [{"run_id": "r", "n": 2}], 20, [Checkpoint("g", "t", 0, 9, b"c")], {"AAUSDT": 50})
    out, stats, now_us, checkpoints, prune = merged([a, b])
    assert [w["trade_count"] for w in out.windows["agg_1m"]] == [1, 2, 3]  # in order
    assert stats == [{"run_id": "r", "n": 1}, {"run_id": "r", "n": 2}]  # the sink keeps the last
    assert now_us == 20
    assert sorted((c.partition, c.next_offset) for c in checkpoints) == [(0, 9), (1, 7)]
    assert prune == {"AAUSDT": 100}  # the furthest retention cut
    assert merged([a]) is a


class _SlowSink:
    """Records what each write held; the first write waits until released."""

    def __init__(self):
        self.writes: list[int] = []
        self.release = threading.Event()

    def write(self, out, stats, now_us, checkpoints=()):
        self.release.wait(5)
        self.writes.append(sum(len(r) for r in out.windows.values()))


def test_flushes_queued_behind_a_slow_write_go_out_as_one():
    sink = _SlowSink()
    writer = SinkWriter(sink, None, 0.0, depth=8)
    flush = (Output(windows={"agg_1m": [_window("AAUSDT", 0, 1)]}), [], 0, [], None)
    writer.submit(*flush)  # taken at once; its write blocks
    deadline = time.monotonic() + 5
    while writer.depth() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert not writer.idle()
    for i in range(1, 4):
        writer.submit(Output(windows={"agg_1m": [_window("AAUSDT", i, 1)]}), [], i, [], None)
    sink.release.set()
    writer.close()
    assert sink.writes == [1, 3]  # the three queued flushes were one transaction
    assert writer.idle()
