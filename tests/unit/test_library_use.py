"""The package used as a library, from a user's own script: a plain Trainer and DataLoader, their own SDE class,
tensors of their own making."""

import re

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_sde.callbacks import SamplerCallback
from lightning_sde.exact import eight_gaussians
from lightning_sde.models.denoiser import Denoiser
from lightning_sde.module import ScoreModule
from lightning_sde.samplers import SAMPLERS, build_sampler, sample
from lightning_sde.samplers.noise import SeededNoise
from lightning_sde.sde import VPSDE

MLP = {"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 2, "time_embed_dim": 8}


def _module(**net) -> ScoreModule:
    return ScoreModule(net={**MLP, **net}, sde={"_target_": "lightning_sde.sde.VPSDE"}, shape=[2])


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, accelerator="cpu", default_root_dir=tmp_path,
                     enable_model_summary=False, enable_checkpointing=False, **kwargs)


@pytest.mark.parametrize("conditional", [False, True])
def test_a_plain_tensor_dataset_trains(tmp_path, conditional):
    """TensorDataset(x) gives [x] (IndexError in split_labels); TensorDataset(x, y) with a class-conditional network
    was refused for want of a datamodule saying it is labelled."""
    x, y = torch.randn(64, 2), torch.randint(0, 4, (64,))
    module = _module(**({"num_classes": 4} if conditional else {}))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    data = TensorDataset(x, y) if conditional else TensorDataset(x)
    _trainer(tmp_path).fit(module, DataLoader(data, batch_size=32))
    assert module.trainer.global_step == 2
    assert any(not torch.equal(v, before[k]) for k, v in module.state_dict().items())


def test_a_conditional_network_on_unlabelled_batches_is_refused(tmp_path):
    module = _module(num_classes=4)
    with pytest.raises(ValueError, match=r"the batches have no labels: they must be \(x, labels\)"):
        _trainer(tmp_path).fit(module, DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=32))


def test_a_batch_of_three_items_is_refused():
    from lightning_sde.data.base import split_labels

    x = torch.zeros(4, 2)
    assert split_labels([x])[1] is None and split_labels((x, x[:, 0]))[1] is not None
    with pytest.raises(ValueError, match="a batch must be x, \\[x\\] or \\(x, labels\\); got a list of 3 items"):
        split_labels([x, x, x])


def test_the_sampler_callback_without_a_datamodule_says_what_it_needs(tmp_path):
    callback = SamplerCallback({"ddim": build_sampler("ddim", steps=2)}, n_samples=8, batch_size=8)
    loader = DataLoader(torch.randn(64, 2), batch_size=32)
    with pytest.raises(ValueError, match="SamplerCallback scores samples against the datamodule's reference"):
        _trainer(tmp_path, callbacks=[callback], val_check_interval=1).fit(_module(), loader, loader)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.int64])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_starting_point_that_is_not_float32_or_float64_is_refused(name, dtype):
    """bf16: half of a 1000-step grid's steps rounded to zero length (each still an NFE), samples silently wrong; an
    integer x_T truncated t to 0 (NaN samples, or an error blaming the network)."""
    denoiser = eight_gaussians().denoiser(VPSDE())
    sampler = build_sampler(name)
    with pytest.raises(TypeError, match=f"x_T is {str(dtype)[6:]}: samplers and ODE solves step in float32 or"):
        sampler(denoiser, torch.zeros(4, 2).to(dtype), SeededNoise(range(4), (2,)))
    assert denoiser.nfe == 0


class HalfDiffusion(VPSDE):
    """g^2 = beta / 2: the forward SDE no longer has VP's marginals."""

    def g2(self, t):
        return super().g2(t) / 2


def test_a_users_sde_class_is_checked_when_a_denoiser_is_built():
    """Checked on the config path alone: Euler-Maruyama through it sampled std [1.78, 3.33] for a true [0.5, 1]."""
    with pytest.raises(ValueError, match=r"HalfDiffusion: g2\(t\) = .* but d sigma\^2 / dt - 2 f sigma\^2 = "):
        Denoiser(lambda x, t: torch.zeros_like(x), HalfDiffusion(), "eps", (2,))
    from helpers.nets import OwnVP

    Denoiser(lambda x, t: torch.zeros_like(x), OwnVP(), "eps", (2,))  # a consistent one is taken


