"""A private mosquitto on a free loopback port: the demo, the benchmark and the tests start one.

Only ever listens on 127.0.0.1. mosquitto 2.x with `listener PORT 127.0.0.1` and
`allow_anonymous true` is an open broker for this machine alone, which is what a demo wants.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"


class BrokerError(RuntimeError):
    """mosquitto could not be started; the message is one line naming the fix or the log."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def mosquitto_exe() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).is_file():
        raise BrokerError("mosquitto not found; install it with `make setup` (apt mosquitto)")
    return exe


@dataclass
class LocalBroker:
    """A mosquitto process that can be stopped and started again on the same port.

    `config_text` replaces the default anonymous loopback listener (auth, TLS, ACL tests);
    `wait_port` is the port probed for readiness when that config listens elsewhere.
    `persistence` keeps queued messages across a restart; `stay_root` stops mosquitto from
    dropping to its own user when run as root (it could not read files in private tmp dirs).
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    config_text: str | None = None
    wait_port: int | None = None
    persistence: bool = False
    stay_root: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    host = HOST

    def config(self) -> str:
        text = self.config_text
        if text is None:
            text = f"listener {self.port} {HOST}\nallow_anonymous true\n"
        if self.persistence:
            text += f"persistence true\npersistence_location {self.workdir}/\n"
        if self.stay_root and os.geteuid() == 0:
            text += "user root\n"
        return text

    def start(self, timeout_s: float = 10.0) -> None:
        exe = mosquitto_exe()
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config())
        with (self.workdir / "mosquitto.log").open("ab") as log:
            self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=log)
        self._wait_ready(self.wait_port or self.port, timeout_s)

    def _wait_ready(self, port: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with code {self.proc.returncode}; "
                    f"see {self.workdir / 'mosquitto.log'}"
                )
            try:
                with socket.create_connection((HOST, port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {HOST}:{port} within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing mosquitto holds since its last autosave survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def version(self) -> str:
        out = subprocess.run(
            [mosquitto_exe(), "-h"], capture_output=True, text=True, check=False
        ).stdout
        first = out.splitlines()[0] if out else "?"
        return first.replace("mosquitto version ", "").strip()

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        _t: type[BaseException] | None,
        _e: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()
