"""Published diffusion models in diffusers' format (a `UNet2DModel` and its scheduler config) as Denoisers.

A model is named `diffusers:<folder or hub id>[#subfolder]`: a local folder (a pipeline with `unet/` and
`scheduler/`, or a bare model folder with its `scheduler_config.json`), or a hub id such as
`google/ddpm-cifar10-32`, read from the local Hugging Face cache only (fetch it first with
`lsde-prepare diffusers <hub id>` on a machine with internet; nothing is downloaded here).

How the network is read (the conventions of the library that defines these models):
  discrete-time VP (DDPMScheduler and the schedulers compatible with it): the SDE is DiscreteVPSDE through the
      scheduler's alphas_cumprod (any beta_schedule, trained_betas), timestep k at t_k = (k + 1) / N; the network
      gets `t N - 1` (k at t_k, in between: fractional), its output is `prediction_type` (epsilon -> eps,
      sample -> x0, v_prediction -> v); a learned-variance model's extra channels are dropped. Data in [-1, 1].
  VE (ScoreSdeVeScheduler, score_sde's NCSN++ as converted): a UNet2DModel with `time_embedding_type="fourier"`
      takes the noise level sigma itself (it embeds log sigma) and divides its output by sigma, so its output is
      the score. These models were trained on data in [0, 1]; the Denoiser works in the project's [-1, 1]:
      x = 2 x_model - 1 is VE with sigma doubled, and its score is the model's halved.
Weights are read by diffusers (safetensors, or a weights-only torch.load); no code from the model folder is run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from lightning_sde.errors import first_line, nonfinite_keys
from lightning_sde.models.denoiser import Denoiser
from lightning_sde.sde import SDE, VESDE, DiscreteVPSDE

PREFIX = "diffusers:"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
VE_SCHEDULER = "ScoreSdeVeScheduler"
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class PretrainedError(ValueError):
    """A model spec that does not name a loadable diffusers model: one line, what is wrong and what to do."""


def is_diffusers_spec(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise PretrainedError("loading diffusers models needs the diffusers package: pip install diffusers (in a "
                              "checkout of lightning-sde: pip install -e '.[diffusers]')") from None
    return diffusers


def _read_json(path: Path, spec: str) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PretrainedError(f"{spec}: {path} is not a readable JSON config ({type(err).__name__})") from None
    if not isinstance(config, dict):
        raise PretrainedError(f"{spec}: {path} is not a JSON object")
    return config


def cached_hub_model(repo_id: str) -> Path | None:
    """The folder of hub model `repo_id` in the local Hugging Face cache, or None; never touches the network."""
    _diffusers()  # which brings huggingface_hub
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        return None


@dataclass
class PretrainedSource:
    """A diffusers model, located and its configs read and checked; no weights loaded yet."""

    spec: str
    unet_dir: Path
    unet_config: dict
    scheduler_config: dict

    @property
    def scheduler(self) -> str | None:
        return self.scheduler_config.get("_class_name")

    @property
    def is_ve(self) -> bool:
        return self.scheduler == VE_SCHEDULER

    @property
    def shape(self) -> tuple[int, ...]:
        size = self.unet_config.get("sample_size")
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (int(self.unet_config.get("in_channels", 3)), *map(int, size))

    def id(self) -> str:
        """Changes whenever the model does: the configs and the weights file's size and modification time."""
        digest = hashlib.blake2b(digest_size=8)
        digest.update(json.dumps([self.unet_config, self.scheduler_config], sort_keys=True).encode())
        for name in WEIGHTS:
            if (self.unet_dir / name).is_file():
                stat = (self.unet_dir / name).stat()
                digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return f"{PREFIX}{self.unet_dir.resolve()}@{digest.hexdigest()}"


