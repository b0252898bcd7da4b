"""lsde-bench's sweep spec cell by cell: what a config expands to (every field of every cell, the noise floor, the
NFE budgets a sampler cannot hit), the settings and the result key that decide what a rerun resumes, the shards, and
the validation errors, each naming its config node."""

import json

import pytest
import torch
from hydra import compose, initialize_config_module

from lightning_sde.bench.spec import NOISE_FLOOR, Cell, expand, jsonable, shard_cells
from lightning_sde.configuration import CONFIG_PACKAGE
from lightning_sde.samplers import DDIM, Heun, ProbabilityFlowODE

METRICS = ("sliced_w2", "mmd")
TARGET = "mixture:eight_gaussians"
SAMPLERS = ["~samplers", "+sampler@samplers.ddim=ddim", "+sampler@samplers.heun=heun", "+sampler@samplers.ode=ode"]
FIXED = {"dtype": "float32", "device": "cpu"}  # what else keys a fixed-step cell
ADAPTIVE = {**FIXED, "batch_size": 3, "world_size": 1}  # adaptive cells: the batches also change the samples


def _cfg(*overrides):
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        return compose(
            "bench",
            overrides=["results=/nonexistent/r.jsonl", "seeds.start=5", "seeds.count=7", "batch_size=3", *overrides],
        )


def ddim(steps):
    return {"steps": steps, "eta": 0.0, "grid": "uniform", "rho": 7.0, "times": None, "gaussian_start": None,
            "gaussian_start_kl": None, "select_over": None, "select_over_from_steps": None, "pilot": 512,
            "pilot_batch": None}


def heun(steps):
    return {"steps": steps, "grid": "karras", "rho": 7.0, "times": None, "gaussian_start": None,
            "gaussian_start_kl": None, "select_over": None, "select_over_from_steps": None, "pilot": 512,
            "pilot_batch": None}


def ode(tol):
    return {
        "steps": None,
        "method": "dopri5",
        "rtol": tol,
        "atol": tol,
        "grid": "uniform",
        "rho": 7.0,
        "times": None,
        "gaussian_start": None,
        "gaussian_start_kl": None,
        "select_over": None,
        "select_over_from_steps": None,
        "pilot": 512,
        "pilot_batch": None,
        "first_step": 0.01,
    }


def cell(label, sampler, params, grid, requested, settings):
    return Cell(TARGET, label, sampler, params, grid, requested, 5, 7, METRICS, settings)


def test_a_sweep_expands_to_its_cells_in_config_order_with_the_noise_floor_first(caplog):
    cells = expand(_cfg(*SAMPLERS, "nfe=[1,4]", "tolerances=[1e-3,1e-5]"), TARGET, METRICS, noise_floor=True)
    assert cells == [
        Cell(TARGET, NOISE_FLOOR, "exact", {}, "exact", None, 5, 7, METRICS, {}),  # no sampler: no settings
        cell("ddim", "ddim", ddim(1), "nfe", 1, FIXED),
        cell("ddim", "ddim", ddim(4), "nfe", 4, FIXED),
        cell("heun", "heun", heun(2), "nfe", 4, FIXED),  # 2 NFE a step: nfe=1 is skipped, nfe=4 is 2 steps
        cell("ode", "ode", ode(1e-3), "tol", 1e-3, ADAPTIVE),
        cell("ode", "ode", ode(1e-5), "tol", 1e-5, ADAPTIVE),
    ]
    assert [type(c.requested) for c in cells] == [type(None), int, int, int, float, float]
    assert "skipping heun at nfe=1" in caplog.text
    # each cell carries the sampler it runs (the noise floor runs none): the budgeted one, not the configured one
    assert cells[0].built is None
    assert [c.built for c in cells[1:]] == [
        DDIM(steps=1),
        DDIM(steps=4),
        Heun(steps=2, grid="karras"),
        ProbabilityFlowODE(rtol=1e-3, atol=1e-3, first_step=0.01),
        ProbabilityFlowODE(rtol=1e-5, atol=1e-5, first_step=0.01),
    ]
    assert all(c.built.params() == c.params for c in cells[1:])
    assert [str(c) for c in cells] == [
        f"{NOISE_FLOOR} as configured seeds 5+7",
        "ddim nfe=1 seeds 5+7",
        "ddim nfe=4 seeds 5+7",
        "heun nfe=4 seeds 5+7",
        "ode tol=0.001 seeds 5+7",
        "ode tol=1e-05 seeds 5+7",
    ]


