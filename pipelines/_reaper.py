"""Stop what a pipeline process started when it dies without cleaning up (SIGKILL, out-of-memory kill).

Prefect's temporary API server and the worker processes of a parallel λ search are children that nothing
ties to their parent: measured, after a SIGKILL of `python -m pipelines.bisect` the server kept running, and
before this watcher the trial workers kept training and writing checkpoints beside a re-run. `watch_process()`
starts one small watcher process per pipeline process; it records the pipeline's descendants every
`INTERVAL` seconds and, once the pipeline is gone, terminates those still alive (killing them after
`GRACE` seconds). A descendant started less than `INTERVAL` before the kill can be missed.

The watcher runs this file as a script and imports only the standard library and psutil.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

INTERVAL = 0.5  # seconds between snapshots of the descendants
GRACE = 5.0  # seconds between SIGTERM and SIGKILL

_watcher: subprocess.Popen | None = None


def watch_process() -> None:
    """Start the watcher for this process (once; later calls do nothing)."""
    global _watcher
    if _watcher is None or _watcher.poll() is not None:
        _watcher = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(os.getpid())],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, close_fds=True)


def reap_when_gone(parent: int) -> None:
    """Snapshot `parent`'s descendants until it is gone (this process is re-parented), then stop them."""
    import psutil

    me = os.getpid()
    known: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(parent)
    except psutil.NoSuchProcess:
        return
    while os.getppid() == parent:
        try:
            children = root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        known = {p.pid: p for p in [*known.values(), *children] if p.pid != me and p.is_running()}
        time.sleep(INTERVAL)
    alive = [p for p in known.values() if p.is_running()]  # psutil checks the start time: no reused pid
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(alive, timeout=GRACE)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: outlive the pipeline
    reap_when_gone(int(sys.argv[1]))