def locate(spec: str) -> PretrainedSource:
    """Find and check the model a `diffusers:` spec names: PretrainedError (one line) for anything unusable."""
    if not is_diffusers_spec(spec):
        raise PretrainedError(f"{spec!r}: not a diffusers model spec ({PREFIX}<folder or hub id>[#subfolder])")
    location, _, subfolder = spec[len(PREFIX):].partition("#")
    if not location:
        raise PretrainedError(f"{spec!r}: name a folder or a hub id after {PREFIX!r}")
    root = Path(location).expanduser()
    if not root.exists():
        if not HUB_ID.fullmatch(location):
            raise PretrainedError(f"{spec}: no folder {location!r}, and it is not a hub id (owner/name)")
        cached = cached_hub_model(location)
        if cached is None:
            raise PretrainedError(f"{spec}: hub model {location!r} is not in the local Hugging Face cache "
                                  f"(HF_HOME / HF_HUB_CACHE); fetch it on a machine with internet: "
                                  f"lsde-prepare diffusers {location}")
        root = cached
    if not root.is_dir():
        raise PretrainedError(f"{spec}: {root} is a file, not a diffusers model folder")
    if subfolder:
        unet_dir = root / subfolder
    else:
        unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    if not (unet_dir / "config.json").is_file():
        raise PretrainedError(f"{spec}: not a diffusers model folder: no {unet_dir / 'config.json'} (a pipeline "
                              "folder has unet/config.json; name another subfolder with #subfolder)")
    unet_config = _read_json(unet_dir / "config.json", spec)
    if unet_config.get("_class_name") != "UNet2DModel":
        raise PretrainedError(f"{spec}: the network is a {unet_config.get('_class_name')!r}; supported: "
                              "UNet2DModel (unconditional image models)")
    if not any((unet_dir / name).is_file() for name in WEIGHTS):
        raise PretrainedError(f"{spec}: no weights in {unet_dir} (expected one of {list(WEIGHTS)})")
    candidates = [unet_dir / "scheduler_config.json", root / "scheduler" / "scheduler_config.json",
                  root / "scheduler_config.json"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise PretrainedError(f"{spec}: no scheduler config (looked for {', '.join(map(str, candidates))}): the "
                              "noise schedule the model was trained with is needed")
    source = PretrainedSource(spec, unet_dir, unet_config, _read_json(found, spec))
    check(source)
    return source


def in_out(unet: dict) -> str:
    return ", ".join(f"{k}={unet.get(k)!r}" for k in ("in_channels", "out_channels", "sample_size"))


def check(source: PretrainedSource) -> None:
    """The combinations of scheduler and network this loader knows how to read, checked from the configs."""
    spec, unet, sched = source.spec, source.unet_config, source.scheduler_config
    size = unet.get("sample_size")
    sizes = [size] if isinstance(size, int) else size if isinstance(size, list) and len(size) == 2 else None
    counts = [unet.get("in_channels", 3), unet.get("out_channels", 3), *(sizes or [])]
    if sizes is None or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in counts):
        raise PretrainedError(f"{spec}: the UNet2DModel config needs integer in_channels, out_channels and "
                              f"sample_size (one size or [height, width]); got {in_out(unet)}")
    if not isinstance(source.scheduler, str):
        raise PretrainedError(f"{spec}: the scheduler config names no scheduler (_class_name)")
    if unet.get("num_class_embeds") or unet.get("class_embed_type"):
        raise PretrainedError(f"{spec}: a class-conditional UNet2DModel; only unconditional models are supported")
    time_input = unet.get("time_embedding_type", "positional")
    if source.is_ve:
        if time_input != "fourier":
            raise PretrainedError(f"{spec}: a {VE_SCHEDULER} model needs time_embedding_type='fourier' (the noise "
                                  f"level as input, score output); this one has {time_input!r}")
        for key in ("sigma_min", "sigma_max", "sampling_eps"):
            value = sched.get(key)
            if key in sched and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise PretrainedError(f"{spec}: the scheduler's {key} must be a number; got {value!r}")
        if unet.get("out_channels", 3) != unet.get("in_channels", 3):  # the score has the data's shape
            raise PretrainedError(f"{spec}: out_channels {unet.get('out_channels', 3)} != in_channels "
                                  f"{unet.get('in_channels', 3)} (a {VE_SCHEDULER} model returns the score)")
        return
    # the discrete-time VP schedulers (diffusers' DDPM family), whose networks take integer timesteps: not EDM's
    # (a continuous noise level as input; its schedule is sigma_min..sigma_max, which DDPMScheduler would drop)
    compatible = {name for name in _diffusers().DDPMScheduler._compatibles if not name.startswith("EDM")}
    compatible.add("DDPMScheduler")
    if source.scheduler not in compatible:
        raise PretrainedError(f"{spec}: unsupported scheduler {source.scheduler!r}; supported: {VE_SCHEDULER} and "
                              f"the discrete-time VP schedulers {sorted(compatible)}")
    if time_input != "positional":
        raise PretrainedError(f"{spec}: a discrete-time VP model with time_embedding_type={time_input!r}; "
                              "supported: 'positional' (integer timesteps)")
    if sched.get("timestep_type", "discrete") != "discrete":
        raise PretrainedError(f"{spec}: timestep_type={sched['timestep_type']!r} (the network takes a continuous noise "
                              "level); supported: 'discrete' (integer timesteps)")
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise PretrainedError(f"{spec}: prediction_type {prediction!r}; supported: {sorted(PREDICTION_TYPES)}")
    if sched.get("rescale_betas_zero_snr"):
        raise PretrainedError(f"{spec}: rescale_betas_zero_snr=True (zero terminal SNR) has no VP SDE with a finite "
                              "log-SNR at T; not supported")
    channels = (unet.get("in_channels", 3), unet.get("out_channels", 3))
    learned = str(sched.get("variance_type", "")).startswith("learned")
    if channels[1] != channels[0] and not (learned and channels[1] == 2 * channels[0]):
        raise PretrainedError(f"{spec}: out_channels {channels[1]} != in_channels {channels[0]} (and no learned "
                              "variance that explains it)")


