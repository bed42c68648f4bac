"""Camera profiles on crafted buffers: 30.00 C in, 30.00 C out within each profile's step."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.capture.profiles import PROFILES, ProfileError, extract_raw, get_profile, split_p2pro
from pipeline.types import Frame, FrameKind


def _frame(raw: np.ndarray, name: str) -> Frame:
    prof = get_profile(name)
    return Frame(raw, FrameKind.RAW16, 0, "cam0", 0.0, 0, scale=prof.scale_k, offset=prof.offset_k)


@pytest.mark.parametrize(("name", "raw_for_30c"), [("lepton", 30315), ("ax5", 7579)])
def test_y16_profiles_map_counts_to_kelvin(name: str, raw_for_30c: int) -> None:
    prof = get_profile(name)
    assert int(prof.from_celsius(30.0)) == raw_for_30c
    width, height = 6, 4
    buf = np.full((height, width), raw_for_30c, dtype="<u2").tobytes()
    raw = extract_raw(prof, np.frombuffer(buf, np.uint8), width, height, width * 2)
    assert raw.shape == (height, width) and raw.dtype == np.uint16
    celsius = _frame(raw, name).celsius()
    assert celsius is not None
    assert np.all(np.abs(celsius - 30.0) <= prof.resolution_c / 2 + 1e-4)


def test_lepton_exact_centikelvin() -> None:
    prof = get_profile("lepton")
    raw = np.array([[30315, 31015]], dtype=np.uint16)  # 30.00 C, 37.00 C
    np.testing.assert_allclose(prof.to_celsius(raw), [[30.0, 37.0]], atol=1e-3)


def test_y16_respects_row_padding() -> None:
    prof = get_profile("lepton")
    width, height, stride = 3, 2, 8  # 6 data bytes + 2 padding bytes per row
    rows = np.zeros((height, stride), dtype=np.uint8)
    values = np.array([[1, 2, 3], [4, 5, 60000]], dtype="<u2")
    rows[:, : width * 2] = values.view(np.uint8).reshape(height, width * 2)
    rows[:, width * 2 :] = 0xFF
    raw = extract_raw(prof, rows.reshape(-1), width, height, stride)
    np.testing.assert_array_equal(raw, values)


@pytest.mark.parametrize("name", ["p2pro", "tc001"])
def test_p2pro_bottom_half_is_raw_over_64(name: str) -> None:
    prof = get_profile(name)
    assert prof.gst_format == "YUY2" and (prof.width, prof.height) == (256, 384)
    raw_top = np.full((192, 512), 0x80, dtype=np.uint8)  # YUY2 rendered image: ignored
    counts = prof.from_celsius(np.full((192, 256), 30.0))
    counts[10, 20] = prof.from_celsius(36.5)
    buffer = np.concatenate([raw_top, counts.astype("<u2").view(np.uint8).reshape(192, 512)])
    raw = extract_raw(prof, buffer.reshape(-1), 256, 384, 512)
    assert raw.shape == (192, 256)
    celsius = prof.to_celsius(raw)
    assert abs(float(celsius[0, 0]) - 30.0) <= 1 / 128 + 1e-4
    assert abs(float(celsius[10, 20]) - 36.5) <= 1 / 128 + 1e-4
    assert int(counts[0, 0]) == round((30.0 + 273.15) * 64)


def test_p2pro_rejects_short_buffer() -> None:
    with pytest.raises(ProfileError, match="p2pro buffer"):
        split_p2pro(np.zeros(100, dtype=np.uint8), 256, 384, 512)


def test_unknown_profile_lists_known_names() -> None:
    with pytest.raises(ProfileError) as info:
        get_profile("boson")
    for name in PROFILES:
        assert name in str(info.value)


def test_profile_caps_fixed_size_wins() -> None:
    assert get_profile("p2pro").caps(640, 480) == "video/x-raw,format=YUY2,width=256,height=384"
    lepton = get_profile("lepton").caps(160, 120)
    assert lepton == "video/x-raw,format=GRAY16_LE,width=160,height=120"
    assert get_profile("ax5").caps() == "video/x-raw,format=GRAY16_LE"
