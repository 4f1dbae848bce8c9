"""Save and load fitted models with their metadata, safely and atomically.

Layout: ``<dir>/<symbol>/<name>/<version>.joblib`` plus a JSON copy of the metadata for
humans in ``<version>.joblib.json``. The version is ``<name>-<UTC YYYYmmddTHHMMSS>-<6 hex of
the content hash>``; ``latest`` finds the newest one.

File format (one file, written to a temporary name then renamed, so a reader never sees half
a file)::

    CRYPTOSTREAM-MODEL 1\\n
    <sha256 hex of everything below>\\n
    <metadata as one line of JSON>\\n
    <joblib payload>

The payload is the model object itself for scikit-learn and River models, and for the GRU a
dict of plain numpy arrays and numbers (``state_dict``, architecture, scaler statistics; see
``lstm.GRUForecaster.to_state``). ``load`` checks the header and the checksum *before*
unpickling anything, so a truncated, garbled or foreign file raises ``ModelError`` (never an
unpickling surprise), as does a model whose feature list differs from what this version of
``features`` computes. Only load model files you (or your pipeline) wrote: the payload is a
pickle.

>>> import tempfile
>>> from cryptostream.ml.forecasters import NaiveForecaster
>>> tmp = tempfile.TemporaryDirectory()
>>> d = Path(tmp.name)
>>> p = save_to(d, NaiveForecaster(), {"symbol": "BTCUSDT", "n_train": 0})
>>> p.parent == d / "BTCUSDT" / "naive", latest(d, "naive", "BTCUSDT") == p
(True, True)
>>> model, meta = load(p)
>>> model.name, meta["kind"], meta["features"] == FORECAST_FEATURES
('naive', 'forecaster', True)
>>> tmp.cleanup()
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import MissingDependency, ModelError
from .base import AnomalyDetector, Forecaster
from .features import ANOMALY_FEATURES, FORECAST_FEATURES

MAGIC = b"CRYPTOSTREAM-MODEL 1\n"
FORMAT = 1
SUFFIX = ".joblib"
_RETRAIN = "retrain it with `cryptostream train` (or delete the file)"
#: models saved as a state dict rather than a pickled object: name -> "module:Class"
_STATE_CLASSES = {"lstm": "cryptostream.ml.lstm:GRUForecaster"}
_STAMP = re.compile(r"(\d{8}T\d{6})")


def kind_of(model) -> str:
    """"forecaster" or "detector" (by protocol), else ``TypeError``."""
    if isinstance(model, AnomalyDetector):
        return "detector"
    if isinstance(model, Forecaster):
        return "forecaster"
    raise TypeError(f"{type(model).__name__} is neither a Forecaster nor an AnomalyDetector")


def features_for(kind: str) -> tuple[str, ...]:
    return FORECAST_FEATURES if kind == "forecaster" else ANOMALY_FEATURES


def _payload(model) -> bytes:
    import joblib

    if hasattr(model, "to_state"):
        obj = {"kind": "state", "name": model.name, "state": model.to_state()}
    else:
        obj = {"kind": "object", "model": model}
    buf = io.BytesIO()
    joblib.dump(obj, buf, compress=3)
    return buf.getvalue()


def new_version(name: str, model=None, when: dt.datetime | None = None) -> str:
    """``<name>-<UTC YYYYmmddTHHMMSS>-<6 hex>``: the hash of the model's serialized content
    when ``model`` is given (else of the name and the clock, to keep names unique)."""
    when = when or dt.datetime.now(dt.UTC)
    content = _payload(model) if model is not None else f"{name}{when.isoformat()}".encode()
    return f"{name}-{when:%Y%m%dT%H%M%S}-{hashlib.sha256(content).hexdigest()[:6]}"


def model_path(directory: str | os.PathLike, symbol: str, name: str, version: str) -> Path:
    return Path(directory) / symbol / name / f"{version}{SUFFIX}"


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray | tuple | set):
        return list(v.tolist() if isinstance(v, np.ndarray) else v)
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"metadata value {v!r} of type {type(v).__name__} is not JSON-serializable")


def _complete_meta(model, meta: Mapping, payload: bytes) -> dict:
    kind = kind_of(model)
    m = dict(meta)
    if m.get("name", model.name) != model.name:
        raise ValueError(f"metadata name {m['name']!r} differs from the model's {model.name!r}")
    if m.get("kind", kind) != kind:
        raise ValueError(f"metadata kind {m['kind']!r} differs from the model's {kind!r}")
    feats = features_for(kind)
    if tuple(m.get("features", feats)) != feats:
        raise ValueError(f"metadata features {m['features']} differ from {feats}")
    if not m.get("symbol"):
        raise ValueError("metadata needs the model's 'symbol'")
    now = dt.datetime.now(dt.UTC)
    digest = hashlib.sha256(payload).hexdigest()
    m["name"], m["kind"], m["features"] = model.name, kind, list(feats)
    m.setdefault("version", f"{model.name}-{now:%Y%m%dT%H%M%S}-{digest[:6]}")
    m.setdefault("trained_at", now.isoformat(timespec="seconds"))
    m.setdefault("train_first_ms", None)
    m.setdefault("train_last_ms", None)
    m.setdefault("n_train", getattr(model, "n_train", None))
    m.setdefault("metrics", {})
    m["cryptostream_version"] = __version__
    m["content_sha256"] = digest
    m["format"] = FORMAT
    return m


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save(model, path: str | os.PathLike, meta: Mapping) -> dict:
    """Write ``model`` and its metadata to ``path`` (atomically) and ``<path>.json``.

    ``meta`` needs ``symbol``; ``name``, ``kind``, ``features``, ``version``, ``trained_at``,
    ``train_first_ms``/``train_last_ms`` (None), ``n_train``, ``metrics`` ({}),
    ``cryptostream_version`` and ``content_sha256`` are filled in when missing. Returns the
    completed metadata."""
    path = Path(path)
    payload = _payload(model)
    full = _complete_meta(model, meta, payload)
    header = json.dumps(full, sort_keys=True, default=_json_default).encode()
    body = header + b"\n" + payload
    data = MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, data)
    side = json.dumps(full, sort_keys=True, indent=2, default=_json_default) + "\n"
    _write_atomic(path.with_name(path.name + ".json"), side.encode())
    full["features"] = tuple(full["features"])
    return full


def save_to(directory: str | os.PathLike, model, meta: Mapping) -> Path:
    """Save under ``<directory>/<symbol>/<name>/<version>.joblib`` (the version derived from
    the content unless ``meta`` has one) and return the path."""
    payload = _payload(model)
    full = _complete_meta(model, meta, payload)
    path = model_path(directory, full["symbol"], full["name"], full["version"])
    save(model, path, full)
    return path


def _bad(path: Path, what: str) -> ModelError:
    return ModelError(f"model file {path}: {what}; {_RETRAIN}")


def read_meta(path: str | os.PathLike) -> tuple[dict, bytes]:
    """The verified metadata and the payload bytes of a model file (nothing unpickled)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"model file {path} cannot be read ({e.strerror or e}); check the "
                         f"path, or {_RETRAIN}") from e
    if not data.startswith(MAGIC):
        raise _bad(path, "not a CryptoStream model file (foreign, or from an incompatible "
                         "version: unknown header)")
    rest = data[len(MAGIC):]
    digest, sep, body = rest.partition(b"\n")
    if not sep or not re.fullmatch(rb"[0-9a-f]{64}", digest):
        raise _bad(path, "truncated or corrupted (damaged checksum line)")
    if hashlib.sha256(body).hexdigest().encode() != digest:
        raise _bad(path, f"truncated or corrupted (checksum mismatch over {len(body)} bytes)")
    header, sep, payload = body.partition(b"\n")
    try:
        meta = json.loads(header)
    except ValueError as e:
        raise _bad(path, f"unreadable metadata ({e})") from e
    if not sep or not isinstance(meta, dict) or meta.get("kind") not in ("forecaster",
                                                                          "detector"):
        raise _bad(path, "metadata without a valid 'kind'")
    expected = features_for(meta["kind"])
    got = tuple(meta.get("features") or ())
    if got != expected:
        raise _bad(path, f"the model was trained on features {list(got)} but this version of "
                         f"cryptostream computes {list(expected)}")
    meta["features"] = got
    return meta, payload


