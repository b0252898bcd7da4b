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


def test_a_result_of_other_settings_in_the_output_folder_is_not_replaced(tmp_path):
    """Two targets under the default name=default: the second run replaced the first's summary and samples without a
    word. Refused at start-up; a rerun of the same settings replaces its own; a summary of an older version (no
    settings recorded) or a torn one is not taken for this run's."""
    import json

    from lightning_sde.cli.likelihood import settings

    def cfg(*overrides):
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            return compose("likelihood", overrides=[f"out={tmp_path}", "n=20", *overrides])

    validate(cfg())  # nothing there yet
    _, _, target_id = validate(cfg())
    (tmp_path / "summary.json").write_text(json.dumps({"settings": settings(cfg(), target_id)}))
    validate(cfg())  # the same settings: a rerun
    for other in (["sde=ve"], ["n=10"], ["seed=1"], ["ode.rtol=1e-4"], ["problem=swiss_roll"]):
        with pytest.raises(ValueError, match=rf"^config name: {tmp_path}/summary.json holds the result of other "
                                             r"settings .*give another name= \(out=\) to keep both, or delete it$"):
            validate(cfg(*other))
    for content in ('{"target": "mixture:eight_gaussians"}', "{torn"):
        (tmp_path / "summary.json").write_text(content)
        with pytest.raises(ValueError, match="holds the result of other settings"):
            validate(cfg())
