"""Where the benchmark runs: the machine, commit and package versions, and the progress log."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def commit_id() -> str:
    """``git rev-parse --short HEAD``, read from .git directly (no git process needed)."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:7]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:7]
        packed = git / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line[:7]
        return f"(no commit on {ref.rsplit('/', 1)[-1]} yet)"
    except OSError:
        pass
    try:  # not a plain .git directory (worktree, submodule): ask git
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, timeout=10, check=False)
        return out.stdout.strip() or f"(unknown: {out.stderr.strip()[:80]})"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"(unknown: {exc})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gb() -> float | None:
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        return int(m.group(1)) / 2**20 if m else None
    except OSError:
        return None


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def machine_info() -> dict:
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = mem_total_gb()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit_id(),
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} logical ({allowed} usable)",
        "memory": f"{mem:.1f} GiB" if mem else "?",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": ", ".join(f"{d} {version(d)}" for d in
                              ("cryptostream", "numpy", "duckdb", "msgspec", "pyarrow", "orjson")),
    }
