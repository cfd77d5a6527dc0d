"""Without multivae, dymo still imports and the MultiVae recoverers fail with the install command.

Runs in every venv: the absence is simulated by blocking the import (``sys.modules["multivae"] =
None``), so it also holds where multivae is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from dymo.errors import ConfigError
from dymo.recovery.registry import RECOVERERS, get_recoverer, load_recoverer

HINT = "pip install 'dymo[multivae]' (needs torch==2.14.1 torchvision==0.29.1"


@pytest.fixture
def no_multivae(monkeypatch):
    monkeypatch.setitem(sys.modules, "multivae", None)  # `import multivae` now raises ImportError


def test_dymo_imports_without_multivae() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["multivae"] = None
        import dymo.recovery
        import dymo.recovery.multivae
        from dymo.recovery import RECOVERERS, get_recoverer
        assert {"mmvae-plus", "cmvae"} <= set(RECOVERERS)
        try:
            get_recoverer("mmvae-plus")
        except ImportError as e:
            print("ERR", e)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ERR" in done.stdout and HINT in done.stdout


@pytest.mark.parametrize("kind", ["mmvae-plus", "cmvae"])
def test_get_recoverer_without_multivae_names_the_install_command(kind, no_multivae) -> None:
    assert kind in RECOVERERS
    with pytest.raises(ConfigError, match="could not be imported") as info:
        get_recoverer(kind, epochs=1)
    assert HINT in str(info.value)
    assert isinstance(info.value, ImportError)  # catchable as either


def test_loading_a_saved_multivae_recoverer_without_multivae(tmp_path, no_multivae) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"format": 1, "kind": "cmvae", "config": {"model": "cmvae"}, "specs": []})
    )
    with pytest.raises(ConfigError) as info:
        load_recoverer(tmp_path)
    assert HINT in str(info.value)
