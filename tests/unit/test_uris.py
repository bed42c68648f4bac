"""URIs are checked part by part before anything starts, their values are kept out of launch
strings, and credentials are masked wherever a URI is shown."""

from __future__ import annotations

import pytest

from pipeline.capture.base import SourceError, SourceOptions, parse_uri
from pipeline.capture.factory import describe_pipeline, open_source
from pipeline.capture.launch import build_launch
from pipeline.output.base import OutputError, parse_output_uri
from pipeline.uri import redact, valid_host

X86 = SourceOptions(jetson=False)


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        (
            "rtp://127.0.0.1 filesrc location=secret.txt ! tcpclientsink host=127.0.0.1:15000",
            "contains spaces or control characters",
        ),
        ("rtp://127.0.0.1:5000 ! fakesink", "contains spaces or control characters"),
        ("rtp://10.0.0.2:5000/path", "give host and port as rtp://HOST:PORT"),
        ("rtp://10.0.0.2:5000?ttl=9", "give host and port as rtp://HOST:PORT"),
        ("rtp://user:pw@10.0.0.2:5000", "give host and port as rtp://HOST:PORT"),
        ("rtp://10.0.0.2:0", "the port must be a number from 1 to 65535"),
        ("rtp://10.0.0.2:99999", "the port must be a number from 1 to 65535"),
        ("rtp://-evil-:5000", "host '-evil-' is not an IP address or a host name"),
        ("rtp://10.0.0.2", "give host and port"),
        ("display://0 ! filesink", "give the display as display://0"),
        ("out\n.mp4", "control characters"),
    ],
)
def test_bad_output_uris_are_one_line(uri: str, reason: str) -> None:
    with pytest.raises(OutputError) as err:
        parse_output_uri(uri)
    assert reason in str(err.value) and "\n" not in str(err.value).replace(uri, "")
    assert "pw@" not in str(err.value)


@pytest.mark.parametrize(
    ("uri", "host", "port"),
    [("rtp://10.0.0.2:5000", "10.0.0.2", 5000), ("rtp://[::1]:5004", "::1", 5004),
     ("rtp://viewer.clinic.local:6000/", "viewer.clinic.local", 6000)],
)  # fmt: skip
def test_good_rtp_uris(uri: str, host: str, port: int) -> None:
    parsed = parse_output_uri(uri)
    assert (parsed.host, parsed.port) == (host, port)


def test_rtsp_credentials_go_to_properties_and_are_masked_when_shown() -> None:
    uri = "rtsp://admin:hunter2@10.0.0.5:8554/live?channel=1"
    plan = build_launch(parse_uri(uri), X86, live=True)
    assert "hunter2" not in plan.launch.template and "admin" not in plan.launch.template
    props = {(p.name, p.value) for p in plan.launch.props}
    assert ("location", "rtsp://10.0.0.5:8554/live?channel=1") in props
    assert {("user-id", "admin"), ("user-pw", "hunter2")} <= props
    shown = describe_pipeline(uri, X86)
    assert shown.startswith(
        'rtspsrc location="rtsp://10.0.0.5:8554/live?channel=1" user-id="admin" '
        'user-pw="***" latency=200 ! decodebin'
    )
    assert "hunter2" not in shown
    assert open_source(uri, X86).uri == "rtsp://admin:***@10.0.0.5:8554/live?channel=1"


def test_source_values_never_enter_the_launch_template() -> None:
    tricky = 'file:///rec/a" ! filesink location="/tmp/pwn.mp4'
    plan = build_launch(parse_uri(tricky), X86, live=False)
    assert plan.launch.template.startswith("filesrc name=src ! decodebin")
    assert "pwn" not in plan.launch.template
    with pytest.raises(SourceError, match="give the device as a path"):
        build_launch(parse_uri("v4l2:///dev/video0 ! filesrc location=x"), X86, live=True)
    with pytest.raises(SourceError, match="not a usable RTSP address"):
        build_launch(parse_uri("rtsp://cam/live ! fakesink"), X86, live=True)


def test_errors_about_a_source_never_show_its_password() -> None:
    assert parse_uri("rtsp://u:topsecret@cam/live").shown == "rtsp://u:***@cam/live"
    with pytest.raises(SourceError) as err:
        parse_uri("ftp://u:topsecret@host/x")
    assert "topsecret" not in str(err.value) and "u:***@host" in str(err.value)


def test_redact_and_valid_host() -> None:
    assert redact("see rtsp://a:b@h/x and rtsp://c@h/y") == "see rtsp://a:***@h/x and rtsp://c@h/y"
    assert redact("postgresql://u:pw@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert all(valid_host(h) for h in ("10.1.2.3", "::1", "cam-1.clinic.local", "localhost"))
    assert not any(valid_host(h) for h in ("", "a b", "-a", "a..b", "x" * 64, "h;rm"))
