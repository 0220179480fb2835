"""Typed config: precedence, coercion and errors that name the problem."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from esper.runtime.config import ConfigError, ServerConfig, load_config
from esper.runtime.settings import KafkaSettings, PostgresSettings


@dataclass(frozen=True)
class DemoConfig(PostgresSettings, KafkaSettings, ServerConfig):
    # How many widgets; exercises an int field of a service's own.
    widgets: int = 3


TABLES = {"demo": {"host", "port", "metrics_port", "postgres_dsn", "kafka_bootstrap", "widgets"},
          "other": {"host", "port", "other_only"}}


def load(**kw):
    kw.setdefault("env", {})
    return load_config(DemoConfig, "demo", known_tables=TABLES, **kw)


def test_defaults_are_valid():
    assert load().widgets == 3


def test_precedence_toml_env_flags(tmp_path):
    path = tmp_path / "esper.toml"
    path.write_text('[defaults]\nport = 7001\nother_only = "x"\n[demo]\nwidgets = 5\n')
    assert load(toml_path=path).port == 7001
    assert load(toml_path=path).widgets == 5
    cfg = load(toml_path=path, env={"ESPER_PORT": "7002"})
    assert cfg.port == 7002
    cfg = load(toml_path=path, env={"ESPER_PORT": "7002"}, overrides={"port": "7003"})
    assert cfg.port == 7003


def test_env_names_the_config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[demo]\nwidgets = 9\n")
    assert load(env={"ESPER_CONFIG": str(path)}).widgets == 9


@pytest.mark.parametrize(
    "toml,needle",
    [
        ("[demo]\nwidgetz = 1\n", "demo.widgetz"),
        ("[nosuch]\nx = 1\n", "[nosuch]"),
        ("[defaults]\nmystery = 1\n", "defaults.mystery"),
        ("[demo]\nport = 70000\n", "port: 70000"),
        ("[demo]\nport = \"abc\"\n", "port"),
        ("[demo]\nwidgets = 1.5\n", "widgets"),
        ("[demo\n", "not valid TOML"),
        ("demo = 3\n", "must be a table"),
    ],
)
def test_bad_toml_names_the_problem(tmp_path, toml, needle):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load(toml_path=path)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"ESPER_PORT": "-1"}, "port: -1"),
        ({"ESPER_PORT": "http"}, "ESPER_PORT"),
        ({"ESPER_METRICS_PORT": "99999"}, "metrics_port"),
        ({"ESPER_HOST": "not a host"}, "host"),
        ({"ESPER_POSTGRES_DSN": "mysql://x"}, "postgres_dsn"),
        ({"ESPER_KAFKA_BOOTSTRAP": "localhost"}, "kafka_bootstrap"),
        ({"ESPER_LOG_FORMAT": "xml"}, "log_format"),
        ({"ESPER_OTEL_EXPORTER": "zipkin"}, "otel_exporter"),
    ],
)
def test_bad_env_names_the_problem(env, needle):
    with pytest.raises(ConfigError) as err:
        load(env=env)
    assert needle in str(err.value)


def test_missing_file_and_unknown_flag(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(toml_path=tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="unknown setting 'bogus'"):
        load(overrides={"bogus": 1})


def test_every_registered_service_serves_its_leyline_service():
    from esper.runtime.registry import SERVICE_NAMES, grpc_service_name, load_spec

    for name in SERVICE_NAMES:
        spec = load_spec(name)
        assert spec.name == name
        assert grpc_service_name(name) in spec.grpc_services
    with pytest.raises(KeyError):
        load_spec("mystery")


@dataclass(frozen=True)
class OptionalPeerConfig(ServerConfig):
    # A peer whose calls an empty address turns off, as Tamiyo's urza_address.
    peer_address: str = "127.0.0.1:50051"
    # A switch on by default.
    publish: bool = True
    grants: tuple[str, ...] = ("*",)


def test_an_empty_env_value_is_set_not_ignored():
    """ESPER_X="" means empty or off, as the flag --x "" does; never "use the default"."""
    cfg = load_config(OptionalPeerConfig, "peer", env={
        "ESPER_PEER_ADDRESS": "", "ESPER_PUBLISH": "", "ESPER_GRANTS": " "})
    assert (cfg.peer_address, cfg.publish, cfg.grants) == ("", False, ())
    assert load_config(OptionalPeerConfig, "peer", env={}).peer_address == "127.0.0.1:50051"


@pytest.mark.parametrize("env,needle", [
    ({"ESPER_PORT": ""}, "port (from env ESPER_PORT): empty"),
    ({"ESPER_WIDGETS": " "}, "widgets (from env ESPER_WIDGETS): empty"),
    ({"ESPER_HOST": ""}, "host: must not be empty"),
    ({"ESPER_POSTGRES_DSN": ""}, "postgres_dsn"),
    ({"ESPER_KAFKA_BOOTSTRAP": ""}, "kafka_bootstrap"),
    ({"ESPER_STATE_DIR": ""}, "state_dir: must not be empty"),
])
def test_an_empty_env_value_that_cannot_be_empty_is_an_error(env, needle):
    with pytest.raises(ConfigError) as err:
        load(env=env)
    assert needle in str(err.value)


def test_tamiyo_reads_empty_peer_addresses_as_off():
    from esper.tamiyo.config import TamiyoConfig

    cfg = load_config(TamiyoConfig, "tamiyo", env={"ESPER_URZA_ADDRESS": "", "ESPER_TEZZERET_ADDRESS": ""})
    assert (cfg.urza_address, cfg.tezzeret_address) == ("", "")
