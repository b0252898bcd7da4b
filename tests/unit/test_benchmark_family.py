"""The benchmark family's second tuning set is the stratum its docstring names, and no held-out seed is in it."""

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_the_second_tuning_set_is_its_stratum(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from family import FAMILIES, TUNING_2, draw, stratum

    assert stratum(20000, 16, least_dim=64, separation_below=2.0) == TUNING_2
    assert all(draw(s)[1]["dim"] >= 64 and draw(s)[1]["separation"] < 2 for s in TUNING_2)
    held_out = {s for name, seeds in FAMILIES.items() if name.startswith("held-out") for s in seeds}
    assert not held_out & set(TUNING_2)
