"""The figures as a reader meets them: labelled axes with direction, log scales where values span decades, ~20
samplers told apart, the legend outside the panels, intervals drawn, scatter limits that a diverged sampler cannot
blow up."""

import math

import matplotlib.pyplot as plt
import pytest
import torch

from lightning_sde.plotting import scatter_grid
from lightning_sde.plotting.style import choose_yscale, metric_label, metric_title, robust_limits, sampler_styles
from lightning_sde.plotting.sweeps import metrics_figure, samples_figure


def sweep_rows(n_samplers=16):
    rows = []
    for i in range(n_samplers):
        for nfe in (3, 10, 100, 1000):
            fid = 300.0 / nfe * (1 + i / 10)  # spans decades
            rows.append({"sampler": f"s{i:02d}", "grid": "nfe", "requested": nfe, "nfe": nfe, "metric": "fid",
                         "value": fid, "ci_low": fid * 0.9, "ci_high": fid * 1.1, "ci_level": 0.9,
                         "wall_s": nfe * 0.01, "n_samples": 500})
            rows.append({"sampler": f"s{i:02d}", "grid": "nfe", "requested": nfe, "nfe": nfe, "metric": "kid",
                         "value": 0.1 / nfe - 0.0005, "wall_s": nfe * 0.01, "n_samples": 500})
    rows.append({"sampler": "exact (noise floor)", "grid": "exact", "requested": None, "nfe": 0, "metric": "fid",
                 "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "ci_level": 0.9, "wall_s": 0.0, "n_samples": 500})
    return rows


def test_sweep_panels_are_labelled_log_scaled_and_keep_the_legend_outside():
    rows = sweep_rows()
    cell_rows = [r for r in rows if r["metric"] == "fid"]
    fig = metrics_figure(rows, cell_rows)
    axes = {ax.get_title().split(" (")[0]: ax for ax in fig.axes if ax.get_title()}
    fid, kid, wall = axes["FID"], axes["KID"], axes["wall time"]
    assert fid.get_title() == "FID (lower is better)" and fid.get_ylabel() == "FID"
    assert fid.get_yscale() == "log" and fid.get_xscale() == "log"
    assert fid.get_xlabel() == "NFE (score evaluations)"
    assert "can be < 0" in kid.get_title() and kid.get_yscale() == "symlog"  # negative KID, explained
    assert wall.get_ylabel() == "wall time [s]" and wall.get_yscale() == "log"
    assert len(fid.containers) == 16  # an error bar container per sampler: the intervals are drawn
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 17  # 16 samplers + the noise floor
    fig.canvas.draw()
    box, panels = legend.get_window_extent(), [ax.get_window_extent() for ax in fig.axes]
    assert all(box.x0 >= p.x1 - 1 for p in panels)  # right of every panel, over none of the data
    assert "bootstrap" in fig._supxlabel.get_text()
    plt.close(fig)


def test_twenty_samplers_get_twenty_distinct_colours_and_markers_repeat_only_with_other_colours():
    styles = list(sampler_styles([f"s{i}" for i in range(100)]).values())
    pairs = {(tuple(s["color"]), s["marker"]) for s in styles}
    assert len({tuple(s["color"]) for s in styles[:20]}) == 20 and len(pairs) == 100
    # labels 10-19 take the light shade of 0-9's hue: a marker of their own (ancestral and heun were blue and light
    # blue circles)
    assert all(styles[i]["marker"] != styles[i + 10]["marker"] for i in range(10))


def test_y_scale_follows_the_spread_of_the_values():
    assert choose_yscale([1.0, 1.5, 2.0]) == ("linear", None)
    assert choose_yscale([0.5, 50.0]) == ("log", None)
    scale, linthresh = choose_yscale([-0.001, 0.002, 0.5])
    assert scale == "symlog" and 0 < linthresh <= 0.002
    # a diverged sampler far off (loglik minus the floor's: -2.5e22) leaves the others outside the linear band, apart
    scale, linthresh = choose_yscale([-2.5e22, -0.27, 0.05, 0.0, 0.12] + [0.1] * 6)
    assert scale == "symlog" and linthresh <= 0.1  # was 1e19: all but the diverged one flat on 0
    # one value near 0 among few: the band stays near the others' scale (not 1e-9, with empty decades below them)
    assert choose_yscale([-1e-9, 0.3, 0.5, 0.2, 40.0])[1] >= 1e-4
    # a log-likelihood of -1e25 (a diverged sampler): 10 ** 22 as a Python int is more than symlog takes
    scale, linthresh = choose_yscale([-1e25, -2.0, 0.0])
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [-1e25, -2.0, 0.0])
    ax.set_yscale(scale, linthresh=linthresh)
    fig.canvas.draw()
    plt.close(fig)
    assert metric_label("loglik") == "log-likelihood [nats per sample]"
    assert metric_title("loglik").startswith("log-likelihood (closest to exact samples' is best)\nexact")
    assert metric_title("is") == "IS (higher is better)\nfrom 1 to the number of classes"


def test_scatter_limits_come_from_the_data_not_from_a_diverged_sampler(tmp_path):
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(500, 2, generator=gen)
    diverged = torch.cat([torch.randn(488, 2, generator=gen), torch.full((10, 2), 1e6), torch.full((2, 2), math.nan)])
    (x0, x1), (y0, y1) = robust_limits(data)
    assert -6 < x0 < -2 and 2 < x1 < 6 and x1 - x0 == pytest.approx(y1 - y0)
    fig = samples_figure({"em": {"nfe 10": diverged}}, reference=data)
    ax = fig.axes[0]
    assert ax.get_xlim() == pytest.approx((x0, x1)) and len(ax.get_xticks()) > 0
    (note,) = [t.get_text() for t in ax.texts if "outside" in t.get_text()]
    far, nonfinite = note.split("; ")  # the samples.png of a diverged sampler said "64 of 64 outside" for NaNs
    assert far.endswith("of 500 outside") and 10 <= int(far.split()[0]) <= 15  # the 10 diverged (+ a far tail)
    assert nonfinite == "2 of 500 not finite"
    plt.close(fig)
    path = scatter_grid({"data": data, "em": diverged}, tmp_path / "s.png")
    assert path.stat().st_size > 5_000


def test_each_protocols_noise_floor_is_labelled_with_its_protocol():
    """Two seed ranges in one file (report.for_views labels their rows apart): two floors, each named."""
    from lightning_sde.bench.report import for_views

    rows = [{**r, "target": "t", "seed_start": 0, "seed_count": n, "time": str(n), "value": r["value"] * k}
            for n, k in ((500, 1.0), (2000, 0.5)) for r in sweep_rows(2)]
    shown, _ = for_views(rows)
    fig = metrics_figure(shown, [r for r in shown if r["metric"] == "fid"])
    fid = next(ax for ax in fig.axes if ax.get_title().startswith("FID"))
    assert sorted(t.get_text() for t in fid.texts if "noise floor" in t.get_text()) == [
        "noise floor [seeds 0+2000]", "noise floor [seeds 0+500]"]
    plt.close(fig)


def test_samplers_at_one_nfe_are_drawn_side_by_side_at_labelled_nfe_ticks_under_a_caption_naming_the_target():
    """Two samplers with equal values (DDIM and DPM-Solver++(2M) on the digits model) were drawn one over the other,
    the floor's label over the highest-NFE marker, NFE 3, 5 and 20 unlabelled between decades, and nothing said
    what was measured."""
    rows = [{"sampler": s, "grid": "nfe", "requested": n, "nfe": n, "metric": "fid", "value": 10.0 / n,
             "wall_s": 0.1, "n_samples": 200} for s in ("ddim", "dpmpp_2m") for n in (3, 5, 20, 100)]
    rows.append({"sampler": "exact (noise floor)", "grid": "exact", "requested": None, "nfe": 0, "metric": "fid",
                 "value": 0.05, "wall_s": 0.0, "n_samples": 200})
    fig = metrics_figure(rows, [r for r in rows if r["nfe"]], "digits.ckpt@step4000 · float32 · features: digits")
    fid = next(ax for ax in fig.axes if ax.get_title().startswith("FID"))
    a, b = (line.get_xdata() for line in fid.get_lines() if len(line.get_xdata()) == 4)
    assert all(y / x > 1.05 for x, y in zip(a, b))  # apart on the axis, each near its NFE
    assert all(abs(x / n - 1) < 0.2 for x, n in zip(a, (3, 5, 20, 100)))
    fig.canvas.draw()
    assert [t.get_text() for t in fid.get_xticklabels()] == ["3", "5", "20", "100"]
    (floor,) = fid.texts
    assert floor.xy[0] < 0.1 and floor.get_ha() == "left"
    assert fig._supxlabel.get_text().startswith("digits.ckpt@step4000 · float32 · features: digits\n200 samples")
    plt.close(fig)


def test_only_samplers_that_share_an_nfe_are_moved_aside_and_a_diverged_cell_is_marked_and_said():
    """Every sampler was offset by its index, so a sampler alone at its NFE was drawn at another (heun's 4 right of
    DDIM's 5); and a sampler whose samples were not finite left a gap, as a cell never run does."""
    from lightning_sde.bench.report import with_interval

    rows = [{"sampler": s, "grid": "nfe", "requested": n, "nfe": n, "metric": "sliced_w2", "value": 1.0 / n,
             "wall_s": 0.1, "n_samples": 200, "n_nonfinite": 0} for s, ns in (("a", (4, 10)), ("b", (10, 20)))
            for n in ns]
    rows.append({"sampler": "c", "grid": "nfe", "requested": 5, "nfe": 5, "metric": "sliced_w2", "value": None,
                 "wall_s": 0.1, "n_samples": 200, "n_nonfinite": 37})
    fig = metrics_figure(rows, rows)
    ax = next(ax for ax in fig.axes if ax.get_title().startswith("sliced W2"))
    drawn = {tuple(line.get_ydata()): list(line.get_xdata()) for line in ax.get_lines() if len(line.get_xdata()) == 2}
    a, b = drawn[(0.25, 0.1)], drawn[(0.1, 0.05)]
    assert a[0] == 4 and b[1] == 20  # alone at their NFE: drawn there
    assert a[1] < 10 < b[0] and a[1] * b[0] == pytest.approx(100)  # the shared NFE: side by side around it
    (cross,) = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert list(cross.get_xdata()) == [5] and list(cross.get_ydata()) == [0.97]  # at the top of the panel
    assert 5 in ax.xaxis.get_majorticklocs()  # its NFE labelled too, as the others'
    (legend,) = fig.legends
    assert any(t.get_text().startswith("diverged") for t in legend.get_texts())
    plt.close(fig)
    assert with_interval(rows[-1]) == "diverged (37 of 200 not finite)"  # the terminal's and results.md's cell


def test_a_log_axis_over_two_decades_labels_its_1_2_5_ticks():
    """0.25 to 8 (32x) got one labelled tick ("1"): nothing could be read off the panel."""
    from lightning_sde.plotting.style import plain_log_axis

    def labels(lo, hi):
        ax.set_ylim(lo, hi)
        plain_log_axis(ax.yaxis)
        fig.canvas.draw()
        return [t.get_text() for t, at in zip(ax.get_yticklabels(), ax.get_yticks()) if lo <= at <= hi]

    fig, ax = plt.subplots()
    ax.set_yscale("log")
    assert labels(0.25, 8) == ["0.5", "1", "2", "5"]
    assert labels(0.2, 200) == ["1", "10", "100"]  # three decades: decades alone
    # a value axis labels 3, 4, 7 between them: FIDs of 37-39 over a floor of 1.2 sat above the last label (20)
    ax.set_ylim(1.2, 45)
    plain_log_axis(ax.yaxis, label_between=True)
    fig.canvas.draw()
    minor = [t.get_text() for t, at in zip(ax.yaxis.get_minorticklabels(), ax.yaxis.get_minorticklocs())
             if 1.2 <= at <= 45]
    assert minor == ["3", "4", "7", "30", "40"]
    plt.close(fig)


def test_samplers_at_a_single_nfe_are_labelled_with_that_nfe_alone():
    """With one NFE in the sweep, matplotlib's own ticks (44, 46 ... 56) made the side-by-side offsets read as other
    NFEs."""
    rows = [{"sampler": s, "grid": "nfe", "requested": 50, "nfe": 50, "metric": "mmd", "value": 0.1 + 0.01 * k,
             "wall_s": 0.1, "n_samples": 100} for k, s in enumerate(("ddim", "heun", "unipc"))]
    fig = metrics_figure(rows, rows)
    fig.canvas.draw()
    for ax in (ax for ax in fig.axes if ax.get_title()):
        assert [t.get_text() for t in ax.get_xticklabels() if t.get_text()] == ["50"]
    plt.close(fig)


def test_the_samples_figure_says_which_coordinates_it_shows_and_titles_images_too():
    points = torch.randn(50, 16)
    fig = samples_figure({"ddim": {"nfe 10": points}, "heun": {"nfe 10": points}})
    assert "coordinates 1 and 2 of 16" in fig._suptitle.get_text()
    plt.close(fig)
    fig = samples_figure({"ddim": {"nfe 10": torch.rand(4, 1, 8, 8)}})
    assert fig._suptitle.get_text() == "the first samples of every cell (same seeds)"
    plt.close(fig)


def test_a_sampler_keeps_its_colour_in_every_protocol_and_each_protocols_floor_its_own_grey_and_place():
    """Two seed ranges in one file: a sampler got another colour in each (as if another sampler), both floors one grey
    with their labels printed over each other, and the legend ran ddim_10 before ddim_5."""
    from lightning_sde.bench.report import for_views

    rows = [{**r, "sampler": {"s00": "ddim_10", "s01": "ddim_5"}.get(r["sampler"], r["sampler"]), "target": "t",
             "seed_start": 0, "seed_count": n, "time": str(n)} for n in (500, 2000) for r in sweep_rows(2)]
    shown, _ = for_views(rows)
    fig = metrics_figure(shown, [r for r in shown if r["metric"] == "fid"])
    fid = next(ax for ax in fig.axes if ax.get_title().startswith("FID"))
    lines = {c.get_label(): c.lines[0] for c in fid.containers}  # the error bars' data lines
    for sampler in ("ddim_5", "ddim_10"):
        a, b = lines[f"{sampler} [seeds 0+500]"], lines[f"{sampler} [seeds 0+2000]"]
        assert a.get_color() == b.get_color() and a.get_marker() == b.get_marker()
        assert a.get_linestyle() != b.get_linestyle()
        # the protocol run first (its rows' time: "2000" < "500") keeps the solid line and filled markers; the other's
        # markers are hollow, so that a point without a line (one budget) is told apart too
        assert (b.get_linestyle(), a.get_linestyle()) == ("-", "--")
        assert (b.get_fillstyle(), a.get_fillstyle()) == ("full", "none")
    assert lines["ddim_5 [seeds 0+500]"].get_color() != lines["ddim_10 [seeds 0+500]"].get_color()
    floors = [t for t in fid.texts if "noise floor" in t.get_text()]
    assert len({t.get_color() for t in floors}) == 2  # equal values: told apart by their grey and place
    fig.canvas.draw()
    a, b = (t.get_window_extent() for t in floors)
    assert not a.overlaps(b)
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts.index("ddim_5 [seeds 0+500]") < texts.index("ddim_10 [seeds 0+500]")
    assert [t.removeprefix("noise floor (a second exact sample set) ") for t in texts if t.startswith("noise")] == [
        "[seeds 0+500]", "[seeds 0+2000]"]
    plt.close(fig)


def test_six_seed_ranges_keep_their_lines_floors_and_panel_widths_apart():
    """A multirun over six seed ranges: the styles cycled after four (ancestral [seeds 0+32] and [seeds 128+32] alike,
    their floors one grey), and the legend of 102 entries squeezed the panels to a quarter of their width."""
    from lightning_sde.bench.report import for_views
    from lightning_sde.plotting.sweeps import line_styles

    rows = [{**r, "target": "t", "seed_start": start, "seed_count": 32, "time": f"{start:04d}"}
            for start in range(0, 192, 32) for r in sweep_rows(12)]
    shown, _ = for_views(rows)
    styles = line_styles(shown)
    one = [s for label, s in styles.items() if label.startswith("s00 ")]
    floors = [s for label, s in styles.items() if "floor" in label or "exact" in label]
    assert len(one) == 6 and len({(s["ls"], s["fillstyle"]) for s in one}) == 6
    assert len(floors) == 6 and len({(s["color"], s["ls"]) for s in floors}) == 6
    fig = metrics_figure(shown, [r for r in shown if r["metric"] == "fid"])
    fig.canvas.draw()
    panel = next(ax for ax in fig.axes if ax.get_title().startswith("FID"))
    assert panel.get_window_extent().width / fig.dpi > 3.0  # inches: the legend widened the figure instead
    plt.close(fig)


def test_log_likelihoods_are_drawn_as_their_difference_from_exact_samples():
    """A diverged sampler's -1000 put a symlog axis under values of -2.45 and -2.6 against the floor's -2.5: they
    shared one pixel row. Drawn as differences from the floor (0), the panel separates them; without a floor the
    values stay as they are."""
    rows = [{"sampler": s, "grid": "nfe", "requested": n, "nfe": n, "metric": "loglik", "value": v, "wall_s": 0.1,
             "n_samples": 500, "ci_low": v - 0.01, "ci_high": v + 0.01}
            for s, n, v in (("a", 10, -2.45), ("a", 20, -2.6), ("b", 2, -1000.0), ("b", 10, -2.52))]
    floor = {"sampler": "exact (noise floor)", "grid": "exact", "requested": None, "nfe": 0, "metric": "loglik",
             "value": -2.5, "ci_low": -2.51, "ci_high": -2.49, "wall_s": 0.0, "n_samples": 500}
    fig = metrics_figure(rows + [floor], rows)
    ax = next(ax for ax in fig.axes if ax.get_title().startswith("log-likelihood"))
    assert ax.get_title().startswith("log-likelihood minus exact samples' (0 is best)\nexact, under the true")
    assert ax.get_ylabel() == "difference [nats per sample]"
    a = next(c for c in ax.containers if c.get_label() == "a").lines[0]
    assert list(a.get_ydata()) == pytest.approx([0.05, -0.1])
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [0.0]  # the floor
    fig.canvas.draw()
    (_, y1), (_, y2) = ax.transData.transform([(10, 0.05), (20, -0.1)])
    assert abs(y1 - y2) > 20  # pixels apart
    plt.close(fig)
    fig = metrics_figure(rows, rows)  # no floor: nothing to take it from
    ax = next(ax for ax in fig.axes if ax.get_title().startswith("log-likelihood"))
    assert "minus" not in ax.get_title()
    assert list(next(c for c in ax.containers if c.get_label() == "a").lines[0].get_ydata()) == [-2.45, -2.6]
    plt.close(fig)


def test_nfe_tick_labels_never_overlap():
    """169 and 248 (48 % apart) were both labelled and printed as one number, "169248" (here: 3 pixels apart)."""
    rows = [{"sampler": s, "grid": "nfe", "requested": n, "nfe": n, "metric": m, "value": 1.0 / n + i, "wall_s": 0.1,
             "n_samples": 100} for i, s in enumerate("abcdefgh") for n in (8, 20, 48, 91, 169, 248, 1000)
            for m in ("mmd", "sliced_w2", "kid")]
    fig = metrics_figure(rows, rows)
    fig.canvas.draw()
    for ax in fig.axes:
        if not ax.get_title():
            continue
        labels = [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
        boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.x0)
        shown = [t.get_text() for t in labels]
        assert len(boxes) >= 4 and all(a.x1 + 5 < b.x0 for a, b in zip(boxes, boxes[1:])), shown
    plt.close(fig)


def test_a_checkpoints_noise_floor_is_called_real_samples_not_exact_ones():
    """A checkpoint's floor scores more of its data's samples (there is no exact sample set of a trained model)."""
    for checkpoint, expected in ((None, "noise floor (a second exact sample set)"),
                                 ("last.ckpt", "noise floor (real samples the reference does not hold)")):
        rows = [{**r, "checkpoint": checkpoint} for r in sweep_rows(2)]
        fig = metrics_figure(rows, [r for r in rows if r["metric"] == "fid"])
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts() if t.get_text().startswith("noise")] == [expected]
        plt.close(fig)


