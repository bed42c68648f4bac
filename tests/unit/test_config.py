"""Config layering (YAML < THERMOSCREEN_* < CLI) and one-line errors that name where to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.capture.factory import describe_pipeline
from pipeline.config import AppConfig, ConfigError, load_config, model_dir
from pipeline.run.wiring import RunError, run, source_options

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["default.yaml", "jetson.yaml", "replay.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(REPO / "config" / name, env={})
    assert isinstance(cfg, AppConfig)


# what each shipped config says about the source (None: given on the command line)
SHIPPED_SOURCES = {
    "default.yaml": None,
    "jetson.yaml": "v4l2:///dev/video0?format=y16&profile=lepton",
    "replay.yaml": None,
}


def test_every_shipped_config_is_listed_with_its_source() -> None:
    assert sorted(SHIPPED_SOURCES) == sorted(p.name for p in (REPO / "config").glob("*.yaml"))
    for name, source in SHIPPED_SOURCES.items():
        assert load_config(REPO / "config" / name, env={}).source == source, name


def test_the_jetson_config_reads_its_lepton_as_16_bit_and_keeps_frames_fresh() -> None:
    cfg = load_config(REPO / "config" / "jetson.yaml", env={})
    assert cfg.source is not None
    launch = describe_pipeline(cfg.source, source_options(cfg))
    assert launch == (
        'v4l2src device="/dev/video0" ! video/x-raw,format=GRAY16_LE ! '
        "appsink name=sink sync=false max-buffers=1 drop=true"
    )


@pytest.mark.parametrize("name", ["default.yaml", "replay.yaml"])
def test_a_config_without_a_source_makes_run_ask_for_one(name: str) -> None:
    cfg = load_config(REPO / "config" / name, env={})
    with pytest.raises(RunError, match=r"^no source: give SOURCE on the command line"):
        run(cfg)


def test_shipped_configs_differ_where_they_should() -> None:
    jetson = load_config(REPO / "config" / "jetson.yaml", env={})
    replay = load_config(REPO / "config" / "replay.yaml", env={})
    assert jetson.model.backend == "jetson" and jetson.capture.jetson
    assert replay.mode == "replay" and replay.outbox.when_full == "block"
    # a camera config never points at the synthetic demo, and none lets a demo serve a camera
    assert jetson.model.dir.name != "demo" and not jetson.model.allow_synthetic
    assert not load_config(REPO / "config" / "default.yaml", env={}).model.allow_synthetic


def test_layers_override_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, "device_id: from-file\nmqtt:\n  host: filehost\n  port: 1000\n")
    env = {"THERMOSCREEN_MQTT__PORT": "2000", "THERMOSCREEN_DEVICE_ID": "from-env"}
    cfg = load_config(path, {"mqtt.port": 3000}, env)
    assert cfg.mqtt.host == "filehost"  # only the file set it
    assert cfg.device_id == "from-env"  # env beats file
    assert cfg.mqtt.port == 3000  # CLI beats env
    assert load_config(path, {}, env).mqtt.port == 2000


def test_env_values_parse_as_yaml_and_nest(tmp_path: Path) -> None:
    env = {
        "THERMOSCREEN_PREPROCESS__WINDOW_C": "[22, 36]",
        "THERMOSCREEN_CAPTURE__REALTIME": "true",
        "THERMOSCREEN_MQTT__TLS__ENABLED": "yes",
    }
    cfg = load_config(None, {}, env)
    assert cfg.preprocess.window_c == (22.0, 36.0)
    assert cfg.capture.realtime is True
    assert cfg.mqtt.tls.enabled is True


def test_secrets_and_unrelated_variables_are_not_config_fields() -> None:
    env = {
        "THERMOSCREEN_MQTT_PASSWORD": "s3cret",
        "THERMOSCREEN_MQTT_USERNAME": "u",
        "THERMOSCREEN_SOMETHING_ELSE": "x",
    }
    cfg = load_config(None, {}, env)
    assert "s3cret" not in cfg.model_dump_json()


def test_password_in_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  password: hunter2\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: unknown field 'mqtt\.password'") as info:
        load_config(path, {}, {})
    assert "THERMOSCREEN_MQTT_PASSWORD" in str(info.value) and "hunter2" not in str(info.value)


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  prot: 1884\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {}, {})
    msg = str(info.value)
    assert msg == f"{path}: unknown field 'mqtt.prot' (did you mean 'port'?)"
    assert "\n" not in msg


def test_unknown_env_variable_is_named() -> None:
    with pytest.raises(ConfigError, match=r"THERMOSCREEN_MQTT__PROT: unknown field 'mqtt\.prot'"):
        load_config(None, {}, {"THERMOSCREEN_MQTT__PROT": "1"})


def test_bad_value_names_origin_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "session:\n  window_frames: 0\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: field 'session\.window_frames'"):
        load_config(path, {}, {})
    with pytest.raises(ConfigError, match=r"THERMOSCREEN_MQTT__PORT: field 'mqtt\.port'"):
        load_config(path, {"session.window_frames": 3}, {"THERMOSCREEN_MQTT__PORT": "abc"})
    with pytest.raises(ConfigError, match=r"command line: field 'mode'"):
        load_config(None, {"mode": "sometimes"}, {})


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", {}, {})
    with pytest.raises(ConfigError, match=r"x\.yaml: not valid YAML at line \d"):
        load_config(write(tmp_path, "mqtt:\n  port: [1,\n"), {}, {})
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), {}, {})


def test_every_field_has_a_description() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for name, info in model.model_fields.items():  # type: ignore[attr-defined]
            if not info.description:
                missing.append(f"{model.__name__}.{name}")
            sub = info.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                missing += walk(sub)
        return missing

    assert walk(AppConfig) == []


def test_replay_never_drops_results_whatever_the_outbox_policy() -> None:
    from pipeline.run.wiring import outbox_for

    cfg = load_config(REPO / "config" / "default.yaml", env={})
    assert cfg.outbox.when_full == "drop_oldest"
    live, replay = outbox_for(cfg, live=True), outbox_for(cfg, live=False)
    assert live is not None and live.when_full == "drop_oldest"
    assert replay is not None and replay.when_full == "block"
    assert outbox_for(load_config(None, {"outbox.enabled": False}, env={}), live=False) is None


def test_cli_flags_become_dotted_overrides() -> None:
    import argparse

    from pipeline.run.command import add_arguments, overrides_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["test://", "--broker", "10.0.0.5:8883", "--follow-manifest"])
    flat = overrides_from_args(args)
    assert flat == {
        "source": "test://",
        "mqtt.host": "10.0.0.5",
        "mqtt.port": 8883,
        "model.follow_manifest": True,
    }
    cfg = load_config(None, flat, env={"THERMOSCREEN_MQTT__PORT": "1"})
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.model.follow_manifest) == ("10.0.0.5", 8883, True)
    assert cfg.capture.realtime is False  # flags not given leave the lower layers alone


def test_default_config_uses_the_real_model_once_built_else_the_demo(tmp_path: Path) -> None:
    import argparse

    from pipeline.run.command import add_arguments, overrides_from_args

    shipped = load_config(REPO / "config" / "default.yaml", env={}).model
    assert (shipped.dir, shipped.fallback_dir) == (Path("models/dmr"), Path("models/demo"))
    real, demo = tmp_path / "dmr", tmp_path / "demo"
    cfg = load_config(None, {"model.dir": str(real), "model.fallback_dir": str(demo)}, env={})
    assert model_dir(cfg.model) == demo  # not built yet: the synthetic demo (guarded)
    real.mkdir()
    (real / "model.json").write_text("{}")
    assert model_dir(cfg.model) == real
    # --model names the one model to load: a typo there must not fall back to the demo
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flat = overrides_from_args(parser.parse_args(["test://", "--model", str(tmp_path / "typo")]))
    typo = load_config(REPO / "config" / "default.yaml", flat, env={}).model
    assert model_dir(typo) == tmp_path / "typo"
