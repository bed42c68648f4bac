"""paho's network loop, run by the publisher's client thread itself instead of paho's own
`loop_start` thread.

One thread does the socket work, keepalive and reconnect backoff beside the sending: a result
costs one thread wake-up less (paho's thread woke for each PUBLISH, through its socket pair,
and for each PUBACK), and a PUBLISH is written to the socket by the call that makes it.

`Wake` is what producers set to wake that thread: `threading.Event`'s `set`/`clear`/`is_set`,
readable by `select` beside the broker's socket. `NetworkLoop.pump` waits for either, reads and
writes what is due, keeps the connection alive (PINGREQ, a missing PINGRESP closes it) and,
while there is no connection, connects again with the configured backoff (`mqtt.
reconnect_min_s`, doubling up to `mqtt.reconnect_max_s`, back to the minimum after a CONNACK),
as paho's `loop_forever` did. paho's callbacks run inside `pump`, on this thread.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from contextlib import suppress

from paho.mqtt.enums import MQTTErrorCode

from pipeline.mqtt.client import Backoff, Client


class Wake:
    """A flag that other threads set and one thread waits for with `select` (a byte on a
    socket pair while set). `clear` comes before the work it wakes for: a `set` seen as
    already set happened before that `clear`, so the work after it sees what the setter did."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._lock = threading.Lock()
        self._set = False

    def set(self) -> None:
        if self._set:
            return
        with self._lock:
            if not self._set:
                self._set = True
                with suppress(BlockingIOError, OSError):
                    self._write.send(b"\0")

    def is_set(self) -> bool:
        return self._set

    def clear(self) -> None:
        with self._lock:
            self._set = False
            with suppress(BlockingIOError, OSError):
                while self._read.recv(64):
                    pass

    def wait(self, timeout_s: float) -> bool:
        """Sleep until set or `timeout_s` (the thread that owns no socket: tests, no broker)."""
        if not self._set:
            select.select([self._read], [], [], max(timeout_s, 0.0))
        return self._set

    def fileno(self) -> int:
        return self._read.fileno()

    def close(self) -> None:
        self._read.close()
        self._write.close()


class NetworkLoop:
    """The connection's part of the client thread's loop (see the module docstring)."""

    def __init__(self, client: Client, wake: Wake, backoff: Backoff) -> None:
        self.client = client
        self.wake = wake
        self.backoff = backoff
        self._next_connect: float | None = 0.0  # None while a socket is open

    def connected(self) -> None:
        """A CONNACK accepted the connection: the next loss waits the shortest delay again."""
        self.backoff.reset()

    def pump(self, timeout_s: float) -> None:
        """Up to `timeout_s`: wait for the broker's socket or a wake-up, then read, write and
        keep alive; without a connection, connect when the backoff says so."""
        sock = self.client.socket()
        if sock is None:
            self._offline(timeout_s)
            return
        self._next_connect = None
        pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted wait no select
        if pending is not None and pending() > 0:
            readable, writable = True, False
        else:
            try:
                fd = sock.fileno()
                wlist = [fd] if self.client.want_write() else []
                ready, can_write, _ = select.select([fd, self.wake.fileno()], wlist, [], timeout_s)
            except (OSError, ValueError):  # the socket closed under us: reading tells paho
                readable, writable = True, False
            else:
                readable, writable = fd in ready, bool(can_write)
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        if readable:
            rc = self.client.loop_read()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and writable:
            rc = self.client.loop_write()
        if self.client.socket() is not None:
            self.client.loop_misc()
        if self.client.socket() is None:  # lost: connect again after the backoff
            self._next_connect = time.monotonic() + self.backoff.next()

    def _offline(self, timeout_s: float) -> None:
        now = time.monotonic()
        if self._next_connect is None:
            self._next_connect = now + self.backoff.next()
        if now < self._next_connect:
            self.wake.wait(min(timeout_s, self._next_connect - now))
            return
        try:
            self.client.reconnect()  # raises OSError; on success the CONNECT is written
            self._next_connect = None
        except OSError:
            self._next_connect = time.monotonic() + self.backoff.next()
            callback = self.client.on_connect_fail
            if callback is not None:
                callback(self.client, self.client.user_data_get())
