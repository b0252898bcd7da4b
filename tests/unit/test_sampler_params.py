"""Every sampler parameter's boundary, from both sides: a bad value is refused at construction with a message
naming the parameter (before any sampling), and the extreme good values are accepted."""

import pytest

from lightning_sde.samplers import build_sampler

REFUSED = [
    ("pc", {"predictor": "euler"}, "unknown predictor"),
    ("pc", {"corrector_steps": True}, "corrector_steps"),
    ("pc", {"corrector_steps": 1.0}, "corrector_steps"),
    ("pc", {"corrector_steps": -1}, "corrector_steps"),
    ("pc", {"snr": True}, "snr"),
    ("pc", {"snr": 0}, "snr"),
    ("pc", {"snr": -0.1}, "snr"),
    ("pc", {"snr": "0.16"}, "snr"),
    ("pc", {"predictor": "none", "corrector_steps": 0}, "corrector_steps must be >= 1"),
    ("ddim", {"eta": -0.01}, "eta"),
    ("ddim", {"eta": 1.01}, "eta"),
    ("ddim", {"eta": True}, "eta"),
    ("ode", {"method": "dopri5", "steps": 10}, "adaptive"),
    ("ode", {"method": "warp"}, "unknown ODE method"),
    ("ode", {"method": ["dopri5", "rk4"]}, "must be one name"),
    ("ode", {"method": "explicit_adams"}, "'explicit_adams' is not offered: use sampler dpmpp or unipc"),
    ("ode", {"rtol": 0}, "rtol"),
    ("ode", {"atol": True}, "atol"),
    ("ode", {"first_step": 0}, "first_step"),
    ("ode", {"first_step": 1.01}, "first_step"),
    ("ode", {"first_step": True}, "first_step"),
    ("dpmpp", {"order": 4}, "order"),
    ("dpmpp", {"order": True}, "order"),
    ("unipc", {"order": 5}, "order"),
    ("unipc", {"order": 0}, "order"),
    ("sde_dpmpp", {"order": 3}, "order"),
    ("unipc_adaptive", {"order": 7}, "order"),
    ("unipc_adaptive", {"rtol": 0}, "rtol"),
    ("unipc_adaptive", {"rtol": True}, "rtol"),
    ("unipc_adaptive", {"atol": -1e-3}, "atol"),
    ("unipc_adaptive", {"h_init": False}, "h_init"),
    ("unipc_adaptive", {"safety": 0}, "safety"),
    ("unipc_adaptive", {"safety": 1.01}, "safety"),
    ("unipc_adaptive", {"error_norm": "max"}, "error_norm must be one of"),
    ("unipc_adaptive", {"icoeff": 0}, "icoeff must be > 0"),
    ("unipc_adaptive", {"max_growth": -1}, "max_growth must be a number >= 1"),
    ("unipc_adaptive", {"max_growth": 0.5}, "max_growth must be a number >= 1"),
    ("unipc_adaptive", {"max_steps": 0}, "max_steps must be an integer >= 1"),
    ("unipc_adaptive", {"max_steps": 2.5}, "max_steps must be an integer >= 1"),
    ("unipc_adaptive", {"icoeff": 2.5}, "icoeff must be a number in"),
    ("unipc_adaptive", {"pcoeff": -0.1}, "pcoeff must be a number in"),
    ("unipc_adaptive", {"pcoeff": True}, "pcoeff must be a number in"),
    ("ddim", {"bogus": 1}, "has no parameter"),
    ("ddim", {"gaussian_start": True}, "gaussian_start must be a ratio > 0"),
    ("ddim", {"gaussian_start": 0.0}, "gaussian_start must be a ratio > 0"),
    ("ddim", {"steps": 0}, "steps must be an integer >= 1"),
    ("ddim", {"grid": "select", "pilot": 0}, "pilot must be a number of rows >= 1"),
    ("ddim", {"grid": "select", "pilot": 64.0}, "pilot must be a number of rows >= 1"),
    ("unipc", {"grid": "select", "select_over": {"pilot": [8, 16]}}, "select_over cannot vary 'pilot'"),
    ("ddim", {"grid": "select", "pilot_batch": 0}, "pilot_batch must be a number of rows >= 1"),
    ("ddim", {"grid": "select", "pilot_batch": True}, "pilot_batch must be a number of rows >= 1"),
    ("unipc", {"grid": "select", "select_over": {"pilot_batch": [8, None]}}, "select_over cannot vary 'pilot_batch'"),
    ("ddim", {"steps": 2.0}, "steps must be an integer >= 1"),
    ("ddim", {"grid": "nope"}, "unknown grid"),
    ("ddim", {"grid": "karras", "rho": 0}, r"rho must be a number in \[0.1, 100\]"),
    ("ddim", {"grid": "karras", "rho": True}, r"rho must be a number in \[0.1, 100\]"),
    ("ddim", {"steps": 2, "times": [1.0, 0.5, 0.5]}, r"times must be 3 strictly decreasing times .* got 3 values"),
    ("ddim", {"steps": 2, "times": [1.0, 1e-3]}, r"times must be 3 strictly decreasing .* got 2 values"),
    ("ddim", {"steps": 2, "times": [[1.0, 0.5, 1e-3]]}, r"got \(1, 3\) values"),
    ("ode", {"grid": "foo"}, r"^ode: grid='foo' would be ignored: an adaptive method chooses its own steps"),
    ("ode", {"grid": "optimized", "pilot": -5, "rho": -3.0, "pilot_batch": 0},
     r"^ode: grid='optimized', rho=-3.0, pilot=-5, pilot_batch=0 would be ignored"),
    ("ode", {"method": "bosh3", "grid": "karras"}, "grid='karras' would be ignored"),
    ("ddim", {"eta": 0.5, "grid": "select"}, r"^ddim: grid='select' tunes deterministic samplers .* draws noise"),
    ("ancestral", {"grid": "optimized"}, "grid='optimized' tunes deterministic samplers"),
    ("euler_maruyama", {"grid": "select"}, "grid='select' tunes deterministic samplers"),
    ("sde_dpmpp", {"grid": "select"}, "grid='select' tunes deterministic samplers"),
    ("pc", {"grid": "optimized"}, "grid='optimized' tunes deterministic samplers"),
    ("reverse_diffusion", {"grid": "select"}, "grid='select' tunes deterministic samplers"),
    ("nope", {}, "unknown sampler"),
]

