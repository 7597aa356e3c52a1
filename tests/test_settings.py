"""Settings: defaults need nothing; env and a TOML file override them."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatplane.settings import EMBEDDED_MODEL, Settings


def test_defaults_are_a_sqlite_file_on_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("CHATPLANE_DATA_DIR", "CHATPLANE_DATABASE_URL", "CHATPLANE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    settings = Settings()
    assert settings.data_dir == tmp_path / ".local/share/chatplane"
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path}/.local/share/chatplane/chatplane.db"
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8000)
    assert settings.model_names == {EMBEDDED_MODEL}
    assert settings.bootstrap_api_key is None


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHATPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CHATPLANE_SERVER__PORT", "9123")
    monkeypatch.setenv("CHATPLANE_DATABASE_URL", "postgres://u@db/x")
    settings = Settings()
    assert settings.data_dir == tmp_path
    assert settings.server.port == 9123
    assert settings.resolved_database_url == "postgresql+asyncpg://u@db/x"
    assert not settings.is_sqlite


def test_config_file_with_providers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "chatplane.toml"
    config.write_text(
        """
default_model = "gpt-4.1-mini"
[server]
port = 9001
[[providers]]
name = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
models = [{ name = "gpt-4.1-mini", input_per_million = 0.4, output_per_million = 1.6 }]
"""
    )
    monkeypatch.setenv("CHATPLANE_CONFIG", str(config))
    monkeypatch.setenv("CHATPLANE_SERVER__PORT", "9002")  # env beats the file
    settings = Settings()
    assert settings.server.port == 9002
    assert settings.default_model == "gpt-4.1-mini"
    assert settings.model_names == {EMBEDDED_MODEL, "gpt-4.1-mini"}
    assert settings.providers[0].models[0].output_per_million == 1.6


def test_bad_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATPLANE_SERVER__PORT", "not-a-port")
    with pytest.raises(ValueError, match="port"):
        Settings()
