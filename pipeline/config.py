"""Configuration: pydantic v2 models, unknown keys forbidden, loaded once and passed down.

Secrets (MQTT password) come only from the environment. This module holds the MQTT and outbox
settings used by the publisher and the logger, the runner's settings (`AppConfig`) and
`load_config`, which layers a YAML file, `THERMOSCREEN_*` environment variables and CLI flags.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.console.config import ENV_CONSOLE_PASSWORD, ConsoleConfig
from pipeline.exam.config import ExamConfig
from pipeline.preprocess import PreprocessConfig
from pipeline.types import ID_PATTERN

ENV_PREFIX = "THERMOSCREEN_"
ENV_MQTT_USERNAME = "THERMOSCREEN_MQTT_USERNAME"
ENV_MQTT_PASSWORD = "THERMOSCREEN_MQTT_PASSWORD"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    enabled: bool = Field(default=False, description="Connect with TLS.")
    ca_file: Path | None = Field(
        default=None, description="CA certificate that signed the broker's."
    )
    cert_file: Path | None = Field(default=None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(default=None, description="Client private key (mutual TLS).")
    insecure: bool = Field(
        default=False, description="Skip hostname verification (testing only; never in a clinic)."
    )


class MqttConfig(_Strict):
    host: str = Field(default="127.0.0.1", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 for TLS).")
    topic_prefix: str = Field(default="thermoscreen", description="First topic level.")
    client_id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="MQTT client id; default thermoscreen-<device_id>.",
    )
    keepalive_s: int = Field(default=30, ge=5, description="MQTT keepalive in seconds.")
    reconnect_min_s: float = Field(default=1.0, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Longest reconnect delay.")
    result_expiry_s: int = Field(
        default=86400, ge=1, description="MQTT v5 message expiry on result messages."
    )
    session_expiry_s: int = Field(
        default=7 * 86400, ge=0, description="Session expiry for persistent (logger) sessions."
    )
    stats_interval_s: float = Field(
        default=10.0, gt=0, description="Seconds between stats messages."
    )
    username: str | None = Field(
        default=None, description=f"User name; overridden by ${ENV_MQTT_USERNAME}."
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings.")

    def resolved_username(self) -> str | None:
        return os.environ.get(ENV_MQTT_USERNAME) or self.username

    @staticmethod
    def password() -> str | None:
        """Secrets come only from the environment, never from a config file."""
        return os.environ.get(ENV_MQTT_PASSWORD) or None


class OutboxConfig(_Strict):
    enabled: bool = Field(
        default=True, description="Write results to a durable outbox before publish."
    )
    path: Path = Field(
        default=Path("var/outbox.sqlite"), description="SQLite file holding unacknowledged results."
    )
    max_messages: int = Field(
        default=100_000, ge=1, description="Bound on unacknowledged results kept on disk."
    )
    when_full: Literal["block", "drop_oldest"] = Field(
        default="block",
        description="At the bound: block the producer (replay backpressure) or drop the oldest "
        "unacknowledged result and count it (live).",
    )
    synchronous: Literal["normal", "full"] = Field(
        default="normal",
        description="SQLite synchronous mode: normal survives a crash of the process (WAL); "
        "full also survives a power cut, at one fsync per result.",
    )
    confirm: Literal["auto", "broker", "logger"] = Field(
        default="auto",
        description="When a result leaves the outbox. logger: when a logger's `stored` message "
        "confirms it (survives a broker crash; set it where `thermoscreen log` runs). broker: "
        "at the broker's PUBACK (no logger deployed). auto: broker until a logger has confirmed "
        "a result to this outbox once, logger from then on.",
    )
    confirm_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Re-send a result the broker acknowledged when no logger confirmation has "
        "arrived for this long (doubling per re-send, up to 300 s).",
    )
    retention_s: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="An acknowledged result no logger confirms within this long leaves the "
        "outbox, counted as unconfirmed.",
    )


# --- the runner's settings -------------------------------------------------------------------


class CaptureConfig(_Strict):
    fps: float = Field(
        default=10.0, gt=0, description="Frame rate of the synthetic test:// stream (frames/s)."
    )
    realtime: bool = Field(
        default=False,
        description="Replay recordings at their own frame rate instead of as fast as possible.",
    )
    profile: str | None = Field(
        default=None,
        description="Radiometric camera profile (lepton, p2pro, tc001, ax5); null for none.",
    )
    width: int | None = Field(default=None, ge=1, description="Ask the camera for this width.")
    height: int | None = Field(default=None, ge=1, description="Ask the camera for this height.")
    jetson: bool = Field(
        default=False, description="Use Jetson elements (nvv4l2decoder, nvvidconv) in pipelines."
    )
    max_frame_width: int = Field(
        default=4096,
        ge=1,
        description="Widest frame accepted (pixels); wider images and streams are refused "
        "from their header or caps before they are decoded.",
    )
    max_frame_height: int = Field(
        default=4096,
        ge=1,
        description="Tallest frame accepted (pixels); see max_frame_width.",
    )
    loop: bool = Field(default=False, description="Restart a recording at its end (demo kiosks).")
    reconnect_min_s: float = Field(
        default=1.0, gt=0, description="First delay before rebuilding a lost live source."
    )
    reconnect_max_s: float = Field(
        default=30.0, gt=0, description="Longest delay between live source rebuilds."
    )
    replay_stall_s: float = Field(
        default=30.0,
        ge=0,
        description="Replay: end with an error when the source delivers nothing for this long "
        "(a stuck decoder); 0 waits forever.",
    )
    read_timeout_s: float = Field(
        default=0.5,
        gt=0,
        description="How long one read waits for a frame before re-checking stop.",
    )
    decode_workers: int | None = Field(
        default=None,
        ge=0,
        description="Folder replays (matrices, PNGs): files decoded ahead at once, in order, on "
        "their own threads; null: one per core, at most 2; 0: each file on the capture thread.",
    )


class ModelConfig(_Strict):
    dir: Path = Field(
        default=Path("models/demo"),
        description="Model directory (model.onnx, labels.txt, model.json); relative to the "
        "working directory.",
    )
    fallback_dir: Path | None = Field(
        default=None,
        description="Model directory used when `dir` holds no model.json yet (e.g. the synthetic "
        "demo until `make model-dmr` has built the real model); the synthetic guard still "
        "applies to it. null: no fallback. `--model` on the command line disables it.",
    )
    backend: Literal["auto", "onnxruntime", "jetson"] = Field(
        default="auto",
        description="Inference backend; auto picks jetson when jetson-inference "
        "is importable, else ONNX Runtime.",
    )
    threshold: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="imageNet top-1 threshold: classes below it are skipped.",
    )
    top_k: int = Field(default=2, ge=1, description="How many classes each result lists.")
    intra_op_threads: int | None = Field(
        default=None,
        ge=1,
        description="ONNX Runtime intra-op threads per inference; null: the cores shared out "
        "between replay_workers (ORT's own choice with one worker).",
    )
    replay_workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto",
        description="Frames classified at once in a replay, results still published in order. "
        "auto: one per CPU core, at most 4, with ONNX Runtime on the CPU; else 1. Live always "
        "uses 1: one frame on every core gives the lowest latency.",
    )
    follow_manifest: bool = Field(
        default=False,
        description="Use the model manifest's preprocessing when it differs from `preprocess` "
        "instead of refusing to start.",
    )
    allow_synthetic: bool = Field(
        default=False,
        description="Let a model whose manifest says `synthetic: true` (a pipeline demo, not a "
        "medical model) serve a live camera; everything it produces still says SYNTHETIC MODEL. "
        "Replays never need it.",
    )


def model_dir(model: ModelConfig) -> Path:
    """The directory to load: `dir` when it holds a model.json or no fallback is set (loading then
    names what is missing), else `fallback_dir`."""
    if model.fallback_dir is None or (model.dir / "model.json").is_file():
        return model.dir
    return model.fallback_dir


class SessionConfig(_Strict):
    window_frames: int = Field(
        default=10, ge=1, description="Rolling verdict over the last N classified frames."
    )
    method: Literal["mean", "majority"] = Field(
        default="mean",
        description="mean: average the scores over the window; majority: vote of per-frame labels.",
    )
    threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Operating threshold on the positive class; null takes the manifest's "
        "`threshold` (and argmax when the manifest has none).",
    )
    use_manifest_threshold: bool = Field(
        default=True,
        description="Take the operating threshold from model.json when `threshold` is null; "
        "false means argmax semantics.",
    )
    state_interval_s: float = Field(
        default=0.5,
        ge=0,
        description="The retained `state` message goes out when the rolling verdict's label "
        "changes, else at most this often while results arrive (0 = after every result); the "
        "final state always goes out when the session ends.",
    )


class QueueConfig(_Strict):
    replay_frames: int = Field(
        default=8, ge=1, description="Bounded capture->classify queue for replays (backpressure)."
    )
    results: int = Field(
        default=32, ge=1, description="Bounded classify->publish queue (blocks when full)."
    )
    output: int = Field(
        default=4, ge=1, description="Annotated output queue; live drops the oldest and counts it."
    )


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class AppConfig(_Strict):
    """Everything `thermoscreen run` needs, from config/*.yaml, THERMOSCREEN_* and CLI flags."""

    device_id: str = Field(
        default="edge-01", pattern=ID_PATTERN, description="This device's id (MQTT topic level)."
    )
    camera_id: str = Field(
        default="cam0", pattern=ID_PATTERN, description="This camera's id (MQTT topic level)."
    )
    source: str | None = Field(
        default=None,
        description="Source URI: file://rec.mp4, v4l2:///dev/video0, csi://0, rtsp://…, dmr://dir, "
        "a folder of PNG16 frames, or test://.",
    )
    output: str | None = Field(
        default=None,
        description="Annotated output URI (file://out.mp4, display://0, rtp://host:port) or null.",
    )
    mode: Literal["auto", "live", "replay"] = Field(
        default="auto",
        description="live keeps the newest frame and drops (counted); replay blocks and drops "
        "nothing; auto decides from the source.",
    )
    capture: CaptureConfig = Field(default_factory=CaptureConfig, description="Capture settings.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model and backend.")
    preprocess: PreprocessConfig = Field(
        default_factory=PreprocessConfig,
        description="Rendering and equalization; must match the model manifest.",
    )
    session: SessionConfig = Field(
        default_factory=SessionConfig, description="Verdict smoothing and state publishing."
    )
    exam: ExamConfig = Field(
        default_factory=ExamConfig,
        description="The screening exam: records folder, acclimatization and quality gates.",
    )
    console: ConsoleConfig = Field(
        default_factory=ConsoleConfig,
        description="The operator's web console (live view, exam controls, /healthz, "
        "/metrics); off unless `listen` is set.",
    )
    queues: QueueConfig = Field(default_factory=QueueConfig, description="Queue sizes.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Broker connection.")
    outbox: OutboxConfig = Field(
        default_factory=OutboxConfig, description="Durable store of unacknowledged results."
    )
    flush_timeout_s: float = Field(
        default=10.0, ge=0, description="At shutdown, wait this long for the outbox to empty."
    )
    log_level: LogLevel = Field(default="INFO", description="Logging level.")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is one line naming where and the fix."""


ENV_RESERVED = frozenset({ENV_MQTT_USERNAME, ENV_MQTT_PASSWORD, ENV_CONSOLE_PASSWORD})
_Tree = dict[str, Any]


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> AppConfig:
    """YAML file, then THERMOSCREEN_* environment, then `overrides` (CLI flags, highest).

    Environment names: `THERMOSCREEN_<FIELD>` for a top-level field and `__` between nested
    levels, e.g. `THERMOSCREEN_MQTT__PORT=1884`, `THERMOSCREEN_PREPROCESS__WINDOW_C=[22,36]`
    (values are parsed as YAML scalars/lists). `overrides` keys may be dotted (`mqtt.host`).
    The MQTT user name and password are read by MqttConfig itself and never stored in files.
    """
    env = os.environ if env is None else env
    layers: list[tuple[str, _Tree]] = []
    if path is not None:
        layers.append((str(path), _read_yaml(Path(path))))
    layers.append(("environment", _env_tree(env)))
    layers.append(("command line", _expand_dotted(dict(overrides or {}))))
    merged: _Tree = {}
    for origin, tree in layers:
        _check_known(tree, AppConfig, origin, "")
        _deep_merge(merged, tree)
    try:
        return AppConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, layers)) from exc


def _read_yaml(path: Path) -> _Tree:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass --config with an existing file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}; fix the syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: top level must be a mapping of fields, got {type(data).__name__}"
        )
    return data


def _env_tree(env: Mapping[str, str]) -> _Tree:
    """THERMOSCREEN_MQTT__PORT -> {"mqtt": {"port": ...}}. A name without `__` counts only when
    it is a top-level field, so unrelated THERMOSCREEN_* variables (secrets, other tools) pass."""
    tree: _Tree = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if "__" not in key and key not in AppConfig.model_fields:
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment {name}: value is not valid YAML; quote it") from exc
        branch = _nest(key.split("__"), value, f"environment {name}")
        _check_known(branch, AppConfig, f"environment {name}", "")
        _deep_merge(tree, branch)
    return tree


def _expand_dotted(flat: dict[str, Any]) -> _Tree:
    tree: _Tree = {}
    for key, value in flat.items():
        _deep_merge(tree, _nest(key.split("."), value, "command line"))
    return tree


def _nest(parts: list[str], value: Any, origin: str) -> _Tree:
    if any(not p for p in parts):
        raise ConfigError(f"{origin}: empty field name in {'.'.join(parts)!r}")
    node: Any = value
    for part in reversed(parts):
        node = {part: node}
    return dict(node)


def _deep_merge(into: _Tree, new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _check_known(tree: Mapping[str, Any], model: type[BaseModel], origin: str, prefix: str) -> None:
    """Unknown keys -> "origin: unknown field 'mqtt.prot' (did you mean 'port'?)"."""
    fields = model.model_fields
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(fields)}"
            if "password" in str(key).lower():
                env = ENV_CONSOLE_PASSWORD if prefix.startswith("console") else ENV_MQTT_PASSWORD
                hint = f"secrets are read only from ${env}, never from config"
            raise ConfigError(f"{origin}: unknown field '{dotted}' ({hint})")
        sub = _submodel(fields[key].annotation)
        if sub is not None and isinstance(value, dict):
            _check_known(value, sub, origin, f"{dotted}.")


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _one_line(exc: ValidationError, layers: list[tuple[str, _Tree]]) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    dotted = ".".join(loc)
    origin = "config"
    for name, tree in layers:  # the highest layer that set this field is where to fix it
        if _has_path(tree, loc):
            origin = name
    if origin == "environment":
        origin = f"environment {ENV_PREFIX}{'__'.join(p for p in loc if not p.isdigit()).upper()}"

    given = (
        f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
    )
    return f"{origin}: field '{dotted}': {err['msg']}{given}; fix the value"


def _has_path(tree: Mapping[str, Any], loc: list[str]) -> bool:
    node: Any = tree
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True