def test_a_users_own_datamodule_with_labelled_batches_trains_a_conditional_network(tmp_path):
    """It was refused for want of lightning_sde.data's `labelled` attribute ("set data.labels=true")."""

    class Mine(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.randn(64, 2), torch.randint(0, 4, (64,))), batch_size=32)

    module = _module(num_classes=4)
    _trainer(tmp_path).fit(module, datamodule=Mine())
    assert module.trainer.global_step == 2


def test_a_device_given_as_a_cuda_index_is_taken_and_null_is_one_line():
    from lightning_sde.configuration import device

    assert device(0) == torch.device("cuda:0")  # Hydra parses device=0 as an int
    with pytest.raises(ValueError, match=r"^config device: must be a device's name \(cpu, cuda, cuda:1\); got None$"):
        device(None)


def test_a_gaussian_start_is_checked_unless_the_samples_are_guided():
    """Guided samples start at T whatever the start: a checkpoint without data moments (or a start after eps) was
    refused at start-up under guidance, where it samples."""
    from lightning_sde.samplers.grids import check_start

    denoiser = eight_gaussians().denoiser(VPSDE())
    late = build_sampler("ddim", gaussian_start_kl=50.0)
    with pytest.raises(ValueError, match="gaussian_start_kl=50.0 is reached only after eps"):
        check_start(late, denoiser)
    check_start(late, denoiser, guided=True)
    denoiser.data_moments = None
    check_start(late, denoiser, guided=True)
    check_start(build_sampler("ddim"), denoiser)  # no Gaussian start: nothing to check


@pytest.mark.parametrize("labels, message", [
    (torch.arange(1, 5).repeat(16), "a batch holds 1..4; labels 1..K? subtract 1"),  # 4 trained the null label
    (torch.arange(2, 6).repeat(16), "a batch holds 2..5"),  # the embedding's IndexError
])
def test_labels_outside_the_classes_are_refused_at_the_first_batch(tmp_path, labels, message):
    module = _module(num_classes=4)
    with pytest.raises(ValueError, match=re.escape("labels must be class indices 0..3 (model.net.num_classes = 4); "
                                                   + message)):
        _trainer(tmp_path).fit(module, DataLoader(TensorDataset(torch.randn(64, 2), labels), batch_size=64))


def test_a_users_sde_written_by_the_readme_recipe_is_named_by_its_class_in_the_apps(monkeypatch):
    """README's recipe states six methods and no `name`: every app but lsde-train failed on `sde.name` (results'
    protocol, figure names, the prior-gap warning)."""
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    from helpers.nets import ConstantBeta, OwnVP
    from lightning_sde.configuration import CONFIG_PACKAGE
    from lightning_sde.targets import load_target

    assert ConstantBeta().name == "ConstantBeta" and OwnVP().name == "vp" and VPSDE.name == "vp"

    class Shifted(ConstantBeta):  # a subclass of a class named by default: its own class name
        pass

    assert Shifted.name == "Shifted" and ConstantBeta.name == "ConstantBeta"
    monkeypatch.setenv("LSDE_TRUSTED_MODULES", "helpers")
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("bench")
    with open_dict(cfg):
        cfg.sde = {"_target_": "helpers.nets.ConstantBeta", "eps": 1e-3}
    target = load_target(cfg, "mixture", "t", "cpu")
    assert target.protocol["sde"] == "ConstantBeta"
    x, _ = sample(build_sampler("dpmpp", steps=8), target.denoiser, seeds=range(64))
    assert torch.isfinite(x).all()


