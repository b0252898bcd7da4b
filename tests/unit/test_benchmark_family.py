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


def test_the_held_out_summary_counts_a_rescore_of_the_same_pick_only(monkeypatch, tmp_path):
    """A problem rescored on more starts replaces its first ratio when the rescore ran the recommended configuration,
    or another that had ended with the identical RMSE in the run (the same pick); otherwise the first ratio stays."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import heldout_summary

    monkeypatch.setattr(heldout_summary, "OUT", tmp_path)
    today, other = "unipc-2/3 select gs0/0.15/0.3", "unipc-3 select gs0.15"
    fields = ["seed", "config", "kind", "budget", "nfe", "rmse", "ratio_lo", "ratio_hi", "starts"]

    def write(name, rows):
        lines = [",".join(fields)] + [",".join(map(str, r)) for r in rows]
        (tmp_path / name).write_text("\n".join(lines) + "\n")

    write("recommend_heldout.csv", [
        (1000, "public", "public", 10, 10, 1.0, "", "", 256),
        (1000, today, "ours", 10, 10, 2.0, 1.5, 2.5, 256), (1000, other, "ours", 10, 10, 2.0, 1.5, 2.5, 256),
        (1001, "public", "public", 10, 10, 1.0, "", "", 256),
        (1001, today, "ours", 10, 10, 0.5, 0.4, 0.6, 256), (1001, other, "ours", 10, 10, 0.7, 0.6, 0.8, 256)])
    write("recommend_heldout_1000_1001_2048starts.csv", [
        (1000, "public", "public", 10, 10, 1.0, "", "", 2048), (1000, other, "ours", 10, 10, 0.9, 0.8, 1.1, 2048),
        (1001, "public", "public", 10, 10, 1.0, "", "", 2048), (1001, other, "ours", 10, 10, 0.2, 0.1, 0.3, 2048)])
    write("recommend_heldout2_1001_2048starts.csv", [  # another family's rescore: never read for this one
        (1001, "public", "public", 10, 10, 1.0, "", "", 2048), (1001, today, "ours", 10, 10, 0.1, 0.1, 0.1, 2048)])
    rows = {r["seed"]: r for r in heldout_summary.run_rows("held-out", "recommend_heldout", 2)}
    assert (rows[1000]["ratio"], rows[1000]["starts"], rows[1000]["rescored"]) == (0.9, "2048", True)
    assert (rows[1001]["ratio"], rows[1001]["starts"], rows[1001]["rescored"]) == (0.5, "256", False)