def load(path: str | os.PathLike) -> tuple[object, dict]:
    """``(model, meta)`` from a file written by ``save``; any problem raises ``ModelError``
    naming the file, what is wrong and what to do."""
    import joblib

    path = Path(path)
    meta, payload = read_meta(path)
    try:
        obj = joblib.load(io.BytesIO(payload))
    except Exception as e:
        raise _bad(path, f"the model cannot be restored ({type(e).__name__}: {e}); it was "
                         f"written by cryptostream {meta.get('cryptostream_version')}") from e
    try:
        model = _restore(obj)
    except MissingDependency as e:
        raise ModelError(f"model file {path} needs {e.module}: {e}") from e
    except Exception as e:
        raise _bad(path, f"the model cannot be rebuilt ({type(e).__name__}: {e})") from e
    if getattr(model, "name", None) != meta.get("name"):
        raise _bad(path, f"holds model {getattr(model, 'name', None)!r} but its metadata "
                         f"says {meta.get('name')!r}")
    if _kind_or_none(model) != meta["kind"]:
        raise _bad(path, f"holds an object that is not a {meta['kind']}")
    return model, meta


def _kind_or_none(model) -> str | None:
    try:
        return kind_of(model)
    except TypeError:
        return None


def _restore(obj):
    if not isinstance(obj, dict) or obj.get("kind") not in ("state", "object"):
        raise ValueError("unexpected payload layout")
    if obj["kind"] == "object":
        return obj["model"]
    target = _STATE_CLASSES.get(obj.get("name"))
    if target is None:
        raise ValueError(f"no state loader for model {obj.get('name')!r}")
    import importlib

    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls).from_state(obj["state"])


def latest(directory: str | os.PathLike, name: str, symbol: str) -> Path | None:
    """The newest ``<directory>/<symbol>/<name>/*.joblib`` (by the UTC stamp in its version,
    then modification time), or None."""
    d = Path(directory) / symbol / name
    if not d.is_dir():
        return None
    files = [p for p in d.glob(f"*{SUFFIX}") if p.is_file() and not p.name.startswith(".")]
    if not files:
        return None

    def key(p: Path):
        m = _STAMP.search(p.stem)
        try:
            mtime = p.stat().st_mtime_ns
        except OSError:
            mtime = -1
        return (m.group(1) if m else "", mtime, p.name)

    return max(files, key=key)
