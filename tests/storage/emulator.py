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
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, __file__, str(self.port)], stdin=subprocess.PIPE,
                                        stdout=self._log, stderr=subprocess.STDOUT)
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


# ---------------------------------------------------------------------------------------------
# The emulator process. gcp-storage-emulator keeps no object generations on the wire and ignores
# preconditions, which TensorStore's GCS driver (Orbax's OCDBT checkpoints) relies on: every read
# carries ``x-goog-generation`` and conditional writes / reads / deletes use ``ifGenerationMatch``
# / ``ifGenerationNotMatch``. The handlers below add what real GCS does there (412 on a failed
# precondition, 304 on an unchanged object) and serialise requests (its in-memory store is not
# thread-safe). Nothing else of the emulator is changed.


def _serve(port: int) -> None:
    import threading
    from http import HTTPStatus

    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    lock = threading.RLock()

    def generation(storage, request):
        try:
            return storage.get_file_obj(request.params["bucket_name"], _object_name(request))["generation"]
        except NotFound:
            return None

    def precondition_failed(current, request) -> bool:
        match = request.query.get("ifGenerationMatch")
        if match:
            want = match[0]
            return (current is not None) if want == "0" else (current != want)
        return False

    def locked(handler, kind):
        def wrapped(request, response, storage, *args, **kwargs):
            with lock:
                if kind in ("write", "read", "delete") and _object_name(request) is not None:
                    current = generation(storage, request)
                    if precondition_failed(current, request):
                        response.status = HTTPStatus.PRECONDITION_FAILED
                        response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                        return None
                    not_match = request.query.get("ifGenerationNotMatch")
                    if kind == "read" and current is not None and not_match and not_match[0] == current:
                        response.status = HTTPStatus.NOT_MODIFIED
                        response["x-goog-generation"] = current
                        return None
                    if kind == "read" and current is not None:
                        response["x-goog-generation"] = current
                return handler(request, response, storage, *args, **kwargs)
        return wrapped

    def _read_or_meta(handler):
        media = locked(handler, "read")
        plain = locked(handler, "meta")

        def wrapped(request, response, storage, *args, **kwargs):
            alt = request.query.get("alt")
            return (media if alt and alt[0] == "media" else plain)(request, response, storage, *args, **kwargs)
        return wrapped

    objects.insert = locked(objects.insert, "write")
    objects.xml_upload = locked(objects.xml_upload, "write")
    objects.upload_partial = locked(objects.upload_partial, "other")
    objects.download = locked(objects.download, "read")
    objects.get = _read_or_meta(objects.get)
    objects.delete = locked(objects.delete, "delete")
    for name in ("ls", "copy", "rewrite", "compose", "patch", "batch"):
        setattr(objects, name, locked(getattr(objects, name), "other"))

    from gcp_storage_emulator.server import create_server  # reads the handlers above at import

    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    sys.stdin.read()  # until the test closes the pipe or kills the process


def _object_name(request):
    if "object_id" in request.params:
        return request.params["object_id"]  # as the emulator's own handlers look it up
    name = request.query.get("name")
    return name[0] if name else None


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