def test_without_the_noise_floor_there_are_only_sampler_cells():
    cells = expand(_cfg(*SAMPLERS, "nfe=[4]", "tolerances=[1e-3]"), TARGET, METRICS)
    assert [(c.label, c.grid, c.requested) for c in cells] == [
        ("ddim", "nfe", 4),
        ("heun", "nfe", 4),
        ("ode", "tol", 1e-3),
    ]


@pytest.mark.parametrize(
    "nfe, tolerances, expected",
    [
        (
            "null",
            "null",
            [
                ("ddim", ddim(50), "configured", None, FIXED),
                ("heun", heun(50), "configured", None, FIXED),
                ("ode", ode(1e-5), "configured", None, ADAPTIVE),
            ],
        ),
        # a grid for one kind of sampler leaves the other kind as configured, never forced onto the wrong grid
        (
            "[10]",
            "null",
            [
                ("ddim", ddim(10), "nfe", 10, FIXED),
                ("heun", heun(5), "nfe", 10, FIXED),
                ("ode", ode(1e-5), "configured", None, ADAPTIVE),
            ],
        ),
        (
            "null",
            "[1e-3]",
            [
                ("ddim", ddim(50), "configured", None, FIXED),
                ("heun", heun(50), "configured", None, FIXED),
                ("ode", ode(1e-3), "tol", 1e-3, ADAPTIVE),
            ],
        ),
    ],
)
def test_a_null_grid_runs_its_samplers_as_configured(nfe, tolerances, expected):
    cells = expand(_cfg(*SAMPLERS, f"nfe={nfe}", f"tolerances={tolerances}"), TARGET, METRICS)
    labels = {"ddim": "ddim", "heun": "heun", "ode": "ode"}
    assert cells == [
        cell(label, labels[label], params, grid, requested, settings)
        for label, params, grid, requested, settings in expected
    ]
    assert [c.built.params() for c in cells] == [params for _, params, *_ in expected]
    configured = [str(c) for c in cells if c.grid == "configured"]
    assert configured and all(s.endswith(" as configured seeds 5+7") for s in configured)


def test_the_run_settings_key_the_device_kind_dtype_and_for_adaptive_samplers_the_processes():
    cfg = _cfg(
        "~samplers",
        "+sampler@samplers.ddim=ddim",
        "+sampler@samplers.ode=ode",
        "nfe=[10]",
        "tolerances=[1e-3]",
        "device=cuda:1",
        "dtype=float64",
        "ddp.devices=3",
        "ddp.num_nodes=2",
    )
    fixed, adaptive = expand(cfg, TARGET, METRICS)
    assert fixed.settings == {"dtype": "float64", "device": "cuda"}  # cuda:0 and cuda:1 give the same numbers
    assert adaptive.settings == {"dtype": "float64", "device": "cuda", "batch_size": 3, "world_size": 6}
    assert type(adaptive.settings["world_size"]) is int


