"""The console's settings and the checks made before it listens: loopback by default, a
password for anything else (from the environment only), TLS files in pairs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.console.config import (
    ENV_CONSOLE_PASSWORD,
    ConsoleConfig,
    ConsoleError,
    is_loopback,
    parse_listen,
    plan_console,
)

GOOD = "correct horse battery"


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:8080", "127.0.0.1", 8080), ("[::1]:0", "::1", 0), ("0.0.0.0:80", "0.0.0.0", 80)],
)
def test_listen_addresses_parse(text: str, host: str, port: int) -> None:
    address = parse_listen(text)
    assert (address.host, address.port) == (host, port)


@pytest.mark.parametrize("text", ["8080", "localhost", ":8080", "host:http", "1.2.3.4:70000"])
def test_bad_listen_addresses_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape("HOST:PORT; use e.g. 127.0.0.1:8080")):
        parse_listen(text)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("console.example.org", False),
    ],
)
def test_only_this_machine_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_no_listen_means_no_console() -> None:
    assert plan_console(ConsoleConfig(), env={}) is None


def test_loopback_needs_no_password() -> None:
    plan = plan_console(ConsoleConfig(listen="127.0.0.1:0"), env={})
    assert plan is not None and plan.password is None and plan.address.loopback


def test_a_network_address_without_a_password_is_refused_in_one_line() -> None:
    with pytest.raises(ConsoleError) as caught:
        plan_console(ConsoleConfig(listen="0.0.0.0:8080"), env={})
    text = str(caught.value)
    assert "\n" not in text and ENV_CONSOLE_PASSWORD in text and "127.0.0.1" in text


def test_a_network_address_with_a_password_is_planned() -> None:
    plan = plan_console(ConsoleConfig(listen="0.0.0.0:8080"), env={ENV_CONSOLE_PASSWORD: GOOD})
    assert plan is not None and plan.password == GOOD and not plan.address.loopback


def test_a_short_password_is_refused() -> None:
    with pytest.raises(ConsoleError, match="shorter than 8"):
        plan_console(ConsoleConfig(listen="0.0.0.0:8080"), env={ENV_CONSOLE_PASSWORD: "abc"})


def test_tls_files_go_in_pairs_and_must_exist(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConsoleError, match="go together"):
        plan_console(ConsoleConfig(listen="127.0.0.1:0", tls_cert_file=cert), env={})
    missing = ConsoleConfig(listen="127.0.0.1:0", tls_cert_file=cert, tls_key_file=tmp_path / "k")
    with pytest.raises(ConsoleError, match="not found"):
        plan_console(missing, env={})


def test_the_config_section_forbids_unknown_keys_and_passwords() -> None:
    cfg = load_config(None, {"console.listen": "127.0.0.1:8080"}, env={})
    assert cfg.console.listen == "127.0.0.1:8080"
    with pytest.raises(ConfigError, match="THERMOSCREEN_CONSOLE_PASSWORD"):
        load_config(None, {"console.password": "x"}, env={})
    with pytest.raises(ConfigError, match=re.escape("console.listen")):
        load_config(None, {"console.listen": "nowhere"}, env={})


def test_the_password_variable_never_lands_in_the_config() -> None:
    cfg = load_config(None, {}, env={ENV_CONSOLE_PASSWORD: GOOD})
    assert GOOD not in cfg.model_dump_json()


def test_every_console_field_is_described() -> None:
    assert all(f.description for f in ConsoleConfig.model_fields.values())
