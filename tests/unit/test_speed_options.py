"""The opt-in speed options of the model (compile, channels_last, bf16 autocast), each against fp32 eager on the CPU:
same samples, same loss within tolerance, same checkpoint keys, and clear errors for what they cannot do."""

import copy

import lightning as L
import pytest
import torch

from lightning_sde.data import DigitsDataModule
from lightning_sde.losses import DSMLoss
from lightning_sde.module import ScoreModule
from lightning_sde.samplers import SeededNoise, build_sampler

UNET = {"_target_": "lightning_sde.models.unet.UNet", "in_channels": 1, "image_size": 8, "channels": 16,
        "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4], "dropout": 0.0}
MLP = {"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 32, "depth": 2}
VP = {"_target_": "lightning_sde.sde.VPSDE"}


def module(net=UNET, shape=(1, 8, 8), **options):
    """A module with random nonzero weights (the U-Net zero-initialises its output layers), the same each call."""
    m = ScoreModule(net=net, shape=list(shape), sde=VP, **options)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return m


def samples(m, n=16, nfe=5):
    den = m.denoiser.eval()
    noise = SeededNoise(range(n), den.shape)
    x, info = build_sampler("dpmpp", steps=nfe, order=2)(den, den.sde.prior_sample(noise.prior()))
    assert info["nfe"] == nfe
    return x


def dsm_loss(m, x0):
    torch.manual_seed(1)
    return DSMLoss(m.sde)(m.denoiser, x0).mean()


@pytest.mark.parametrize("options, message", [
    ({"compile": "yes"}, "config model.compile: must be true or false; got 'yes'"),
    ({"channels_last": 1}, "config model.channels_last: must be true or false; got 1"),
    ({"autocast": "fp16"}, "config model: autocast must be one of (None, 'bf16'); got 'fp16'"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        module(**options)


def test_channels_last_needs_an_image_network():
    with pytest.raises(ValueError, match=r"channels_last is for image networks .*got shape \(2,\)"):
        module(net=MLP, shape=(2,), channels_last=True)


def test_channels_last_equals_contiguous():
    eager, nhwc = module(), module(channels_last=True)
    conv = next(p for p in nhwc.parameters() if p.ndim == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.testing.assert_close(samples(nhwc), samples(eager), rtol=1e-3, atol=1e-3)  # conv algorithms differ
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(dsm_loss(nhwc, x0), dsm_loss(eager, x0), rtol=1e-5, atol=1e-6)


def test_bf16_autocast_sampling_is_close_to_fp32_and_keeps_the_dtype():
    fp32, bf16 = module(), module(autocast="bf16")
    x32, x16 = samples(fp32), samples(bf16)
    assert x16.dtype == torch.float32
    err = float((x16 - x32).pow(2).mean().sqrt() / x32.pow(2).mean().sqrt())
    assert 1e-6 < err < 0.05  # bf16 changes the numbers (it is not a no-op), by under 5 % of their scale
    assert bf16.denoiser.fingerprint() != fp32.denoiser.fingerprint()  # a grid tuned in fp32 is not reused


def test_bf16_autocast_leaves_training_in_the_trainers_precision():
    """model.autocast is for sampling: training under it gave bf16-mixed's losses with the trainer at 32-true."""
    fp32, bf16 = module(), module(autocast="bf16")
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    assert torch.equal(dsm_loss(bf16.train(), x0), dsm_loss(fp32.train(), x0))
    assert not torch.equal(dsm_loss(bf16.eval(), x0), dsm_loss(fp32.eval(), x0))  # evaluations: under autocast


def test_bf16_mixed_training_loss_is_close_to_fp32(tmp_path):
    losses = {}
    for precision in ("32-true", "bf16-mixed"):
        m = module()
        seen = []

        class Record(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                seen.append(float(outputs["loss"]))

        L.seed_everything(0)
        trainer = L.Trainer(max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, default_root_dir=tmp_path, accelerator="cpu",
                            precision=precision, callbacks=[Record()])
        trainer.fit(m, datamodule=DigitsDataModule(batch_size=32))
        losses[precision] = torch.tensor(seen)
    torch.testing.assert_close(losses["bf16-mixed"], losses["32-true"], rtol=0.03, atol=0.0)
    assert not torch.equal(losses["bf16-mixed"], losses["32-true"])


@pytest.mark.slow
def test_compiled_network_samples_and_trains_as_eager():
    eager, compiled = module(net=MLP, shape=(2,)), module(net=MLP, shape=(2,), compile=True)
    assert compiled.denoiser.net._compiled_call_impl is not None  # compiled in place (equality alone passes eager)
    assert eager.denoiser.net._compiled_call_impl is None
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints load either way
    torch.testing.assert_close(samples(compiled), samples(eager), rtol=1e-4, atol=1e-5)
    x0 = torch.randn(64, 2)
    torch.testing.assert_close(dsm_loss(compiled, x0), dsm_loss(eager, x0), rtol=1e-5, atol=1e-6)
    assert copy.deepcopy(compiled).denoiser.net is not compiled.denoiser.net  # the EMA callback deep-copies it


def test_bf16_autocast_gives_a_users_own_network_s_output_in_the_samples_dtype():
    """The project's networks cast their output back themselves; a user's own need not."""
    from lightning_sde.models.denoiser import Denoiser
    from lightning_sde.sde import VPSDE

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x, t):
            return self.linear(torch.cat([x, t[:, None].to(x)], dim=1))

    denoiser = Denoiser(Plain().eval(), VPSDE(), "eps", (2,), autocast="bf16")
    assert denoiser(torch.randn(4, 2), torch.full((4,), 0.5)).eps.dtype == torch.float32
