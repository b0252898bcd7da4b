"""A checkpoint's hyper-parameters name what load_denoiser builds: only classes defined under the trusted modules, and
for `net` / `sde` one of the right kind, are let through. Names that merely pass through a trusted module (one it
imports: `lightning_sde.loading.Path`, `lightning_sde.configuration.os`) reach outside it and must be refused before
anything is built: each crafted file below would write a marker if it got that far."""

import pytest
import torch

from lightning_sde.configuration import trusted_class
from lightning_sde.loading import CheckpointError, load_denoiser
from lightning_sde.module import ScoreModule
from lightning_sde.sde import VPSDE

NET = {"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 2, "time_embed_dim": 8}
SDE = {"_target_": "lightning_sde.sde.VPSDE", "beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3}


def checkpoint(path, net=NET, sde=SDE):
    hparams = {"net": net, "sde": sde, "shape": [2]}
    state = ScoreModule(net=NET, sde=SDE, shape=[2]).state_dict()
    torch.save({"state_dict": state, "hyper_parameters": hparams, "global_step": 1}, path)
    return path


def test_a_genuine_checkpoint_loads_in_eval_mode(tmp_path):
    net = {**NET, "dropout": 0.5}  # a training-mode network would drop a different half at every call
    path = tmp_path / "good.ckpt"
    state = ScoreModule(net=net, sde=SDE, shape=[2]).state_dict()
    torch.save({"state_dict": state, "hyper_parameters": {"net": net, "sde": SDE, "shape": [2]}, "global_step": 1},
               path)
    denoiser = load_denoiser(path)
    x, t = torch.randn(8, 2), torch.full((8,), 0.5)
    assert denoiser.shape == (2,) and not denoiser.training and not denoiser.net.training
    assert torch.equal(denoiser(x, t).eps, denoiser(x, t).eps)


def test_a_checkpoint_of_nan_weights_is_refused_before_sampling(tmp_path):
    """lsde-figures drew empty trajectories and exited 0; lsde-bench recorded every cell as diverged."""
    ckpt = torch.load(checkpoint(tmp_path / "good.ckpt"), weights_only=True)
    for tensor in ckpt["state_dict"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    torch.save(ckpt, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match=r"nan.ckpt: its weights hold NaN or infinite values \(net\..* \.\.\.\): "
                                              "a run that diverged"):
        load_denoiser(tmp_path / "nan.ckpt")


@pytest.mark.parametrize("key, node", [
    ("sde", {"_target_": "lightning_sde.loading.Path.write_text",
             "_args_": [{"_target_": "lightning_sde.loading.Path", "_args_": ["{marker}"]}, "written"]}),
    ("net", {"_target_": "lightning_sde.configuration.os.makedirs", "_args_": ["{marker}"]}),
    ("net", {"_target_": "lightning_sde.loading.torch.save", "_args_": [[1], "{marker}"]}),
    ("net", {"_target_": "lightning_sde.configuration.instantiate",  # a function a trusted module imports
             "config": {"_target_": "lightning_sde.loading.Path.mkdir", "self": "{marker}"}}),
])
def test_a_name_that_passes_through_a_trusted_module_is_refused_and_nothing_runs(tmp_path, key, node):
    marker = tmp_path / "PWNED"
    node = eval(repr(node).replace("{marker}", str(marker)))  # noqa: S307  (our own literal)
    path = checkpoint(tmp_path / "crafted.ckpt", **{key: node})
    with pytest.raises(CheckpointError, match="outside the trusted targets"):
        load_denoiser(path)
    assert not marker.exists()


TOUCH = "${oc.create:{_target_: pathlib.Path.touch, _args_: [{_target_: pathlib.Path, _args_: [MARKER]}]}}"


@pytest.mark.parametrize("where, value", [
    ("net.width", TOUCH),
    ("sde.beta_max", TOUCH),
    ("net.width", "${oc.env:HOME}"),  # an environment variable (a secret) shown in the error a bad width gives
])
def test_an_interpolation_in_a_checkpoint_is_refused_and_nothing_runs(tmp_path, where, value):
    """instantiate resolves `${...}` before it builds, and the oc.create resolver builds what it names: a target the
    trusted-class check never saw (a string to it). lsde-train saves its hyper-parameters resolved."""
    marker = tmp_path / "PWNED"
    key, field = where.split(".")
    node = {**(NET if key == "net" else SDE), field: value.replace("MARKER", str(marker))}
    path = checkpoint(tmp_path / "crafted.ckpt", **{key: node})
    with pytest.raises(CheckpointError, match=rf"crafted.ckpt: its hyper_parameters hold an interpolation "
                                              rf"\(\$\{{...}}\) at \['{where}'\]; a checkpoint written by "
                                              "lsde-train holds none"):
        load_denoiser(path)
    assert not marker.exists()
    ckpt = torch.load(checkpoint(tmp_path / "data.ckpt"), weights_only=True)
    torch.save({**ckpt, "data_config": {"n": [1, {"root": "${oc.env:HOME}"}]}}, tmp_path / "data.ckpt")
    with pytest.raises(CheckpointError, match=r"its data_config hold an interpolation \(\$\{...}\) at "
                                              r"\['n\[1\].root'\]"):
        load_denoiser(tmp_path / "data.ckpt")


def test_a_package_named_in_the_environment_is_trusted_in_every_app(tmp_path, monkeypatch):
    """An SDE (or network) class of your own: refused by default, naming how to trust it; trusted once its package
    is in $LSDE_TRUSTED_MODULES (every app and a resume read checkpoints through read_checkpoint)."""
    from lightning_sde.configuration import trusted_targets

    path = checkpoint(tmp_path / "own.ckpt", sde={**SDE, "_target_": "helpers.nets.OwnVP"})
    monkeypatch.delenv("LSDE_TRUSTED_MODULES", raising=False)
    with pytest.raises(CheckpointError, match=r"names \['helpers.nets.OwnVP'\], outside the trusted targets "
                                              r"\['lightning_sde.'\] .*trust its package: "
                                              r"LSDE_TRUSTED_MODULES=<your_package>"):
        load_denoiser(path)
    for value in ("helper", "helpers.netsx", "other,"):  # a prefix is a whole module name
        monkeypatch.setenv("LSDE_TRUSTED_MODULES", value)
        with pytest.raises(CheckpointError, match="outside the trusted targets"):
            load_denoiser(path)
    monkeypatch.setenv("LSDE_TRUSTED_MODULES", " other.pkg , helpers.")
    assert trusted_targets() == ("lightning_sde.", "other.pkg.", "helpers.")
    assert type(load_denoiser(path).sde).__name__ == "OwnVP"
    import lightning_sde  # the package's own load_denoiser, as the README shows it, reads the same variable

    assert type(lightning_sde.load_denoiser(path).sde).__name__ == "OwnVP"
    monkeypatch.delenv("LSDE_TRUSTED_MODULES")
    for trusted in (["helpers"], ("helpers.",), ["lightning_sde.", "helpers"]):  # added to the defaults, as advised
        assert type(lightning_sde.load_denoiser(path, trusted=trusted).sde).__name__ == "OwnVP"
    assert type(lightning_sde.load_denoiser(checkpoint(tmp_path / "vp.ckpt"), trusted=["helpers"]).sde) is VPSDE
    for bad, message in (("helpers", r"trusted: a list of module names, e.g. \['helpers'\]"),
                         (["helpers/nets"], "trusted: 'helpers/nets' is not a module name")):
        with pytest.raises(ValueError, match=message):
            lightning_sde.load_denoiser(path, trusted=bad)
    monkeypatch.setenv("LSDE_TRUSTED_MODULES", "helpers")
    gone = checkpoint(tmp_path / "gone.ckpt", sde={**SDE, "_target_": "helpers.nosuch.OwnVP"})
    with pytest.raises(CheckpointError, match=r"names 'helpers.nosuch.OwnVP', not a name this Python can import "
                                              r"\(is its package installed, or on PYTHONPATH\?\); nothing was built"):
        load_denoiser(gone)
    for target, what in (("helpers.nets.torch.zeros", "a builtin_function_or_method, not a class"),
                         ("helpers.nets.nn.Linear",
                          "a class defined in torch.nn.modules.linear, outside the trusted modules")):
        with pytest.raises(CheckpointError, match=rf"names '{target}', {what}"):
            load_denoiser(checkpoint(tmp_path / "name.ckpt", sde={**SDE, "_target_": target}))
    monkeypatch.setenv("LSDE_TRUSTED_MODULES", "my-package")
    with pytest.raises(ValueError, match=r"^\$LSDE_TRUSTED_MODULES: 'my-package' is not a module name"):
        load_denoiser(path)


@pytest.mark.parametrize("edit, reason", [
    (lambda c: c["hyper_parameters"]["net"].update(width=32), r"RuntimeError: Error\(s\) in loading state_dict for "
                                                              r"ScoreModule: size mismatch for"),
    (lambda c: c["state_dict"].pop(next(iter(c["state_dict"]))), r"RuntimeError: Error\(s\) in loading state_dict for "
                                                                  r"ScoreModule: Missing key\(s\)"),
    (lambda c: c["hyper_parameters"]["net"].update(nosuch=1), "ValueError: config model.net: TypeError: "),
    (lambda c: c.update(data_moments="garbage"), "ValueError: data_moments must hold mean"),
    (lambda c: c.update(data_moments={"mean": torch.zeros(3), "eigvals": torch.ones(1), "eigvecs": torch.ones(2, 1)}),
     r"ValueError: data_moments: mean \(d,\), eigvals"),
])
def test_a_checkpoint_whose_parts_do_not_fit_together_is_one_line_naming_it(tmp_path, edit, reason):
    """Edited hyper-parameters, a missing weight, unreadable data moments: a CheckpointError naming the file (every
    app's one-line error), not a traceback from deep inside the module."""
    ckpt = torch.load(checkpoint(tmp_path / "x.ckpt"), weights_only=True)
    edit(ckpt)
    torch.save(ckpt, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match=rf"x.ckpt: its contents do not fit together \(edited, or not written by "
                                              rf"lsde-train\): {reason}"):
        load_denoiser(tmp_path / "x.ckpt")


@pytest.mark.parametrize("key, target, kind", [("sde", "lightning_sde.models.mlp.MLP", "SDE"),
                                              ("net", "lightning_sde.sde.VPSDE", "Module")])
def test_a_trusted_class_of_the_wrong_kind_is_refused_before_it_is_built(tmp_path, key, target, kind):
    path = checkpoint(tmp_path / "swapped.ckpt", **{key: {"_target_": target}})
    with pytest.raises(CheckpointError, match=f"its hyper_parameters' {key} names '{target}', not a {kind}"):
        load_denoiser(path)


def test_a_module_of_this_package_that_is_not_a_score_network_is_refused(tmp_path):
    """A feature extractor is an nn.Module under the trusted prefix, but building it reads a weights file
    (torch-fidelity unpickles the Inception weights in full): a checkpoint's net may only be a score network."""
    net = {"_target_": "lightning_sde.metrics.features.InceptionFeatures", "weights_path": str(tmp_path / "w.pth")}
    path = checkpoint(tmp_path / "features.ckpt", net=net)
    with pytest.raises(CheckpointError, match="not one of this package's score networks"):
        load_denoiser(path)


def test_trusted_class_resolves_only_classes_defined_under_the_prefixes():
    assert trusted_class("lightning_sde.sde.VPSDE").__name__ == "VPSDE"
    assert trusted_class("lightning_sde.samplers.UniPC").__module__ == "lightning_sde.samplers.multistep"  # re-export
    for name in ("lightning_sde.loading.Path", "lightning_sde.configuration.os", "lightning_sde.exact.eight_gaussians",
                 "lightning_sde.sde.VPSDE.__init__", "lightning_sde.nosuch.Thing", "os.system", "lightning_sdex.A"):
        assert trusted_class(name) is None, name
    assert trusted_class("lightning_sde.loading.Path", ("lightning_sde.", "pathlib.")) is not None


def test_two_checkpoints_of_one_run_name_their_figures_apart():
    """last.prev.ckpt and last.ckpt of one run both wrote trajectories_vp_<run>.png: the second replaced the first."""
    from pathlib import Path

    from lightning_sde.cli.figures import checkpoint_tag

    run = Path("outputs/train/toy/checkpoints")
    assert checkpoint_tag(run / "last.ckpt") == "toy"  # the names the docs show
    assert checkpoint_tag(run / "last.prev.ckpt") == "toy_last.prev"
    assert checkpoint_tag(run / "best-step=600.ckpt") == "toy_best-step=600"
    assert checkpoint_tag(Path("/models/a.ckpt")) == "models_a" != checkpoint_tag(Path("/models/b.ckpt"))


def test_a_moved_checkpoint_takes_the_target_id_its_results_record():
    """The same checkpoint (step, content, data) at another path is the recorded target; another step, content or
    data is not, nor is a mixture."""
    from lightning_sde.targets import as_recorded

    mine = "/laptop/run/last.ckpt@step200#0123456789abcdef|data=toy2d"
    cluster = "/cluster/run/last.ckpt@step200#0123456789abcdef|data=toy2d"
    assert as_recorded(mine, [cluster]) == cluster
    assert as_recorded(mine, [None, cluster + "|features=inception"]) == cluster  # a bench row's, with its protocol
    for other in ("/cluster/run/last.ckpt@step300#0123456789abcdef|data=toy2d",
                  "/cluster/run/last.ckpt@step200#fedcba9876543210|data=toy2d",
                  "/cluster/run/last.ckpt@step200#0123456789abcdef|data=moons", "mixture:x|sde:y"):
        assert as_recorded(mine, [other]) == mine
    assert as_recorded("mixture:x|sde:y", [cluster]) == "mixture:x|sde:y"
    assert as_recorded(mine, [cluster, mine + "|features=inception"]) == mine  # its own rows there too: they go on


def test_data_of_another_shape_than_the_checkpoints_is_refused_naming_both(tmp_path):
    """A 2-D checkpoint scored against 8x8 digits failed in a broadcast deep in the metric."""
    from omegaconf import OmegaConf

    from lightning_sde.targets import load_target

    cfg = OmegaConf.create({"checkpoint": str(checkpoint(tmp_path / "points.ckpt")),
                            "data": {"_target_": "lightning_sde.data.DigitsDataModule", "n_val": 50}})
    with pytest.raises(ValueError, match=r"^config data: shape \(1, 8, 8\) != the checkpoint's \(2,\)$"):
        load_target(cfg, "checkpoint", "t", "cpu")
