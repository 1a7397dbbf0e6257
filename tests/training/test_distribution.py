"""kercr.training.distribution: who is the chief, and TF_CONFIG checked before TensorFlow's server starts.

Real multi-worker training (two processes on localhost) is in tests/training/test_run.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from kercr.config import ConfigError
from kercr.training.distribution import LostWorkerError, _check_cluster, _wait_for_peers, is_chief, lost_worker, tf_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_chief_is_the_chief_task_else_worker_0(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert is_chief() and tf_config() == {}
    for cluster, task, chief in (({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 0}, True),
                                 ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 1}, False),
                                 ({"chief": ["c:1"], "worker": ["a:1"]}, {"type": "worker", "index": 0}, False),
                                 ({"chief": ["c:1"], "worker": ["a:1"]}, {"type": "chief", "index": 0}, True)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        assert is_chief() is chief, (cluster, task)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG is not valid JSON"):
        tf_config()


def test_a_bad_task_or_a_taken_port_is_named_before_tensorflow_starts():
    free = _free_port()
    cluster = {"worker": [f"localhost:{free}", "localhost:1"]}
    _check_cluster({"cluster": cluster, "task": {"type": "worker", "index": 0}})  # fine
    for task, message in ((None, "no task"), ({"type": "ps", "index": 0}, "'ps' is not in its cluster"),
                          ({"type": "worker", "index": 2}, "index 2 is not one of the 2 worker"),
                          ({"type": "worker", "index": True}, "index True")):
        with pytest.raises(ConfigError, match=message):
            _check_cluster({"cluster": cluster, **({} if task is None else {"task": task})})
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"localhost:{port} .*cannot be used.*pick a free port"):
            _check_cluster({"cluster": {"worker": [f"localhost:{port}"]}, "task": {"type": "worker", "index": 0}})


def test_a_worker_waits_for_the_others_in_python_and_names_the_missing_one(monkeypatch):
    """TensorFlow would wait an hour in C++, silent and deaf to Ctrl-C; kercr waits where signals work,
    lets the others see it meanwhile, and names the worker that never came."""
    mine, missing = _free_port(), _free_port()
    config = {"cluster": {"worker": [f"localhost:{mine}", f"localhost:{missing}"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("KERCR_WORKER_WAIT_S", "1.5")
    with pytest.raises(ConfigError, match=f"still no worker 1 at localhost:{missing} .*KERCR_WORKER_WAIT_S"):
        _wait_for_peers(config)
    with socket.socket() as other:  # worker 1 listening: no wait
        other.bind(("", missing))
        other.listen()
        _wait_for_peers(config)
        # ... and while a worker waits, it listens on its own port, so that the others see it.
        seen = []
        config_of_1 = {"cluster": config["cluster"], "task": {"type": "worker", "index": 1}}
        monkeypatch.setenv("KERCR_WORKER_WAIT_S", "3")
        other.close()
        waiting = threading.Thread(target=lambda: seen.append(_safe_wait(config_of_1)))
        waiting.start()
        try:
            for _ in range(40):
                try:
                    socket.create_connection(("localhost", missing), timeout=1).close()
                    seen.append("listening")
                    break
                except OSError:
                    time.sleep(0.05)
        finally:
            waiting.join()
        assert seen[0] == "listening" and "still no worker 0" in seen[1]
    _wait_for_peers({"cluster": {"worker": [f"localhost:{mine}"]}, "task": {"type": "worker", "index": 0}})  # alone
    if socket.has_ipv6:  # an IPv6 peer as TF_CONFIG writes it, "[::1]:PORT"
        try:
            other = socket.create_server(("::1", missing), family=socket.AF_INET6)
        except OSError:
            return
        with other:
            _wait_for_peers({"cluster": {"worker": [f"[::1]:{mine}", f"[::1]:{missing}"]},
                             "task": {"type": "worker", "index": 0}})


def _safe_wait(config) -> str:
    try:
        _wait_for_peers(config)
        return "returned"
    except ConfigError as err:
        return str(err)


def test_a_lost_worker_is_named_with_how_to_resume(monkeypatch):
    """What the surviving worker prints when another is killed mid-epoch (the real two-process case:
    tests/training/test_run.py); TensorFlow's own error is a page of graph nodes."""
    tf = pytest.importorskip("tensorflow")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["hostA:2222", "hostB:2222"]},
                                                "task": {"type": "worker", "index": 0}}))
    err = tf.errors.UnavailableError(None, None, "Graph execution error:\n\nDetected at node adam/CollectiveReduceV2\n"
                                     "Collective ops is aborted by: Error reported from /job:worker/replica:0/task:1: "
                                     "The following tasks are unhealthy (stopped sending heartbeats):\n")
    lost = lost_worker(err)
    assert isinstance(lost, LostWorkerError) and isinstance(lost, ConnectionError)
    assert "lost worker 1 at hostB:2222" in str(lost) and "stopped sending heartbeats)" in str(lost)
    assert "run the same command again on every worker to resume" in str(lost)
    # Named by its address alone, beside this worker's own task.
    err = tf.errors.UnavailableError(None, None, "Detected at node /job:worker/replica:0/task:0/device:CPU:0\n"
                                     "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.2:2222: "
                                     "Failed to connect to remote host: Connection refused")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["10.0.0.1:2223", "10.0.0.2:2222"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert "lost worker 1 at 10.0.0.2:2222" in str(lost_worker(err))
    # One port on every host, as clusters usually are: the host decides; IPv6 as TensorFlow writes it.
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222",
                                                                       "10.0.0.3:2222", "[fd00::4]:2222"]},
                                                "task": {"type": "worker", "index": 0}}))
    for address, named in (("ipv4:10.0.0.3:2222", "worker 2 at 10.0.0.3:2222"),
                           ("ipv6:[fd00::4]:2222", "worker 3 at [fd00::4]:2222"),
                           ("ipv4:10.0.0.9:2222", "another worker")):
        err = tf.errors.UnavailableError(None, None, f"failed to connect to all addresses; last error: {address}")
        assert f"lost {named}" in str(lost_worker(err)), address
    assert lost_worker(ValueError("not TensorFlow's")) is None
    assert lost_worker(tf.errors.InvalidArgumentError(None, None, "a shape")) is None
