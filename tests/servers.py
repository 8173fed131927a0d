"""Servers the tests start as subprocesses (app.py, tinygpt serve, a Space's app.py): a free port to give them,
and a wait until they answer, which fails with the server's own log if it dies or never answers."""

import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (the OS picks it; a tiny race until the server binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_answering(process: subprocess.Popen, url: str, log: Path, name: str, timeout: float = 180) -> None:
    """Return once GET `url` answers (any HTTP status); RuntimeError with the log if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except urllib.error.HTTPError:
            return  # it answered, with an error status: it is up
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{name} did not answer within {timeout:.0f} s:\n{log.read_text()}")