def test_a_result_key_is_the_cells_identity_as_canonical_json():
    ddim_cell, ode_cell = expand(
        _cfg("~samplers", "+sampler@samplers.ddim=ddim", "+sampler@samplers.ode=ode", "nfe=[10]", "tolerances=[1e-3]"),
        TARGET,
        METRICS,
    )
    keyed = lambda params: {k: v for k, v in params.items() if k != "pilot_batch"}  # noqa: E731 (memory only)
    assert json.loads(ddim_cell.key("mmd")) == [TARGET, "ddim", "ddim", keyed(ddim(10)), "nfe", 10, 5, 7, "mmd", FIXED]
    assert json.loads(ode_cell.key("sliced_w2")) == [
        TARGET,
        "ode",
        "ode",
        keyed(ode(1e-3)),
        "tol",
        1e-3,
        5,
        7,
        "sliced_w2",
        ADAPTIVE,
    ]
    assert ddim_cell.key("mmd") != ddim_cell.key("sliced_w2")
    # equal cells have equal keys, whatever order their parameters and settings were gathered in
    a = Cell("t", "x", "ddim", {"steps": 3, "eta": 0.0}, "nfe", 3, 0, 8, METRICS, {"dtype": "float32", "device": "cpu"})
    b = Cell("t", "x", "ddim", {"eta": 0.0, "steps": 3}, "nfe", 3, 0, 8, METRICS, {"device": "cpu", "dtype": "float32"})
    assert a == b and a.key("mmd") == b.key("mmd")


def test_sampler_parameters_become_json_values():
    params = {"times": torch.tensor([1.0, 0.5]), "order": (1, 2), "steps": 3, "grid": "uniform", "rho": None}
    out = jsonable(params)
    assert out == {"times": [1.0, 0.5], "order": [1, 2], "steps": 3, "grid": "uniform", "rho": None}
    assert type(out["times"]) is list and type(out["order"]) is list
    assert json.loads(json.dumps(out)) == out


def test_cell_i_belongs_to_shard_i_mod_count():
    cells = list("abcde")
    assert shard_cells(cells, 0, 1) == cells
    assert shard_cells(cells, 1, 2) == ["b", "d"]
    assert shard_cells(cells, 2, 3) == ["c"]


@pytest.mark.parametrize(
    "index, count, message",
    [
        (0, 0, "config shard.count: must be an integer >= 1; got 0"),
        (0, True, "config shard.count: must be an integer >= 1; got True"),
        (True, 2, "config shard.index: must be an integer in [0, 2); got True"),
        (0.0, 2, "config shard.index: must be an integer in [0, 2); got 0.0"),
        (-1, 2, "config shard.index: must be an integer in [0, 2); got -1"),
    ],
)
def test_bad_shards_are_refused_naming_the_key(index, count, message):
    with pytest.raises(ValueError) as err:
        shard_cells(list("abcde"), index, count)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["seeds.start=-1"], "config seeds.start: must be an integer >= 0; got -1"),
        (["seeds.start=1.5"], "config seeds.start: must be an integer >= 0; got 1.5"),
        (["seeds.count=0"], "config seeds.count: must be an integer >= 1; got 0"),
        (["seeds.count=2.5"], "config seeds.count: must be an integer >= 1; got 2.5"),
        (["seeds.count=true"], "config seeds.count: must be an integer >= 1; got True"),
        (["batch_size=0"], "config batch_size: must be an integer >= 1; got 0"),
        (
            ["~samplers", "+samplers={}"],
            "config samplers: empty; pick a set (samplers=sweep) or add one (+sampler@samplers.ddim=ddim)",
        ),
        (
            ["+samplers.bad._target_=collections.OrderedDict"],
            "config samplers.bad: 'collections.OrderedDict' is not a Sampler",
        ),
        (["nfe=[true]"], "config nfe[0]: must be an integer >= 1; got True"),
        (["tolerances=[1e-3,0]"], "config tolerances[1]: must be a number > 0; got 0"),
        (["tolerances=[true]"], "config tolerances[0]: must be a number > 0; got True"),
        (["tolerances=[inf]"], "config tolerances[0]: must be a number > 0; got inf"),
    ],
)
def test_bad_values_are_refused_naming_the_config_node(overrides, message):
    with pytest.raises(ValueError) as err:
        expand(_cfg(*overrides), TARGET, METRICS, noise_floor=True)
    assert str(err.value) == message
