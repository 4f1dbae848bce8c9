"""The recurrent forecaster ("lstm"): a small GRU over the last ``seq_len`` feature rows.

torch is an optional extra (``pip install 'cryptostream[torch]'``): it is imported only when
a model is built, trained or used, and its absence raises ``MissingDependency``.

How it works:

* ``fit(X, y)`` takes the history in time order; a row holding a non-finite value breaks the
  sequences (no window spans it). Inputs are standardized by the training mean / standard
  deviation and clipped to ±5; the target is winsorized at ``clip_sd`` standard deviations and
  standardized. The last ``val_frac`` of the sequences (in time) is held out: training stops
  when the held-out Huber loss has not improved for ``patience`` epochs (at most ``epochs``),
  and the best weights are kept. Training is seeded (``seed``), single-threaded and on CPU.
* **Shrinkage:** the raw prediction is multiplied by ``shrink`` in [0, 1], the least-squares
  slope (through the origin) of the held-out targets on the held-out predictions. A model with
  no out-of-sample skill (a random walk) thus predicts ~0, i.e. persistence.
* ``learn_one(x, y)`` only appends ``x`` to the buffer of recent rows (a row with NaN empties
  it); ``predict_one(x)`` runs the GRU over the buffer + ``x``. It returns ``None`` before a
  successful fit, while fewer than ``seq_len - 1`` rows are buffered, or when ``x`` has NaN.
  ``fit`` leaves the buffer holding the trailing complete rows of ``X`` (the history up to now).

Persistence goes through ``to_state`` / ``from_state``: plain numpy arrays (the ``state_dict``),
the architecture and the scaler statistics, no pickled torch objects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..errors import MissingDependency
from .features import FORECAST_FEATURES
from .forecasters import feature_vector


def _torch():
    try:
        import torch
    except ImportError as e:  # the optional extra is not installed
        raise MissingDependency("torch", "torch") from e
    return torch


def _net(torch, n_in: int, hidden: int):
    class GRUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(n_in, hidden, batch_first=True)
            self.head = torch.nn.Linear(hidden, 1)

        def forward(self, x):
            out, _ = self.gru(x)
            return self.head(out[:, -1, :]).squeeze(-1)

    return GRUNet()


class _OneThread:
    """Run torch on one thread inside the block and restore the previous setting after."""

    def __init__(self, torch):
        self.torch = torch

    def __enter__(self):
        self.prev = self.torch.get_num_threads()
        if self.prev != 1:
            self.torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.prev != 1:
            self.torch.set_num_threads(self.prev)


def sequence_ends(ok: np.ndarray, seq_len: int) -> np.ndarray:
    """Indices i where rows i-seq_len+1 .. i are all ``ok`` (a complete sequence ends at i).

    >>> sequence_ends(np.array([1, 1, 1, 0, 1, 1, 1, 1], bool), 3).tolist()
    [2, 6, 7]
    """
    run = np.zeros(len(ok), np.int64)
    count = 0
    for i, good in enumerate(ok):
        count = count + 1 if good else 0
        run[i] = count
    return np.flatnonzero(run >= seq_len)


class GRUForecaster:
    """A one-layer GRU (``hidden`` units) + linear head on standardized feature sequences."""

    name = "lstm"
    batch = True
    #: a fit takes seconds: walk-forward evaluation refits it at most every 720 targets
    min_retrain_every = 720

    def __init__(self, seq_len: int = 16, hidden: int = 24, epochs: int = 25,
                 batch_size: int = 128, lr: float = 3e-3, patience: int = 3,
                 val_frac: float = 0.2, clip_sd: float = 4.0, min_sequences: int = 200,
                 max_rows: int = 20_000, seed: int = 0):
        _torch()  # fail early and clearly when the extra is missing
        self.seq_len, self.hidden, self.epochs = seq_len, hidden, epochs
        self.batch_size, self.lr, self.patience = batch_size, lr, patience
        self.val_frac, self.clip_sd, self.min_sequences = val_frac, clip_sd, min_sequences
        self.max_rows, self.seed = max_rows, seed
        self.net = None
        self.x_mean = self.x_sd = None  # per-feature training statistics
        self.y_mean = self.y_sd = 0.0
        self.shrink = 0.0
        self.n_train = 0
        self.epochs_run = 0
        self.buffer: list[np.ndarray] = []  # the last seq_len - 1 complete raw rows

    # -- training --------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray) -> None:
        torch = _torch()
        X = np.asarray(X, np.float64)[-self.max_rows:]
        y = np.asarray(y, np.float64)[-self.max_rows:]
        ok_x = np.all(np.isfinite(X), axis=1) if len(X) else np.zeros(0, bool)
        self._reset_buffer(X, ok_x)
        ends = sequence_ends(ok_x, self.seq_len)
        ends = ends[np.isfinite(y[ends])]
        self.net, self.shrink, self.n_train, self.epochs_run = None, 0.0, len(ends), 0
        if len(ends) < self.min_sequences:
            return
        self.x_mean = X[ok_x].mean(axis=0)
        self.x_sd = np.maximum(X[ok_x].std(axis=0), 1e-12)
        yt = y[ends]
        med, sd = float(np.median(yt)), float(np.std(yt))
        yt = np.clip(yt, med - self.clip_sd * sd, med + self.clip_sd * sd)
        self.y_mean, self.y_sd = float(yt.mean()), max(float(yt.std()), 1e-12)
        Z = self._scale(X)
        seqs = np.stack([Z[e - self.seq_len + 1 : e + 1] for e in ends]).astype(np.float32)
        target = ((yt - self.y_mean) / self.y_sd).astype(np.float32)
        n_val = max(1, int(len(ends) * self.val_frac))
        with torch.random.fork_rng(devices=[]), _OneThread(torch):
            torch.manual_seed(self.seed)
            net = _net(torch, X.shape[1], self.hidden)
            self._train(torch, net, seqs[:-n_val], target[:-n_val], seqs[-n_val:],
                        target[-n_val:])
            with torch.no_grad():
                p = net(torch.from_numpy(seqs[-n_val:])).double().numpy()
        self.net = net.eval()
        raw = self.y_mean + self.y_sd * p
        actual = yt[-n_val:]
        denom = float(raw @ raw)
        self.shrink = min(max(float(raw @ actual) / denom, 0.0), 1.0) if denom > 0 else 0.0

    def _train(self, torch, net, xs, ys, xv, yv) -> None:
        rng = np.random.default_rng(self.seed)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        loss_fn = torch.nn.HuberLoss(delta=1.0)
        xs_t, ys_t = torch.from_numpy(xs), torch.from_numpy(ys)
        xv_t, yv_t = torch.from_numpy(xv), torch.from_numpy(yv)
        best, best_state, stale = math.inf, None, 0
        for epoch in range(self.epochs):
            net.train()
            order = torch.from_numpy(rng.permutation(len(xs)))
            for i in range(0, len(xs), self.batch_size):
                idx = order[i : i + self.batch_size]
                opt.zero_grad()
                loss = loss_fn(net(xs_t[idx]), ys_t[idx])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
            net.eval()
            with torch.no_grad():
                val = float(loss_fn(net(xv_t), yv_t))
            self.epochs_run = epoch + 1
            if val < best - 1e-6:
                best, stale = val, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
                if stale >= self.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)

    def _scale(self, X: np.ndarray) -> np.ndarray:
        return np.clip((X - self.x_mean) / self.x_sd, -5.0, 5.0)

    def _reset_buffer(self, X: np.ndarray, ok: np.ndarray) -> None:
        self.buffer = []
        for xi, good in zip(X[-(self.seq_len - 1):], ok[-(self.seq_len - 1):]):
            self.buffer = [*self.buffer, xi.copy()] if good else []

    # -- streaming -------------------------------------------------------------------------
    def learn_one(self, x: Mapping[str, float], y: float) -> None:
        """Buffer ``x`` (the GRU learns only in ``fit``); a row with NaN breaks the sequence."""
        v = feature_vector(x)
        if v is None:
            self.buffer = []
            return
        self.buffer.append(v)
        if len(self.buffer) > self.seq_len - 1:
            del self.buffer[0]

    def predict_one(self, x: Mapping[str, float]) -> float | None:
        v = feature_vector(x)
        if self.net is None or v is None or len(self.buffer) < self.seq_len - 1:
            return None
        torch = _torch()
        seq = self._scale(np.stack([*self.buffer[len(self.buffer) - self.seq_len + 1:], v]))
        with _OneThread(torch), torch.no_grad():
            out = float(self.net(torch.from_numpy(seq[None].astype(np.float32)))[0])
        r = self.shrink * (self.y_mean + self.y_sd * out)
        return r if math.isfinite(r) else None

    # -- persistence -----------------------------------------------------------------------
    def to_state(self) -> dict:
        """Everything needed to rebuild the model, as plain Python / numpy values."""
        params = {k: getattr(self, k) for k in (
            "seq_len", "hidden", "epochs", "batch_size", "lr", "patience", "val_frac",
            "clip_sd", "min_sequences", "max_rows", "seed")}
        weights = None if self.net is None else {
            k: v.detach().numpy().copy() for k, v in self.net.state_dict().items()}
        return {"params": params, "n_features": len(FORECAST_FEATURES), "weights": weights,
                "x_mean": self.x_mean, "x_sd": self.x_sd, "y_mean": self.y_mean,
                "y_sd": self.y_sd, "shrink": self.shrink, "n_train": self.n_train,
                "epochs_run": self.epochs_run, "buffer": [b.copy() for b in self.buffer]}

    def __reduce__(self):
        """Pickle (and copy) through ``to_state``: no torch classes in the pickle."""
        return (_rebuild, (self.to_state(),))

    @classmethod
    def from_state(cls, state: Mapping) -> GRUForecaster:
        torch = _torch()
        m = cls(**state["params"])
        for k in ("x_mean", "x_sd", "y_mean", "y_sd", "shrink", "n_train", "epochs_run"):
            setattr(m, k, state[k])
        m.buffer = [np.asarray(b, np.float64) for b in state["buffer"]]
        if state["weights"] is not None:
            net = _net(torch, int(state["n_features"]), m.hidden)
            net.load_state_dict({k: torch.from_numpy(np.asarray(v))
                                 for k, v in state["weights"].items()})
            m.net = net.eval()
        return m


def _rebuild(state: Mapping) -> GRUForecaster:
    return GRUForecaster.from_state(state)
