"""The shipped preset is the sampler the benchmarks scored: configs/sampler/recommended.yaml builds, at every budget,
the sampler benchmarks/recommend.py froze as RECOMMENDED, whose held-out figures the docs quote."""

from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from lightning_sde.configuration import CONFIG_PACKAGE
from lightning_sde.samplers import build_sampler

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_the_recommended_preset_is_the_sampler_the_benchmark_froze(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from recommend import FROZEN, NFES, RECOMMENDED

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        preset = instantiate(compose("sampler/recommended").sampler)
    frozen = dict(FROZEN[RECOMMENDED])
    frozen = build_sampler(frozen.pop("name"), **frozen)
    for nfe in NFES:
        assert preset.at_nfe(nfe).params() == frozen.at_nfe(nfe).params()