def test_the_schedules_figure_draws_the_runs_sde_with_its_parameters_in_place_of_its_class_defaults():
    """`lsde-figures sde=ve sde.sigma_max=80 figures=[schedules]` drew and labelled VE's default sigma_max 50."""
    from lightning_sde.plotting.chapter import schedules_figure
    from lightning_sde.sde import VESDE

    fig = schedules_figure(VESDE(sigma_max=80.0))
    variance = fig.axes[0]
    assert [t.get_text() for t in variance.get_legend().get_texts()] == [
        "VE ($\\sigma$ 0.01..80)", "VP ($\\beta$ 0.1..20)", "sub-VP ($\\beta$ 0.1..20)"]
    assert variance.lines[0].get_ydata()[-1] == pytest.approx(80.0 ** 2, rel=1e-9)
    plt.close(fig)


def test_a_checkpoints_1d_schematic_draws_its_reverse_paths_with_its_own_score():
    """The schematic of a checkpoint (named after it) drew the reverse paths of the exact score."""
    from lightning_sde.exact import gaussians_1d
    from lightning_sde.module import ScoreModule
    from lightning_sde.plotting.chapter import schematic_1d
    from lightning_sde.sde import VPSDE

    mixture, sde = gaussians_1d(), VPSDE()
    torch.manual_seed(0)
    model = ScoreModule(net={"_target_": "lightning_sde.models.mlp.MLP", "dim": 1, "width": 16, "depth": 2},
                        sde={"_target_": "lightning_sde.sde.VPSDE"}, shape=[1]).denoiser.eval()
    paths = {}
    for key, given in (("exact", None), ("model", model)):
        fig = schematic_1d(mixture, sde, 3, 0, model=given)
        reverse = fig.axes[1]
        paths[key] = [line.get_ydata() for line in reverse.get_lines()]
        assert reverse.get_title().endswith(", the model's score") == (given is not None)
        plt.close(fig)
    assert len(paths["model"]) == 3 and not any((a == b).all() for a, b in zip(paths["exact"], paths["model"]))


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_the_schematics_forward_paths_and_density_follow_the_sdes_marginals(name):
    """The paths end at p_T's spread (exact transitions: var alpha_T^2 var(x0) + sigma_T^2 from x0's), the grey
    density integrates to 1 at every time, and the 2-D panels' noisy samples have the marginal's spread at T."""
    from lightning_sde.exact import eight_gaussians, gaussians_1d
    from lightning_sde.plotting.chapter import density_map, forward_paths, schematic_2d
    from lightning_sde.sde import VESDE, VPSDE

    sde = {"vp": VPSDE(), "ve": VESDE(0.01, 3.0)}[name]
    mixture, g = gaussians_1d(), torch.Generator().manual_seed(0)
    x0 = mixture.sample(4000, g)
    times, paths = forward_paths(sde, x0, 20, g)
    alpha, sigma = float(sde.alpha(times[-1]) / sde.alpha(times[0])), float(sde.sigma(sde.T))
    expected = alpha**2 * float(x0.var()) + sigma**2 - alpha**2 * float(sde.sigma(sde.eps)) ** 2
    assert float(paths[-1].var()) == pytest.approx(expected, rel=0.08)
    x_grid = torch.linspace(-12, 12, 2000, dtype=torch.float64)
    dens = density_map(mixture, sde, x_grid, torch.tensor([sde.eps, 0.5, sde.T], dtype=torch.float64))
    assert (dens >= 0).all() and torch.trapezoid(dens, x_grid, dim=0).tolist() == pytest.approx([1.0] * 3, abs=1e-3)
    if name == "vp":
        fig = schematic_2d(eight_gaussians(), sde, 100, 0)
        at_T = torch.tensor(fig.axes[-1].collections[-1].get_offsets())
        assert float(at_T.std()) == pytest.approx(1.0, rel=0.1)  # N(0, I) at T, not the data's spread of ~4
        plt.close(fig)