class DiffusersUNet(nn.Module):
    """A diffusers UNet2DModel as `net(x, t)` in the project's time and data conventions (see the module doc)."""

    def __init__(self, unet: nn.Module, sde: SDE):
        super().__init__()
        self.unet = unet
        self.sde = sde
        self.channels = int(unet.config.in_channels)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """In the weights' dtype (a float64 run of a float32 model, as the project's own networks), returned in x's."""
        weights = next(self.unet.parameters()).dtype
        if isinstance(self.sde, DiscreteVPSDE):
            out = self.unet(x.to(weights), self.sde.timestep(t).to(weights)).sample[:, : self.channels]
        else:  # VE: the model's data is (x + 1) / 2 with noise level sigma / 2, and its score is twice ours
            out = 0.5 * self.unet(((x + 1) * 0.5).to(weights), (0.5 * self.sde.sigma(t)).to(weights)).sample
        return out.to(x.dtype)


def load(spec: str, map_location="cpu") -> Denoiser:
    """The Denoiser of a diffusers model (see the module doc), in eval mode on `map_location`."""
    source = locate(spec)
    diffusers = _diffusers()
    try:
        unet, loading = diffusers.UNet2DModel.from_pretrained(source.unet_dir, local_files_only=True,
                                                              low_cpu_mem_usage=False, output_loading_info=True)
    except Exception as err:  # noqa: BLE001  (diffusers raises many kinds for a bad folder: report it in one line)
        first = first_line(err)
        raise PretrainedError(f"{spec}: diffusers could not read the UNet2DModel in {source.unet_dir} "
                              f"({type(err).__name__}: {first})") from None
    missing = loading.get("missing_keys") or []
    if missing:  # diffusers warns and leaves them as allocated: uninitialised memory, not a random init
        raise PretrainedError(f"{spec}: the weights in {source.unet_dir} lack {len(missing)} of the model's tensors "
                              f"(e.g. {sorted(missing)[0]!r}): a torn or partial copy? Fetch it again")
    broken = nonfinite_keys(unet.state_dict())
    if broken:
        raise PretrainedError(f"{spec}: its weights hold NaN or infinite values ({len(broken)} tensors, e.g. "
                              f"{broken[0]!r}): the model cannot be sampled")
    sched = source.scheduler_config
    if source.is_ve:
        # score_sde's VE models see data in [0, 1]; in [-1, 1] the same process has sigma doubled
        sde = VESDE(2 * sched.get("sigma_min", 0.01), 2 * sched.get("sigma_max", 1348.0),
                    eps=sched.get("sampling_eps", 1e-5))
        net, parameterization = DiffusersUNet(unet, sde), "score"
    else:
        try:
            scheduler = diffusers.DDPMScheduler.from_config(sched)
            sde = DiscreteVPSDE(scheduler.alphas_cumprod.double())
        except Exception as err:  # noqa: BLE001  (an unknown beta_schedule, a count that is not one: in one line)
            first = first_line(err)
            raise PretrainedError(f"{spec}: its noise schedule cannot be read from the scheduler config "
                                  f"({type(err).__name__}: {first})") from None
        net = DiffusersUNet(unet, sde)
        parameterization = PREDICTION_TYPES[sched.get("prediction_type", "epsilon")]
    denoiser = Denoiser(net, sde, parameterization, source.shape)
    return denoiser.to(map_location).eval()


def fetch(repo_id: str) -> Path:
    """Download hub model `repo_id` into the local Hugging Face cache (a login node's job); its folder."""
    _diffusers()
    from huggingface_hub import snapshot_download

    if not HUB_ID.fullmatch(repo_id):
        raise PretrainedError(f"{repo_id!r} is not a hub id (owner/name)")
    path = Path(snapshot_download(repo_id))
    locate(f"{PREFIX}{repo_id}")  # what the compute node will find: checked now, while the network is there
    return path

