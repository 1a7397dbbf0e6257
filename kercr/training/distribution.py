"""Distributed training: who is the chief of a multi-worker cluster, the tf.distribute strategy of
``--strategy``, and what Keras 3 needs to ``fit`` under ``MultiWorkerMirroredStrategy``.

The cluster comes from ``TF_CONFIG`` (tf.distribute's multi-worker convention); only the chief
writes a run's files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time

import keras

from kercr._net import listens
from kercr.config import ConfigError

__all__ = ["LostWorkerError", "build_from_local_batch", "gather_ints", "is_chief", "lost_worker", "make_strategy",
           "tf_config"]

logger = logging.getLogger(__name__)

#: Seconds a multi-worker run waits for the other workers to start (``KERCR_WORKER_WAIT_S`` overrides it).
WORKER_WAIT_S = 600.0
#: Seconds between two "still waiting" lines.
WAIT_REPORT_S = 30.0


def tf_config() -> dict:
    """The cluster and task of a multi-worker run, from the ``TF_CONFIG`` environment variable ({} if unset)."""
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError as err:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({err}); see tf.distribute's multi-worker guide.") from None


def is_chief() -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster (TF_CONFIG)."""
    task = tf_config().get("task", {})
    kind, index = task.get("type"), task.get("index", 0)
    if kind in (None, "chief"):
        return True
    has_chief = "chief" in tf_config().get("cluster", {})
    return kind == "worker" and index == 0 and not has_chief


def make_strategy(name: str):
    """The tf.distribute strategy for ``name`` (None: the backend's default, no distribution)."""
    if name in ("auto", "none"):
        return None
    if keras.backend.backend() != "tensorflow":
        raise ConfigError(
            f"strategy={name!r} needs the TensorFlow backend (KERAS_BACKEND={keras.backend.backend()}); "
            "use --strategy none, or unset KERAS_BACKEND."
        )
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if not tf_config().get("cluster"):
        raise ConfigError(
            "strategy='multiworker' reads the cluster from TF_CONFIG, which is not set. Set it on every "
            'worker, e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\'.'
        )
    _check_cluster(tf_config())
    _wait_for_peers(tf_config())
    return tf.distribute.MultiWorkerMirroredStrategy()


def _check_cluster(config: dict) -> None:
    """A ConfigError naming what is wrong with ``TF_CONFIG``'s task, or with this worker's own port,
    before TensorFlow starts its server (whose errors name neither)."""
    cluster, task = config.get("cluster", {}), config.get("task")
    example = ' e.g. "task": {"type": "worker", "index": 0}'
    if not isinstance(task, dict) or "type" not in task:
        raise ConfigError(f"TF_CONFIG has a cluster but no task: give each worker its own task,{example}.")
    kind, index = task["type"], task.get("index", 0)
    if kind not in cluster:
        raise ConfigError(f"TF_CONFIG's task type {kind!r} is not in its cluster {sorted(cluster)}; use one of them.")
    members = cluster[kind]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(members):
        raise ConfigError(f"TF_CONFIG's task index {index!r} is not one of the {len(members)} {kind}(s) of its "
                          f"cluster (0-{len(members) - 1}).")
    host, _, port = str(members[index]).rpartition(":")
    try:
        _listen_on(int(port)).close()
    except (OSError, ValueError) as err:
        raise ConfigError(f"this worker's address {members[index]} (TF_CONFIG {kind} {index}) cannot be used "
                          f"({getattr(err, 'strerror', None) or err}): the port is taken or not a number; "
                          "pick a free port in TF_CONFIG on every worker.") from None


def _listen_on(port: int) -> socket.socket:
    """A socket listening on ``port`` of every address, IPv6 too where the machine has it. As gRPC
    binds: a port in TIME_WAIT after a killed run is free (``create_server`` reuses addresses on
    POSIX only, where that cannot take a port another program listens on), a taken one is not."""
    if socket.has_dualstack_ipv6():
        return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=16)
    return socket.create_server(("", port), backlog=16)


def _wait_for_peers(config: dict) -> None:
    """Wait, in Python, until every other worker of ``TF_CONFIG``'s cluster listens, then return.

    TensorFlow's strategy waits for missing workers inside C++ for an hour, printing nothing, deaf to
    Ctrl-C and SIGTERM (its preemption notifier takes SIGTERM). Here this worker holds its own port
    open meanwhile (so that the others see it), says every :data:`WAIT_REPORT_S` seconds which
    workers it waits for, stops on Ctrl-C, and gives up with a ConfigError naming them after
    ``KERCR_WORKER_WAIT_S`` seconds (default :data:`WORKER_WAIT_S`).
    """
    cluster, task = config["cluster"], config["task"]
    me = (task["type"], task.get("index", 0))
    peers = [(kind, i, str(address)) for kind in ("chief", "worker") for i, address in enumerate(cluster.get(kind, []))
             if (kind, i) != me]
    if not peers:
        return
    limit = float(os.environ.get("KERCR_WORKER_WAIT_S", WORKER_WAIT_S))
    port = int(str(cluster[me[0]][me[1]]).rpartition(":")[2])
    with _listen_on(port) as placeholder:
        placeholder.setblocking(False)
        start = time.monotonic()
        report = start + 5.0
        while True:
            with contextlib.suppress(BlockingIOError):
                while True:  # the others' probes: accepted and closed, so the queue never fills
                    placeholder.accept()[0].close()
            peers = [peer for peer in peers if not _listens(peer[2])]
            if not peers:
                return
            waited = time.monotonic() - start
            names = ", ".join(f"{kind} {i} at {address}" for kind, i, address in peers)
            if waited >= limit:
                raise ConfigError(
                    f"multi-worker training: after {waited:.0f} s, still no {names} (TF_CONFIG). Start kercr-train "
                    "there with the same options and TF_CONFIG naming that task, check the host and port, or set "
                    "KERCR_WORKER_WAIT_S to wait longer.")
            if time.monotonic() >= report:
                logger.info("waiting for %s to start (%.0f of %.0f s; KERCR_WORKER_WAIT_S)", names, waited, limit)
                report += WAIT_REPORT_S
            time.sleep(0.5)