ACCEPTED = [
    ("pc", {"predictor": "euler_maruyama", "corrector_steps": 0}),
    ("pc", {"predictor": "reverse_diffusion", "snr": 1e-6}),
    ("pc", {"predictor": "none", "corrector_steps": 1}),
    ("ddim", {"eta": 0.0}),
    ("ddim", {"eta": 1.0}),
    ("ddim", {"grid": "karras", "rho": 0.5}),
    ("ddim", {"steps": 1, "gaussian_start": 1e-3}),
    ("ddim", {"steps": 2, "times": [1.0, 0.5, 1e-3]}),
    ("ode", {"method": "dopri5", "first_step": 1.0}),
    ("ode", {"method": "rk4", "steps": 3}),
    ("ode", {"method": "rk4", "grid": "select", "pilot": 8, "rho": 3.0}),
    ("ddim", {"eta": 0.0, "grid": "select"}),
    ("dpmpp", {"order": 3}),
    ("dpmpp", {"order": 1}),
    ("unipc", {"order": 4}),
    ("sde_dpmpp", {"order": 2}),
    ("unipc_adaptive", {"order": 1, "safety": 1.0, "rtol": 1e-9, "atol": 1e-9, "h_init": 1e-4}),
]


@pytest.mark.parametrize(("name", "params", "message"), REFUSED)
def test_a_bad_parameter_is_refused_naming_it(name, params, message):
    with pytest.raises(ValueError, match=message):
        build_sampler(name, **params)


@pytest.mark.parametrize(("name", "params"), ACCEPTED)
def test_the_extreme_good_values_are_accepted_and_kept(name, params):
    sampler = build_sampler(name, **params)
    assert all(getattr(sampler, key) == value for key, value in params.items())


def test_numpy_numbers_are_taken_as_the_python_numbers_declared():
    """A sweep over np.arange or np.linspace: steps=np.int64(5) was refused ("must be an integer"), and a float32
    eta keyed other rows than the same Python float."""
    import numpy as np

    sampler = build_sampler("ddim", steps=np.int64(5), eta=np.float32(0.5), times=None)
    assert type(sampler.steps) is int and type(sampler.eta) is float
    assert sampler.params() == build_sampler("ddim", steps=5, eta=0.5).params()
    ode = build_sampler("ode", method="rk4", steps=np.int32(3), grid="karras", rho=np.float64(7))
    assert type(ode.steps) is int and type(ode.rho) is float
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        build_sampler("ddim", steps=np.float64(5.0))
