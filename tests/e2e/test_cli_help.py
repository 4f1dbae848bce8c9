"""Every command documents itself: ``--help`` works and names the contract's flags."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

FLAGS = {
    "run": ["--source", "--replay", "--speed", "--db", "--lake", "--symbols", "--duration",
            "--window", "--allowed-lateness", "--max-clock-skew", "[SYMBOL=]FILE",
            "TABLE=SIZE[/SLIDE]"],
    "query": ["SQL", "--db", "--format"],
    "stats": ["--db", "--run", "--format"],
}


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_help_names_every_flag(cs, tmp_path, command):
    res = cs.run_cli(command, "--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for flag in FLAGS[command]:
        assert flag in res.stdout, flag


def test_unknown_setting_is_refused_with_a_message(cs, tmp_path):
    (tmp_path / "cryptostream.toml").write_text('alowed_lateness_s = 5\n')
    res = cs.run_cli("run", "--source", "replay", "--replay", "x.csv", cwd=tmp_path, check=False)
    assert res.returncode == 2
    assert "alowed_lateness_s" in res.stderr and "Traceback" not in res.stderr
