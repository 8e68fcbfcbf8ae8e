"""A real Google Cloud Storage JSON API on 127.0.0.1 (``gcp-storage-emulator``, in memory) for the
object-store tests: gcsfs (etils.epath's backend) reaches it through ``STORAGE_EMULATOR_HOST``,
TensorStore (Orbax's array writer) through ``TENSORSTORE_GCS_HTTP_URL``."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import urllib.request

BUCKET = "disrouter-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env_for(url: str) -> dict[str, str]:
    """What a process needs to reach the emulator instead of Google (no credentials needed)."""
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GOOGLE_CLOUD_PROJECT": "test"}


class Emulator:
    """The emulator in its own process (so a test can stop it, as a store that goes away)."""

    def __init__(self, log_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process = None

    def start(self) -> "Emulator":
        code = ("import sys; from gcp_storage_emulator.server import create_server; "
                f"s = create_server('127.0.0.1', {self.port}, in_memory=True, default_bucket={BUCKET!r}); "
                "s.start(); sys.stdin.read()")
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b/{BUCKET}", timeout=2).read()
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the GCS emulator exited; see {self.log_path}")
                time.sleep(0.2)
        raise RuntimeError(f"the GCS emulator did not answer within 60 s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        if self.process is not None:
            self._log.close()
        self.process = None


def use_in_this_process(url: str, monkeypatch) -> None:
    for name, value in env_for(url).items():
        monkeypatch.setenv(name, value)
    logging.getLogger("gcsfs").setLevel(logging.ERROR)  # "could not determine bucket type": no credentials
    reset_clients()


def reset_clients() -> None:
    """gcsfs caches file-system instances (with their endpoint and listings): start afresh."""
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()
