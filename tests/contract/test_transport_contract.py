"""Every ``Transport`` honours the same contract (see transport/base.py)."""

from __future__ import annotations

import threading
import time

import pytest

from cryptostream.model import SourceBatch, TradeBatch
from cryptostream.transport.channel import InProcessChannel

TRANSPORTS = {"in-process": lambda: InProcessChannel(maxsize=2)}


@pytest.fixture(params=sorted(TRANSPORTS))
def make_transport(request):
    return TRANSPORTS[request.param]


def _batch(tag: str) -> SourceBatch:
    return SourceBatch(TradeBatch.empty(tag))


def test_delivers_in_order_then_none(make_transport):
    t = make_transport()
    for tag in "ab":
        t.put(_batch(tag))
    t.close()
    assert [t.get(1).trades.source, t.get(1).trades.source] == ["a", "b"]
    assert t.get(1) is None
    assert t.get(1) is None


def test_get_times_out_without_data(make_transport):
    assert make_transport().get(timeout_s=0.05) is TimeoutError


def test_put_blocks_when_full(make_transport):
    t = make_transport()
    t.put(_batch("1"))
    t.put(_batch("2"))
    done = threading.Event()

    def producer():
        t.put(_batch("3"))
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    time.sleep(0.1)
    assert not done.is_set()  # backpressure: the third batch waits for room
    assert t.get(1).trades.source == "1"
    assert done.wait(2)


def test_producer_failure_reaches_consumer(make_transport):
    t = make_transport()
    t.put(_batch("ok"))
    t.fail(RuntimeError("disk gone"))
    assert t.get(1).trades.source == "ok"
    with pytest.raises(RuntimeError, match="disk gone"):
        t.get(1)
