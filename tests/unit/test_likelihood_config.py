"""lsde-likelihood's start-up checks: a bad value fails before any model or data is loaded, naming its key."""

import pytest
from hydra import compose, initialize_config_module

from lightning_sde.cli.likelihood import validate
from lightning_sde.configuration import CONFIG_PACKAGE


@pytest.mark.parametrize("override, message", [
    ("device=nodev", "config device: Expected one of cpu"),
    ("dtype=float16", "config dtype: 'float16' is not one of"),
    ("n=0", "config n: must be an integer >= 1"),
    ("divergence=nosuch", "config divergence: 'nosuch' is not one of"),
])
def test_a_bad_value_is_refused_at_start_up_naming_its_key(override, message):
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("likelihood", overrides=[override])
    with pytest.raises(ValueError, match=message):
        validate(cfg)