def test_a_network_in_training_mode_is_said_before_it_samples_with_dropout():
    """nn.Module starts in training mode: a Denoiser around a network with dropout sampled two different sets from
    the same seeds (up to 2030 apart), silently."""
    import warnings

    class Net(torch.nn.Module):
        def __init__(self, dropout=0.5):
            super().__init__()
            self.lin, self.drop = torch.nn.Linear(2, 2), torch.nn.Dropout(dropout)

        def forward(self, x, t):
            return self.drop(self.lin(x))

    denoiser = Denoiser(Net(), VPSDE(), "eps", (2,))
    said_before = r"the network runs in training mode \(its Dropout is active: samples vary"
    with pytest.warns(UserWarning, match=said_before) as said:
        sample(build_sampler("ddim", steps=2), denoiser, seeds=range(4))
    assert said[0].filename == __file__  # the user's line, not the package's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, _ = sample(build_sampler("ddim", steps=2), denoiser.eval(), seeds=range(4))
        b, _ = sample(build_sampler("ddim", steps=2), denoiser, seeds=range(4))
        sample(build_sampler("ddim", steps=2), Denoiser(lambda x, t: x, VPSDE(), "eps", (2,)), seeds=range(4))
        sample(build_sampler("ddim", steps=2), Denoiser(Net(0.0), VPSDE(), "eps", (2,)), seeds=range(4))  # p = 0
    assert torch.equal(a, b)


def test_a_network_in_training_mode_is_said_before_it_encodes_decodes_or_scores():
    """encode, decode and log_likelihood said nothing: decodes of one latent differed by up to 12, and dopri5's
    steps shrank without end (3240 NFE in 60 s)."""
    import warnings

    from lightning_sde.flow import decode, encode, log_likelihood
    from lightning_sde.models.mlp import MLP
    from lightning_sde.probability_flow import ODEOptions

    denoiser, x = Denoiser(MLP(2, width=8, depth=1, dropout=0.3), VPSDE(), "eps", (2,)), torch.randn(3, 2)
    options = ODEOptions(method="euler", steps=2)
    for call, results in ((encode, "latents"), (decode, "decoded samples"), (log_likelihood, "log-likelihoods")):
        with pytest.warns(UserWarning, match=f"the network runs in training mode \\(its Dropout is active: {results} "
                                             "vary from call to call") as said:
            call(denoiser, x, options)
        assert said[0].filename == __file__
    denoiser.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for call in (encode, decode, log_likelihood):
            call(denoiser, x, options)


def test_noise_of_another_shape_and_a_network_returning_a_tuple_are_named():
    """Both failed deep inside a step (a broadcast error in the SDE solver; 'tuple' has no attribute 'shape')."""
    denoiser = eight_gaussians().denoiser(VPSDE())
    with pytest.raises(ValueError, match=r"noise draws samples of shape \(3,\); this denoiser's are of shape \(2,\)"):
        build_sampler("euler_maruyama", steps=4)(denoiser, torch.zeros(4, 2), SeededNoise(range(4), (3,)))
    pair = Denoiser(lambda x, t: (x, t), VPSDE(), "eps", (2,))
    with pytest.raises(TypeError, match="the network returned a tuple, not a tensor: a Denoiser's network returns its "
                                        "eps prediction alone"):
        sample(build_sampler("ddim", steps=2), pair, seeds=range(4))


