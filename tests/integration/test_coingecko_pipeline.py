"""CoinGecko beside (or instead of) the trade source: ticks land in ``reference_prices`` once."""

from __future__ import annotations

import pytest

from cryptostream.standins.coingecko import FakeCoinGecko

pytestmark = pytest.mark.integration


def test_polled_ticks_are_stored_once_per_update(cs, workspace):
    with FakeCoinGecko(update_interval_s=1.0, seed=3) as fake:
        cs.run_cli("run", "--source", "coingecko", "--symbols", "BTCUSDT,ETHUSDT",
                   "--coingecko-url", fake.url, "--coingecko-interval", "0.25s",
                   "--duration", "3.5", "--db", workspace.db, "--lake", "off",
                   cwd=workspace.root, timeout=60)
        served = fake.stats.requests
    with cs.connect_ro(workspace.db) as con:
        rows = con.execute("SELECT asset, symbol, price_usd, last_updated_at FROM reference_prices "
                           "ORDER BY asset, last_updated_at").fetchall()
        per_asset = dict(con.execute("SELECT asset, count(*) FROM reference_prices GROUP BY 1").fetchall())
    # polled every 0.25 s, the prices change every 1 s: ~4 distinct ticks per asset, each once
    assert served >= 10
    assert set(per_asset) == {"bitcoin", "ethereum"}
    assert all(3 <= n <= 5 for n in per_asset.values()), per_asset
    assert {r[1] for r in rows} == {"BTCUSDT", "ETHUSDT"}
    assert all(r[2] > 0 for r in rows)


def test_a_wrong_api_key_fails_the_run_with_a_clear_message(cs, workspace, monkeypatch):
    with FakeCoinGecko(require_api_key="right-key") as fake:
        monkeypatch.setenv("COINGECKO_API_KEY", "wrong-key")
        proc = cs.run_cli("run", "--source", "coingecko", "--symbols", "BTCUSDT",
                          "--coingecko-url", fake.url, "--duration", "5", "--db", workspace.db,
                          "--lake", "off", cwd=workspace.root, timeout=60, check=False)
    assert proc.returncode == 2
    assert "COINGECKO_API_KEY" in proc.stderr
    assert "wrong-key" not in proc.stderr + proc.stdout
