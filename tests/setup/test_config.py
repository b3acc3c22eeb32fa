"""Config validation in-process (setup/config.py): each bad field is named (the CLI's version of these
messages is tested through a real process in tests/integration/test_train_cli.py)."""

from __future__ import annotations

import pytest

from bsft_jax.setup.config import ConfigError, default_config, load_config_file, validate_config


def test_validation_messages_in_process(tmp_path):
    c = default_config()
    c.run_dir = str(tmp_path)
    c.model.hf_path = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"config.model.hf_path: .*missing HF checkpoint"):
        validate_config(c, num_devices=1)
    (tmp_path / "missing").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        validate_config(c, num_devices=1)
    c.model.source = "scratch"
    c.tokenizer.path = str(tmp_path)
    c.model.scan_unroll = 0
    with pytest.raises(ConfigError, match=r"config.model.scan_unroll: must be > 0"):
        validate_config(c, num_devices=1)
    c.model.scan_unroll = 4
    c.optimizer.b2 = 1.0
    with pytest.raises(ConfigError, match=r"config.optimizer.b2: must be in \[0, 1\)"):
        validate_config(c, num_devices=1)
    c.optimizer.b2 = 0.95
    c.data.style = "general_sft"
    with pytest.raises(ConfigError, match="config.data.style"):
        validate_config(c, num_devices=1)
    c.behavior.enabled = False
    assert validate_config(c, num_devices=8) == {"data": 1, "fsdp": 8, "tensor": 1}


OLD_STYLE_RECIPE = """from bsft_jax.run.config import default_config, load_config_file


def get_config():
    c = default_config()
    c.optimizer.lr = 1e-3
    return c
"""


def test_a_config_file_written_for_bsft_jax_run_still_loads_and_warns(tmp_path):
    """bsft_jax/run/ split into setup/ and checkpoint/ (issue 26): users' config files that import the schema
    from its old home still load, and a DeprecationWarning names the new one."""
    (tmp_path / "old_recipe.py").write_text(OLD_STYLE_RECIPE)
    with pytest.warns(DeprecationWarning, match=r"import default_config from bsft_jax\.setup\.config") as caught:
        c = load_config_file(str(tmp_path / "here.py"), "old_recipe.py")
    assert any("load_config_file from bsft_jax.setup.config" in str(w.message) for w in caught)
    expected = default_config()
    expected.optimizer.lr = 1e-3
    assert c.to_dict() == expected.to_dict()
    with pytest.warns(DeprecationWarning):
        from bsft_jax.run.config import default_config as old
    assert old is default_config
    with pytest.raises(ImportError):
        from bsft_jax.run.config import no_such_name  # noqa: F401