def test_a_figure_file_names_its_source_and_the_reverse_panel_runs_from_t_equal_T(tmp_path):
    from PIL import Image

    from lightning_sde.exact import gaussians_1d
    from lightning_sde.plotting.chapter import save, schematic_1d
    from lightning_sde.sde import VPSDE

    fig = schematic_1d(gaussians_1d(), VPSDE(), 2, 0)
    number = fig.number
    assert fig.axes[1].get_xlim() == pytest.approx((1.0, 0.0)) and fig.axes[0].get_xlim() == pytest.approx((0, 1))
    [png] = save(fig, tmp_path, "schematic", ["png"], source="run.ckpt step 10")
    assert Image.open(png).info["Description"] == "run.ckpt step 10" and number not in plt.get_fignums()


def test_a_scatter_grid_draws_every_panel_and_closes_its_figure(tmp_path):
    plt.close("all")
    panels = {f"p{i}": torch.randn(50, 2, generator=torch.Generator().manual_seed(i)) for i in range(5)}
    seen = []
    original = plt.Figure.savefig
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plt.Figure, "savefig", lambda fig, *a, **k: (seen.append(fig), original(fig, *a, **k))[1])
        scatter_grid(panels, tmp_path / "grid.png", cols=4)
    titles = [ax.get_title() for ax in seen[0].axes if ax.get_title()]
    assert titles == [f"p{i}" for i in range(5)] and not plt.get_fignums()


def test_limits_of_one_repeated_point_have_a_width_and_notes_count_each_point_once():
    from lightning_sde.plotting.style import outside, outside_note

    assert robust_limits(torch.zeros(10, 2)) == ((-1.0, 1.0), (-1.0, 1.0))
    x = torch.tensor([[0.0, 0.0], [9.0, 0.0], [float("nan"), 0.0]])
    assert outside_note(x, outside(x, ((-1, 1), (-1, 1)))) == "1 of 3 outside; 1 of 3 not finite"


def test_text_tables_give_floats_four_significant_digits():
    from lightning_sde.plotting.tables import text_table

    assert text_table([{"a": 12.3456, "b": 7}], ["a", "b"]).splitlines() == ["a      b", "-----  -", "12.35  7"]
