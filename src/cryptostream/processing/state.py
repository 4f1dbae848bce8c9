"""Snapshot and restore a processor's state (open panes, dedup, watermarks, counters).

The Kafka ``process`` role stores a snapshot of each partition's processor in the same
sink transaction as the rows derived from it, together with the offset of the next record
to read. A replica that restarts, or takes the partition over in a rebalance, restores the
snapshot and reads on from that offset: open windows come out complete, windows already
written are not written again from partial data, and the counters go on from where they
were. Snapshots are msgpack (floats exact, infinities allowed), a few hundred bytes per
symbol plus its open panes.

>>> from cryptostream.model import DEFAULT_WINDOWS
>>> from cryptostream.processing.engine import EngineConfig, Processor
>>> p = Processor(EngineConfig(windows=DEFAULT_WINDOWS))
>>> q = Processor(EngineConfig(windows=DEFAULT_WINDOWS))
>>> restore(q, snapshot(p)); q.states == {}
True
"""

from __future__ import annotations

from collections import Counter

import msgspec
import numpy as np

from cryptostream.model import RejectReason
from cryptostream.processing.aggregates import LatencySketch, PaneAgg
from cryptostream.processing.cleaning import DedupState, Gap, Hole, Watermark
from cryptostream.processing.engine import Processor, SymbolCounters, SymbolState

FORMAT_VERSION = 1
_PANE_FIELDS = ("n", "sum_q", "sum_pq", "buy_q", "sell_q", "mean", "m2", "low", "high",
                "first_id", "first_price", "last_id", "last_price", "spikes")
_COUNTER_FIELDS = ("received", "accepted", "duplicates", "ignored", "gaps", "gap_trades",
                   "max_trade_time_us", "watermark_us", "gaps_open", "last_recv_skew_ms")
_GAP_FIELDS = ("symbol", "from_id", "to_id", "detected_at_us", "after_trade_time_us", "filled",
               "hold_wm_us", "published")


def _sketch(sk: LatencySketch | None):
    if sk is None:
        return None
    return [sk.count, sk.total, sk.max, sk.keys.tolist(), sk.counts.tolist()]


def _unsketch(v) -> LatencySketch | None:
    if v is None:
        return None
    count, total, mx, keys, counts = v
    return LatencySketch(count, total, mx, np.array(keys, np.int64), np.array(counts, np.int64))


def _pane(p: PaneAgg) -> list:
    return [getattr(p, f) for f in _PANE_FIELDS] + [_sketch(p.latency), _sketch(p.recv_latency)]


def _unpane(v: list) -> PaneAgg:
    p = PaneAgg()
    for f, x in zip(_PANE_FIELDS, v, strict=False):
        setattr(p, f, x)
    p.latency, p.recv_latency = _unsketch(v[-2]), _unsketch(v[-1])
    return p


def _symbol(st: SymbolState) -> dict:
    d = st.dedup
    gaps = {id(h.origin): h.origin for h in d.holes}
    return {
        "dedup": [d.hwm, d.floor, d.floor_time_us, d.floor_open,
                  [[h.from_id, h.to_id, id(h.origin)] for h in d.holes],
                  [list(r) for r in d.expired]],
        "gaps": {str(k): [getattr(g, f) for f in _GAP_FIELDS] for k, g in gaps.items()},
        "last_price": st.last_price,
        "mark": [st.mark.max_t, st.mark.wm, st.mark.hold],
        "panes": [[start, _pane(p)] for start, p in st.panes.items()],
        "emitted_until": st.emitted_until,
        "last_arrival_us": st.last_arrival_us,
    }


def _unsymbol(v: dict) -> SymbolState:
    hwm, floor, floor_time_us, floor_open, holes, expired = v["dedup"]
    gaps = {k: Gap(**dict(zip(_GAP_FIELDS, g, strict=True))) for k, g in v["gaps"].items()}
    dedup = DedupState(hwm, floor, floor_time_us, floor_open,
                       [Hole(lo, hi, gaps[str(k)]) for lo, hi, k in holes],
                       [tuple(r) for r in expired])
    max_t, wm, hold = v["mark"]
    return SymbolState(dedup=dedup, last_price=v["last_price"], mark=Watermark(max_t, wm, hold),
                       panes={start: _unpane(p) for start, p in v["panes"]},
                       emitted_until=dict(v["emitted_until"]),
                       last_arrival_us=v["last_arrival_us"])


def snapshot(proc: Processor) -> bytes:
    """The processor's whole state as bytes (see ``restore``)."""
    counters = {
        sym: [getattr(c, f) for f in _COUNTER_FIELDS] + [{r.value: n for r, n in c.rejected.items()}]
        for sym, c in proc.counters.items()
    }
    return msgspec.msgpack.encode({
        "version": FORMAT_VERSION,
        "states": {sym: _symbol(st) for sym, st in proc.states.items()},
        "counters": counters,
    })


def restore(proc: Processor, data: bytes) -> None:
    """Replace ``proc``'s state with a snapshot taken by ``snapshot``."""
    v = msgspec.msgpack.decode(data)
    if v.get("version") != FORMAT_VERSION:
        raise ValueError(f"processor snapshot format {v.get('version')} is not {FORMAT_VERSION}")
    proc.states = {sym: _unsymbol(s) for sym, s in v["states"].items()}
    proc.counters = {}
    for sym, c in v["counters"].items():
        sc = SymbolCounters(**dict(zip(_COUNTER_FIELDS, c[:-1], strict=True)))
        sc.rejected = Counter({RejectReason(r): n for r, n in c[-1].items()})
        proc.counters[sym] = sc


def continue_run(proc: Processor, data: bytes) -> dict[str, int]:
    """Restore a snapshot as the start of a *new* run of the same pipeline: the open
    windows, dedup state, watermarks and open gaps come back; the run counters start at
    zero (each run has its own ``pipeline_stats`` rows). Returns each symbol's last trade
    id, where a live source continues (``BinanceSource.resume_after``)."""
    restore(proc, data)
    for sym, c in list(proc.counters.items()):
        proc.counters[sym] = SymbolCounters(
            max_trade_time_us=c.max_trade_time_us, watermark_us=c.watermark_us,
            gaps_open=c.gaps_open)
    return {sym: st.dedup.hwm for sym, st in proc.states.items() if st.dedup.hwm is not None}
