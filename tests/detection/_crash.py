"""A worker task for tests/detection/test_batch.py that kills its worker process on one CCD.

It lives in a module of its own so that spawned worker processes can import it by name.
"""

import os
import time


def die_on_boom(task):
    """Exit the worker abruptly (as an out-of-memory kill does) on the CCD named ``BOOM``; others
    take half a second, so that they are in flight when it dies, and return their name."""
    _, _, extname, _, _ = task
    if extname == "BOOM":
        os._exit(3)
    time.sleep(0.5)
    return extname


def worker_pid(task):
    """Return this worker's process id (the orphan test kills the parent and watches these)."""
    time.sleep(0.2)
    return os.getpid()