def _listens(address: str) -> bool:
    host, _, port = address.rpartition(":")  # "[::1]:2222": IPv6 as TF_CONFIG writes it
    return listens(host, port)


class LostWorkerError(ConnectionError):
    """A multi-worker run lost one of its workers (killed, out of memory, its machine gone).

    Every finished epoch is saved; the same command on every worker resumes the run. The process
    that gets this error should end without TensorFlow's teardown (``os._exit``, after flushing
    its output), as ``kercr-train`` does (``exit_at_once``, read by :func:`kercr.cli.common.run`):
    that teardown garbage-collects collectives that still wait for the lost worker, and was seen to
    hang for minutes, or for good.
    """

    exit_at_once = True


def lost_worker(err: BaseException):
    """A :class:`LostWorkerError` saying which worker was lost and how to resume, when ``err`` is
    TensorFlow's error for a worker that stopped answering mid-training (its collective aborted:
    killed, out of memory, its machine gone); else None."""
    import tensorflow as tf

    if not isinstance(err, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError)):
        return None
    text = str(err)
    config = tf_config()
    cluster, task = config.get("cluster", {}), config.get("task", {})
    me = (task.get("type"), task.get("index", 0))
    named = [(kind, int(i)) for kind, i in re.findall(r"/job:(\w+)(?:/replica:\d+)?/task:(\d+)", text)]
    # TensorFlow names the lost task, or only its address ("ipv4:10.0.0.2:2222: Connection refused").
    named += _tasks_at(re.findall(r"ipv4:([\d.]+):(\d+)|ipv6:\[([^\]]+)\]:(\d+)", text), cluster)
    others = [(kind, i) for kind, i in named if (kind, i) != me and i < len(cluster.get(kind, []))]
    who = f"{others[0][0]} {others[0][1]} at {cluster[others[0][0]][others[0][1]]}" if others else "another worker"
    cause = re.search(r"aborted by: ([^\n]+)", text) or re.search(r'grpc_message:"([^"]+)"', text)
    because = f" ({cause.group(1).strip().rstrip(':')})" if cause else ""
    return LostWorkerError(f"multi-worker training lost {who}{because}. Every finished epoch is saved: run the "
                           "same command again on every worker to resume.")


def _tasks_at(addresses, cluster: dict) -> list:
    """The ``(kind, index)`` of the cluster's tasks at these ``(ipv4, port, ipv6, port)`` matches: by host and port
    (TF_CONFIG's host names resolved), or by the port alone where one task has it."""
    found = []
    for ip4, port4, ip6, port6 in addresses:
        ip, port = (ip4, port4) if ip4 else (ip6, port6)
        by_port = []
        for kind, members in cluster.items():
            for i, address in enumerate(members):
                host, _, member_port = str(address).rpartition(":")
                if member_port != port:
                    continue
                by_port.append((kind, i))
                try:
                    ips = {info[4][0] for info in socket.getaddrinfo(host.strip("[]"), int(port))}
                except (OSError, ValueError):
                    ips = set()
                if ip in ips or ip == host.strip("[]"):
                    found.append((kind, i))
        if len(by_port) == 1:
            found.append(by_port[0])
    return found


def gather_ints(strategy, value: int) -> list[int]:
    """Every worker's ``value``, in worker order (a collective: every worker must call it)."""
    import tensorflow as tf

    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant([int(value)], tf.int64))
    return [int(v) for v in strategy.gather(per_replica, axis=0).numpy()]


def build_from_local_batch(model, batch) -> None:
    """Build model, loss, metrics and optimizer from a local batch, before ``fit``.

    Under ``MultiWorkerMirroredStrategy``, Keras 3's ``fit`` builds the model from a batch that
    it first reduces across the workers, only to learn its shapes, and that reduction fails
    (keras-team/keras#20585). Building from a local batch first, then skipping that step, is
    equivalent: only the batch's shapes and dtypes are used.
    """
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    _patch_multi_worker_scalar_reduction()


def _patch_multi_worker_scalar_reduction() -> None:
    """Let Keras 3 reduce scalar logs across workers (its ``axis=0`` fails on a scalar).

    Keras' TensorFlow trainer averages every per-replica output with
    ``strategy.reduce("MEAN", v, axis=0)`` under a multi-worker strategy; the losses and metric
    results in the logs are scalars, for which that raises "Invalid reduction dimension 0". Scalars
    are averaged over replicas with ``axis=None`` instead; everything else goes to Keras as before.
    Applied only when ``--strategy multiworker`` is used.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer
    from keras.src import tree

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_kercr_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not tf_trainer._collective_all_reduce_multi_worker(strategy):
            return original(values, strategy, reduction)

        def _reduce(v):
            local = strategy.experimental_local_results(v)[0] if tf_trainer._is_per_replica_instance(v) else v
            if getattr(local, "shape", None) is not None and local.shape.rank == 0:
                return strategy.reduce("MEAN", v, axis=None)
            return original(v, strategy, reduction)

        return tree.map_structure(_reduce, values)

    reduce_per_replica._kercr_patched = True
    tf_trainer.reduce_per_replica = reduce_per_replica
