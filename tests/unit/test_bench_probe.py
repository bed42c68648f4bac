"""The benchmark's in-process sampler names threads right even when it sees them early."""

from __future__ import annotations

import threading

from pipeline.devtools.bench.probe import ModelClock, name_this_thread, sample


def test_a_thread_seen_before_it_names_itself_gets_its_name_later() -> None:
    """A stage thread sampled between its start and its naming must not stay under the main
    thread's inherited name (it would be counted as a native pool for the whole window)."""
    started, named, done, release = (threading.Event() for _ in range(4))
    tid: list[int] = []

    def body() -> None:
        tid.append(threading.get_native_id())
        started.set()
        named.wait(10)
        name_this_thread("thermoscreen-mqtt-publisher")
        done.set()
        release.wait(10)  # stays alive until the second sample

    thread = threading.Thread(target=body)
    thread.start()
    try:
        assert started.wait(10)
        names: dict[int, str] = {}
        first = sample(ModelClock(), names)["threads"][str(tid[0])][0]
        named.set()
        assert done.wait(10)
        second = sample(ModelClock(), names)["threads"][str(tid[0])][0]
    finally:
        named.set()
        release.set()
        thread.join(10)
    assert first != "mqtt-publisher"
    assert second == "mqtt-publisher"