def test_times_as_numbers_and_column_vectors_are_taken_and_impossible_inputs_named():
    """What a notebook user writes: sde.alpha(0.3) (a TypeError from inside torch), t of shape (B, 1) (the MLP blamed
    its own output's shape), t = -0.1 (finite numbers for a time that does not exist), integer x (t rounded to 0)."""
    import math

    from helpers.nets import ConstantBeta
    from lightning_sde.exact import gaussians_1d
    from lightning_sde.losses import DSMLoss
    from lightning_sde.models.mlp import MLP as Net
    from lightning_sde.models.moments import DataMoments
    from lightning_sde.sde import SDES, DiscreteVPSDE

    discrete = DiscreteVPSDE(torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0))
    for sde in [cls() for cls in SDES.values() if cls is not DiscreteVPSDE] + [discrete, ConstantBeta()]:
        for key in ("alpha", "sigma", "f", "g2", "g", "log_snr"):
            number, tensor = getattr(sde, key)(0.3), getattr(sde, key)(torch.tensor(0.3, dtype=torch.float64))
            assert torch.equal(number, tensor) and number.dtype == torch.float64, (sde, key)
        assert math.isclose(float(sde.t_from_log_snr(float(sde.log_snr(0.3)))), 0.3, rel_tol=1e-9), sde
        assert torch.equal(sde.t_from_log_snr(lam=0.5), sde.t_from_log_snr(0.5))
        assert torch.equal(sde.langevin_scale(0.5, 0.4), sde.langevin_scale(*torch.tensor([0.5, 0.4],
                                                                                           dtype=torch.float64)))
    mixture = eight_gaussians()
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    assert torch.equal(mixture.marginal_log_prob(VPSDE(), x.double(), 0.5),
                       mixture.marginal_log_prob(VPSDE(), x.double(), torch.tensor(0.5, dtype=torch.float64)))

    denoiser = Denoiser(Net(2, width=16, depth=1).eval(), VPSDE(), "eps", (2,))
    times = torch.tensor([0.5, 0.2, 0.9])
    assert torch.equal(denoiser(x, times[:, None]).eps, denoiser(x, times).eps)
    assert torch.equal(denoiser(x, times[:1]).eps, denoiser(x, 0.5).eps)
    with pytest.raises(ValueError, match=r"^t has shape \(2,\): one time, or one per sample of the batch of 3$"):
        denoiser(x, times[:2])
    for t, said in ((-0.1, "-0.1"), (float("nan"), "nan"), (1.5, "1.5"), (np.float32(5), "5.0"), (np.int64(3), "3")):
        with pytest.raises(ValueError, match=rf"^t must lie in \[0, T = 1\]; got {said}$"):
            denoiser(x, t)
    assert torch.isfinite(denoiser(x, 1.0).eps).all() and torch.isfinite(denoiser(x, 0.0).eps).all()
    on_steps = Denoiser(Net(2, width=16, depth=1).eval(), discrete, "eps", (2,))
    with pytest.raises(ValueError, match=r"^t must lie in \[0.001, T = 1\]; got 0.0$"):  # its sigma is 0 there
        on_steps(x, 0.0)
    assert torch.isfinite(on_steps(x, 1e-3).x0).all()
    with pytest.raises(TypeError, match=r"^x must be a floating-point tensor; got torch.int64"):
        denoiser(x.long(), 0.5)
    nfe = denoiser.nfe
    with pytest.raises(ValueError, match=r"^x has shape \(3,\): a batch of samples of shape \(2,\) expected$"):
        denoiser(x[0, :1].expand(3), 0.5)  # 1-D data without its axis: refused, and no NFE spent
    assert denoiser.nfe == nfe
    with pytest.raises(TypeError, match=r"^x must be a floating-point tensor; got torch.int64$"):
        mixture.log_prob(x.long())
    with pytest.raises(ValueError, match=r"^x must be a batch of points of shape \(N, 1\); got \(5,\)$"):
        gaussians_1d().log_prob(torch.linspace(-3, 3, 5))
    with pytest.raises(ValueError, match=r"1-D data: \(1,\)\); got \(\)$"):
        Denoiser(lambda x, t: x, VPSDE(), "eps", ())
    with pytest.raises(ValueError, match=r"1-D data as \(n, 1\); got shape \(10,\)$"):
        DataMoments.of_samples(torch.randn(10))

    exact = mixture.denoiser(VPSDE())
    for name in ("ode", "unipc_adaptive", "ddim"):
        with pytest.raises(ValueError, match=r"^x_T holds no samples \(a batch of 0\)$"):
            build_sampler(name)(exact, torch.zeros(0, 2))
    with pytest.raises(ValueError, match=r"^x0 holds no samples"):
        DSMLoss(VPSDE())(exact, torch.zeros(0, 2))
    with pytest.raises(TypeError, match=r"^x0 must be a floating-point tensor; got torch.int64$"):
        DSMLoss(VPSDE())(exact, x.long())
    with pytest.raises(TypeError, match=r"^dtype is int64: samplers and ODE solves step in float32 or float64"):
        sample(build_sampler("ddim"), exact, range(3), dtype=torch.int64)
    with pytest.raises(TypeError, match=r"^dtype must be a torch dtype \(torch.float32 or torch.float64\); got "
                                        r"'float32'$"):
        sample(build_sampler("ddim"), exact, range(3), dtype="float32")
    assert sample(build_sampler("ddim"), exact, range(3), dtype=None)[0].dtype == torch.get_default_dtype()
    assert VPSDE().prior_logp(torch.zeros(0, 2)).shape == (0,)
