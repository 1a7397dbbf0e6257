"""Many files, many cores, many machines (:mod:`kercr.detection.batch`): the outputs of ``jobs=1``,
``jobs=2`` and a real Dask ``LocalCluster`` are the same bit for bit; a bad file, an existing output
or a CCD that cannot be detected fails that file alone; ``skip_existing`` finishes a batch.

Uses the shipped model (LiteRT int8, no TensorFlow in the workers) on small synthetic frames.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from astropy.io import fits

from kercr.data import CosmicRayModel, SyntheticConfig, make_frame
from kercr.detection import detect_files
from kercr.detection.files import detect_file, output_path
from kercr.weights import has_default

pytestmark = pytest.mark.skipif(not has_default(), reason="no shipped model in this checkout")

#: ~100 CR events per second per 2k x 4k CCD, so that small frames hold CRs.
MANY_CRS = SyntheticConfig(cr_model=CosmicRayModel(rate_per_s=100.0))


def _exposure(path, seed, names=("S1", "S2", "N1", "N2"), shape=(96, 128)):
    """A DECam-like tile-compressed multi-extension file, one CCD per name."""
    hdus = [fits.PrimaryHDU(header=fits.Header({"INSTRUME": "DECam"}))]
    for k, name in enumerate(names):
        image = make_frame(seed=seed * 100 + k, shape=shape, config=MANY_CRS).image_adu
        hdus.append(fits.CompImageHDU(image, header=fits.Header({"SATURATE": 45000.0}), name=name))
    fits.HDUList(hdus).writeto(path)
    return path


def _single(path, seed, shape=(64, 80)):
    fits.PrimaryHDU(make_frame(seed=seed, shape=shape, config=MANY_CRS).image_adu).writeto(path)
    return path


def _masks(path):
    """``{EXTNAME: data}`` of every mask and probability extension of an output."""
    with fits.open(path) as hdul:
        return {(h.name, h.ver): np.array(h.data) for h in hdul if h.name.endswith(("CRMASK", "CRPROB"))}


def _assert_same_outputs(a_dir, b_dir, names):
    for name in names:
        a, b = _masks(a_dir / name), _masks(b_dir / name)
        assert list(a) == list(b) and a
        for key in a:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {key}")


def _night(tmp_path):
    """Six inputs: four good (two exposures, two single images), a truncated .fits.fz and a non-FITS file."""
    src = tmp_path / "night"
    src.mkdir()
    good = [_exposure(src / "c4d_1_ooi.fits.fz", 1), _single(src / "single_2.fits", 2)]
    truncated = src / "c4d_3_ooi.fits.fz"
    data = _exposure(tmp_path / "whole.fits.fz", 3).read_bytes()
    truncated.write_bytes(data[: len(data) - 4000])
    text = src / "notes_4.fits"
    text.write_text("this is not FITS\n" * 300)
    good += [_exposure(src / "c4d_5_ooi.fits.fz", 5, names=("S3", "N3")), _single(src / "single_6.fits", 6)]
    return [good[0], good[1], truncated, text, good[2], good[3]], good, [truncated, text]


@pytest.fixture(scope="module")
def cluster():
    """A real Dask cluster on localhost: two worker processes, one thread each."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as c:
        yield c


def _run_mode(mode, paths, out, cluster=None, **kw):
    if mode == "dask":
        return detect_files(paths, out_dir=out, scheduler=cluster.scheduler_address, **kw)
    return detect_files(paths, out_dir=out, jobs=1 if mode == "serial" else 2, **kw)


def test_jobs_2_writes_what_jobs_1_writes(tmp_path):
    paths = [_exposure(tmp_path / "c4d_a_ooi.fits.fz", 7, names=("S1", "S2", "S3", "N1", "N2")),
             _single(tmp_path / "one.fits", 8)]
    serial = detect_files(paths, out_dir=tmp_path / "j1", jobs=1, save_probability=True, dilate=1)
    parallel = detect_files(paths, out_dir=tmp_path / "j2", jobs=2, save_probability=True, dilate=1)
    assert serial.ok and parallel.ok and serial.ccds == parallel.ccds == 6
    names = [output_path(p).name for p in paths]
    _assert_same_outputs(tmp_path / "j1", tmp_path / "j2", names)
    masks = _masks(tmp_path / "j2" / names[0])
    assert sum(int(m.sum()) for (n, _), m in masks.items() if n.endswith("CRMASK")) > 0  # CRs found
    with fits.open(tmp_path / "j2" / names[0]) as hdul:  # CCD order kept, as a serial run writes it
        assert [h.name for h in hdul][6:] == [f"{c}_{k}" for c in ("S1", "S2", "S3", "N1", "N2")
                                             for k in ("CRMASK", "CRPROB")]
        assert hdul["N1_CRMASK"].header["KCRSRCEX"] == "N1" and hdul[0].header["KCRSRC"] == "c4d_a_ooi.fits.fz"
    # detect_file(jobs=2) is the same too.
    out = detect_file(paths[0], out_dir=tmp_path / "f2", jobs=2, save_probability=True, dilate=1)
    _assert_same_outputs(tmp_path / "j1", out.parent, names[:1])


def test_dask_cluster_writes_what_a_serial_run_writes(tmp_path, cluster):
    paths = [_exposure(tmp_path / f"c4d_{k}_ooi.fits.fz", 20 + k, names=("S1", "N1")) if k % 3 == 0
             else _single(tmp_path / f"img_{k}.fits", 20 + k, shape=(64 + 16 * (k % 4), 96))
             for k in range(10)]
    serial = detect_files(paths, out_dir=tmp_path / "serial", jobs=1)
    dask = detect_files(paths, out_dir=tmp_path / "dask", scheduler=cluster.scheduler_address, progress=False)
    assert serial.ok and dask.ok and len(dask.done) == 10 and dask.ccds == serial.ccds == 14
    assert [o.path for o in dask.outcomes] == [str(p.absolute()) for p in paths]  # input order
    _assert_same_outputs(tmp_path / "serial", tmp_path / "dask", [output_path(p).name for p in paths])
    # The workers ran LiteRT without ever importing TensorFlow or Keras.
    with __import__("distributed").Client(cluster) as client:
        loaded = client.run(lambda: sorted(m for m in ("tensorflow", "keras", "kercr.detection") if m in sys.modules))
    assert list(loaded.values()) == [["kercr.detection"]] * 2


@pytest.mark.parametrize("mode", ["serial", "jobs2", "dask"])
def test_a_bad_file_in_the_night_stops_nothing_and_skip_existing_finishes(mode, tmp_path, cluster, caplog):
    paths, good, bad = _night(tmp_path)
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="kercr"):
        result = _run_mode(mode, paths, out, cluster)
    assert not result.ok and [o.status for o in result.outcomes] == ["done", "done", "failed", "failed", "done", "done"]
    assert sorted(p.name for p in out.iterdir()) == sorted(output_path(p).name for p in good)  # no partial files
    reasons = {o.path: o.reason for o in result.failed}
    assert "truncated" in reasons[str(bad[0].absolute() if mode == "dask" else bad[0])]
    assert "not a readable FITS" in reasons[str(bad[1].absolute() if mode == "dask" else bad[1])]
    for path in bad:  # one line per failure, naming the file and the reason, then the summary
        assert sum(str(path.name) in r.message and "failed" in r.message for r in caplog.records) >= 1
    assert "6 files: 4 written, 0 skipped, 2 failed; 8 CCDs" in caplog.text
    # The rerun skips the good files; with the bad ones fixed it does only them.
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _run_mode(mode, paths, out, cluster, skip_existing=True)
    assert len(again.skipped) == 4 and len(again.failed) == 2 and again.ccds == 0
    _exposure(tmp_path / "fixed.fits.fz", 3).replace(bad[0])
    bad[1].unlink()
    _single(bad[1], 4)
    last = _run_mode(mode, paths, out, cluster, skip_existing=True)
    assert last.ok and len(last.skipped) == 4 and len(last.done) == 2 and last.ccds == 5
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in written} == written  # untouched


def test_an_existing_output_fails_only_that_file_unless_skipped(tmp_path, caplog):
    paths = [_single(tmp_path / f"f{k}.fits", 40 + k) for k in range(3)]
    out = tmp_path / "out"
    out.mkdir()
    existing = output_path(paths[1], out)
    existing.write_bytes(b"an older output")
    # A killed run's leftover temporary file is not an output: that file is done again.
    leftover = out / f".{output_path(paths[2]).name}.partial-12345-0a1b2c3d"
    leftover.write_bytes(b"half")
    result = detect_files(paths, out_dir=out, jobs=2)
    assert [o.status for o in result.outcomes] == ["done", "failed", "done"]
    reason = result.failed[0].reason
    assert str(existing) in reason and "--skip-existing" in reason and "--out" in reason
    assert existing.read_bytes() == b"an older output"  # never overwritten
    again = detect_files(paths, out_dir=out, jobs=1, skip_existing=True)
    assert [o.status for o in again.outcomes] == ["skipped", "failed", "skipped"]
    # Not kercr's output of that input: never taken for done.
    assert "cannot be read as FITS" in again.failed[0].reason and "remove it" in again.failed[0].reason
    existing.unlink()
    assert detect_files(paths, out_dir=out, jobs=1, skip_existing=True).ok


def test_a_killed_runs_leftover_partial_files_are_named_not_deleted(tmp_path, caplog):
    paths = [_single(tmp_path / f"f{k}.fits", 50 + k) for k in range(2)]
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / f".{output_path(paths[1]).name}.partial-99999-0a1b2c3d"
    leftover.write_bytes(b"half")
    os.utime(leftover, (1e9, 1e9))
    odd = _single(tmp_path / "x.partial-y.fits", 52)  # ".partial-" in the input's own name
    paths.append(odd)
    odd_leftover = out / f".{output_path(odd).name}.partial-99998-0a1b2c3e"
    odd_leftover.write_bytes(b"half")
    os.utime(odd_leftover, (1e9 + 1, 1e9 + 1))
    stranger = out / ".notes.fits.partial-1-x"  # not the output of any input here
    stranger.write_bytes(b"?")
    caplog.set_level("WARNING", logger="kercr")
    assert detect_files(paths, out_dir=out, jobs=1).ok
    warned = [r.getMessage() for r in caplog.records if "leftover partial" in r.getMessage()]
    assert len(warned) == 1 and "2 leftover partial outputs of" in warned[0] and str(leftover) in warned[0]
    assert "delete them" in warned[0] and stranger.name not in warned[0]
    assert leftover.read_bytes() == b"half" and stranger.exists()  # named, never deleted
    leftover.unlink()
    odd_leftover.unlink()
    caplog.clear()
    assert detect_files(paths, out_dir=out, jobs=1, skip_existing=True).ok
    assert not [r for r in caplog.records if "leftover partial" in r.getMessage()]


def test_skip_existing_skips_only_an_output_of_this_input_made_with_these_options(tmp_path):
    paths = [_single(tmp_path / f"f{k}.fits", 60 + k) for k in range(2)]
    out = tmp_path / "out"
    assert detect_files(paths, out_dir=out, jobs=1).ok
    assert [o.status for o in detect_files(paths, out_dir=out, jobs=1, skip_existing=True).outcomes] == ["skipped"] * 2
    for options, card in (({"clean": True}, "KCRCLEAN None there, 'median' now"), ({"dilate": 2}, "KCRDIL 0 there, 2 now"),
                          ({"threshold": 0.3}, "KCRTHR"), ({"save_probability": True}, "CRPROB False there, True now"),
                          ({"tta": False}, "KCRTTA True there, False now"), ({"tta_gate": 0.0}, "KCRTTAG"),
                          ({"exclude_saturated": False}, "KCRSATX True there, False now"),
                          ({"runtime": "keras"}, "KCRRUNT 'tflite-int8' there, 'keras' now")):
        again = detect_files(paths, out_dir=out, jobs=1, skip_existing=True, **options)
        assert [o.status for o in again.outcomes] == ["failed"] * 2, options
        assert card in again.failed[0].reason and "other options" in again.failed[0].reason
    # The options the outputs were made with, named explicitly, still skip them (the card's runtime and flips).
    same = dict(runtime="tflite-int8", tta=True, exclude_saturated=True)
    assert [o.status for o in detect_files(paths, out_dir=out, jobs=1, skip_existing=True, **same).outcomes] == [
        "skipped"] * 2
    # Outputs of an older kercr, which did not record KCRSATX, are not checked for it.
    with fits.open(output_path(paths[0], out), mode="update") as hdul:
        del hdul[0].header["KCRSATX"]
    older = detect_files(paths[:1], out_dir=out, jobs=1, skip_existing=True, exclude_saturated=False)
    assert [o.status for o in older.outcomes] == ["skipped"]
    # Another input's output under this name (f1's output renamed to f0's):
    output_path(paths[0], out).unlink()
    output_path(paths[1], out).rename(output_path(paths[0], out))
    again = detect_files(paths[:1], out_dir=out, jobs=1, skip_existing=True)
    assert "KCRSRC 'f1.fits' there, 'f0.fits' now" in again.failed[0].reason
    # The same file listed twice is done once, whatever the number of workers:
    for jobs in (1, 2):
        twice = detect_files([paths[1], tmp_path / "." / "f1.fits"], out_dir=tmp_path / f"twice{jobs}", jobs=jobs)
        assert [o.status for o in twice.outcomes] == ["done", "skipped"] and "listed twice" in twice.skipped[0].reason


def test_skip_existing_tells_another_nights_file_of_the_same_name_and_a_run_on_fewer_ccds(tmp_path):
    """``img001.fits`` of two nights share a name, and an output made with ``--ext S1`` lacks the
    other CCDs' masks: neither is taken for done (before, both were skipped and the batch said ok)."""
    (tmp_path / "n1").mkdir(), (tmp_path / "n2").mkdir()
    first, second = _single(tmp_path / "n1" / "img001.fits", 70), _single(tmp_path / "n2" / "img001.fits", 71)
    out = tmp_path / "out"
    assert detect_files([first], out_dir=out, jobs=1).ok
    assert [o.status for o in detect_files([first], out_dir=out, jobs=1, skip_existing=True).outcomes] == ["skipped"]
    other = detect_files([second], out_dir=out, jobs=1, skip_existing=True)
    assert [o.status for o in other.outcomes] == ["failed"]
    assert "another file named img001.fits" in other.failed[0].reason and "--out" in other.failed[0].reason

    exposure = _exposure(tmp_path / "exp.fits", 72, names=("S1", "S2"), shape=(64, 64))
    assert detect_files([exposure], out_dir=out, ext="S1", jobs=1).ok
    assert [o.status for o in detect_files([exposure], out_dir=out, ext="S1", jobs=1,
                                           skip_existing=True).outcomes] == ["skipped"]
    every = detect_files([exposure], out_dir=out, jobs=1, skip_existing=True)
    assert [o.status for o in every.outcomes] == ["failed"] and "no S2_CRMASK there" in every.failed[0].reason


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_ccd_with_nothing_to_detect_gets_an_empty_mask_that_says_why_and_loses_no_other_ccd(jobs, tmp_path):
    dead = _exposure(tmp_path / "dead.fits.fz", 50, names=("S1", "S2", "S3"))
    with fits.open(dead, mode="update") as hdul:  # S2: every pixel NaN; S3: a dead amplifier reading 0
        hdul["S2"].data = np.full((96, 128), np.nan, np.float32)
        hdul["S3"].data = np.zeros((96, 128), np.float32)
    none = _exposure(tmp_path / "none.fits.fz", 52, names=("S1", "S2"))
    with fits.open(none, mode="update") as hdul:  # no CCD to detect: the file fails alone
        for name in ("S1", "S2"):
            hdul[name].data = np.full((96, 128), np.nan, np.float32)
    good = _exposure(tmp_path / "good.fits.fz", 51, names=("S1", "S2", "S3"))
    result = detect_files([dead, none, good], out_dir=tmp_path / "out", jobs=jobs, clean="median")
    assert [o.status for o in result.outcomes] == ["done", "failed", "done"]
    assert result.outcomes[0].undetected == ["S2", "S3"] and result.undetected == 2
    assert "2 with nothing to detect" in result.summary()
    assert "no CCD holds anything to detect" in result.failed[0].reason and "every pixel" in result.failed[0].reason
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dead_crmask.fits", "good_crmask.fits"]
    with fits.open(tmp_path / "out" / "dead_crmask.fits") as hdul:
        assert hdul["S1_CRMASK"].data.any() and "KCRSTAT" not in hdul["S1_CRMASK"].header
        assert "KCRTHR" in hdul[0].header  # the provenance of a detected CCD
        for name, why in (("S2", "every pixel"), ("S3", "constant")):
            assert not hdul[f"{name}_CRMASK"].data.any()
            assert hdul[f"{name}_CRMASK"].header["KCRSTAT"].startswith("not detected: ")
            assert why in hdul[f"{name}_CRMASK"].header["KCRSTAT"]
            np.testing.assert_array_equal(hdul[f"{name}_CLEAN"].data, hdul[name].data)  # nothing replaced
    reference = detect_files([good], out_dir=tmp_path / "ref", jobs=1, clean="median")
    assert reference.ok
    _assert_same_outputs(tmp_path / "out", tmp_path / "ref", ["good_crmask.fits"])


def test_bad_options(tmp_path):
    import keras

    path = _single(tmp_path / "x.fits", 1)
    with pytest.raises(ValueError, match="jobs=0"):
        detect_files([path], jobs=0)
    model = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(1, 1, activation="sigmoid")])
    with pytest.raises(ValueError, match="save it"):
        detect_files([path, path], model=model, runtime="keras", jobs=2)
    assert not output_path(path).exists()


def test_a_scheduler_without_dask_says_how_to_install_it(tmp_path, monkeypatch):
    from kercr.config import ConfigError

    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"kercr\[dask\]"):
        detect_files([_single(tmp_path / "x.fits", 1)], scheduler="local", jobs=1)


def test_a_dead_worker_costs_only_the_ccd_that_kills_it():
    """The CCDs in flight when a worker dies are detected again in new workers; the CCD that kills
    its worker twice fails, named."""
    import concurrent.futures.process

    from kercr.detection.workers import Processes, ordered
    from tests.detection._crash import die_on_boom

    runner = Processes("default", {"runtime": "tflite-int8", "tta": False}, jobs=2, threads=1, task=die_on_boom)
    tasks = [("f.fits", k, name, False, None) for k, name in enumerate(("A", "B", "BOOM", "C", "D"), 1)]
    results = {}
    try:
        for (_, _, name, _, _), future in ordered(runner.submit, tasks, runner.window):
            try:
                results[name] = future.result()
            except concurrent.futures.process.BrokenProcessPool as err:
                results[name] = str(err)
    finally:
        runner.close(now=True)
    assert results == {"A": "A", "B": "B", "BOOM": "f.fits [BOOM]: a worker process died twice while detecting "
                       "this CCD", "C": "C", "D": "D"}


def test_workers_end_when_their_parent_is_killed(tmp_path):
    """``kill -9`` of kercr-detect --jobs N leaves no worker waiting forever with its model loaded."""
    import signal

    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from kercr.detection.workers import Processes
        from tests.detection._crash import worker_pid

        if __name__ == "__main__":
            runner = Processes("default", {"runtime": "tflite-int8", "tta": False}, jobs=2, threads=1,
                               task=worker_pid)
            futures = [runner.submit(("f.fits", k, "A", False, None)) for k in range(6)]
            print(" ".join(sorted({str(f.result()) for f in futures})), flush=True)
            time.sleep(600)
    """))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert pids and parent.pid not in pids
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        assert not any(_alive(p) for p in pids), f"workers {pids} outlived their killed parent"
    finally:
        parent.kill()
        for p in pids if "pids" in locals() else []:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, already ended, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_scheduler_that_cannot_be_reached_or_has_no_workers_says_so_and_writes_nothing(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    from kercr.detection import batch

    path = _single(tmp_path / "x.fits", 1)
    monkeypatch.setattr(batch, "SCHEDULER_TIMEOUT_S", 2)
    for address in ("tcp://127.0.0.1:9", "lcoal"):  # nothing listens on port 9; a typo of "local"
        with pytest.raises(OSError, match=rf"scheduler='{address}' \(--scheduler\): cannot reach.*'local'"):
            detect_files([path], out_dir=tmp_path / "out", scheduler=address)
    monkeypatch.setattr(batch, "WORKER_WAIT_S", 1)
    # A real scheduler process with no workers, as `dask scheduler` run alone.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import asyncio, distributed\n"
            "async def main():\n"
            f"    async with distributed.Scheduler(host='127.0.0.1', port={port}, dashboard_address=None) as s:\n"
            "        await s.finished()\n"
            "asyncio.run(main())\n")
    scheduler = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and scheduler.poll() is None, "the scheduler did not start"
                time.sleep(0.2)
        # In a fresh process, as kercr-detect runs: a Dask client made in this one after the module's
        # cluster and the failed clients above sometimes cannot start its event loop (distributed's
        # LoopRunner: "assert loop is not None").
        run = subprocess.run(
            [sys.executable, "-c", "import sys; from kercr.detection import batch; batch.WORKER_WAIT_S = 1; "
             "from kercr.cli.detect import detect_main; sys.exit(detect_main())",
             "--scheduler", f"tcp://127.0.0.1:{port}", str(path), "--out", str(tmp_path / "out")],
            capture_output=True, text=True, timeout=300)
        assert run.returncode == 1 and re.search("no workers after 1 s.*dask worker", run.stderr), run.stderr[-2000:]
    finally:
        scheduler.kill()
        scheduler.wait()
    assert not (tmp_path / "out").exists()


def test_workers_import_neither_tensorflow_nor_keras_and_litert_stays_quiet(tmp_path):
    """kercr-detect --jobs 2 with TensorFlow and Keras unimportable in every process (a sitecustomize
    blocks them in the spawned workers too); and LiteRT's XNNPACK notice is not printed."""
    paths = [_exposure(tmp_path / "c4d_q_ooi.fits.fz", 60, names=("S1", "S2", "S3"))]
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "jax", "torch"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "kercr.cli.detect", *map(str, paths), "--out", str(tmp_path / "o"),
                          "--jobs", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "3 CCDs" in out.stderr and "XNNPACK" not in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "o" / "c4d_q_ooi_crmask.fits").is_file()


def test_a_rerun_beside_its_own_outputs_skips_them_and_clashing_outputs_fail(tmp_path):
    """``kercr-detect *.fits`` then ``kercr-detect --skip-existing *.fits`` (the glob now holds the
    outputs); two inputs of one output name, and an output that would be its input, fail alone."""
    paths = [_single(tmp_path / f"n{k}.fits", 60 + k) for k in range(2)]
    first = detect_files(paths, jobs=1)
    assert first.ok
    outputs = [output_path(p) for p in paths]
    again = detect_files(sorted(tmp_path.glob("*.fits")), jobs=1, skip_existing=True)
    assert again.ok and [o.status for o in again.outcomes] == ["skipped"] * 4
    assert {o.reason for o in again.outcomes if o.path in map(str, outputs)} == {
        "a kercr-detect output (KCRSRC and KCRSRCSH in its header), not an input"}
    with fits.open(outputs[0]) as hdul:
        assert hdul[0].header["KCRSRC"] == "n0.fits" and hdul["CRMASK"].header["KCRSRCHD"] == 0
    with pytest.raises(ValueError, match="a kercr-detect output .* run kercr-detect on the original file"):
        detect_file(outputs[0], out_dir=tmp_path / "again")
    # A frame saved by write_fits_with_mask names its source (KCRSRC) too, but is no detect output: it is
    # not skipped in silence (its CRMASK, a truth mask, is named with what to do).
    from kercr.data import read_ccd, write_fits_with_mask

    saved = write_fits_with_mask(tmp_path / "labelled" / "f.fits", read_ccd(paths[0]), np.zeros((64, 80), bool))
    (outcome,) = detect_files([saved], jobs=1, skip_existing=True).outcomes
    assert outcome.status == "failed" and "kercr-evaluate" in outcome.reason

    clash = tmp_path / "clash"
    clash.mkdir()
    plain = _single(clash / "a.fits", 70)
    packed = clash / "a.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(fits.getdata(plain))]).writeto(packed)
    same = detect_files([plain, packed, plain], suffix="", out_dir=None, jobs=1)
    assert [o.status for o in same.outcomes] == ["failed", "failed", "skipped"]  # the third: listed twice
    assert "would be the input itself" in same.outcomes[0].reason and "--suffix" in same.outcomes[0].reason
    both = detect_files([plain, packed], out_dir=tmp_path / "o", jobs=1)
    assert [o.status for o in both.outcomes] == ["done", "failed"]
    assert "also that of" in both.outcomes[1].reason and str(plain) in both.outcomes[1].reason
    resumed = detect_files([plain, packed], out_dir=tmp_path / "o", jobs=1, skip_existing=True)
    assert [o.status for o in resumed.outcomes] == ["skipped", "failed"]  # never "done" by the other's output
    with pytest.raises(ValueError, match="is a file, not a directory"):
        detect_files([plain], out_dir=plain, jobs=1)


def test_awkward_files_get_their_masks(tmp_path):
    """A 3-D cube beside the CCD, two images of one EXTNAME without EXTVER, a gzip file named .fits
    and a non-ASCII name: each CCD gets its mask."""
    image = make_frame(seed=80, shape=(64, 80), config=MANY_CRS).image_adu
    odd = tmp_path / "nébuleuse.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, name="SCI"), fits.ImageHDU(np.zeros((2, 8, 8)), name="CUBE"),
                  fits.ImageHDU(image[::-1], name="SCI")]).writeto(odd)
    gz = tmp_path / "packed.fits"
    import gzip

    gz.write_bytes(gzip.compress(odd.read_bytes()))
    before = {p: p.read_bytes() for p in (odd, gz)}
    result = detect_files([odd, gz], out_dir=tmp_path / "out", jobs=1)
    assert result.ok, result.summary()
    for path in (odd, gz):
        assert path.read_bytes() == before[path]
        with fits.open(output_path(path, tmp_path / "out")) as hdul:
            masks = [(h.name, h.ver, h.header["KCRSRCHD"]) for h in hdul if h.name.endswith("CRMASK")]
            assert masks == [("SCI_CRMASK", 1, 1), ("SCI_CRMASK", 2, 3)]
            assert hdul[0].header["KCRSRC"] == ascii(path.name)[1:-1]
            assert hdul["CUBE"].data.shape == (2, 8, 8)  # copied as it was, not processed


def test_ctrl_c_on_a_local_dask_cluster_prints_one_message_and_no_worker_tracebacks(tmp_path):
    """Ctrl-C reaches the whole process group: the workers and nannies of ``--scheduler local`` must
    not each print a KeyboardInterrupt traceback; the command says how to resume and exits 130."""
    import signal

    pytest.importorskip("distributed")
    paths = [str(_single(tmp_path / f"f{k}.fits", 60 + k, shape=(512, 512))) for k in range(12)]
    cmd = [sys.executable, "-m", "kercr.cli.detect", "--scheduler", "local", "--jobs", "2", *paths,
           "--out", str(tmp_path / "out")]
    # As a terminal starts it: SIGINT not ignored (a test run in the background, `cmd &`, inherits it ignored).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        for line in proc.stdout:  # the tasks are sent right after this line; the workers are still loading
            lines.append(line)
            if "Dask scheduler" in line:
                break
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(lines) + rest
    assert proc.returncode == 130, text
    assert "interrupted" in text and "--skip-existing" in text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text


def test_a_folder_that_cannot_be_written_fails_its_files_before_any_detection(tmp_path, monkeypatch):
    """The default writes beside the input, often a read-only archive: say so and name --out, rather
    than a permission error on a hidden temporary file after the CCDs were detected."""
    from pathlib import Path

    import kercr.detection.files as files

    src = _single(tmp_path / "a.fits", 5)
    access = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode: Path(p) != tmp_path and access(p, mode))
    result = detect_files([src], jobs=1)
    (failed,) = result.failed
    assert "no write permission" in failed.reason and "--out DIR" in failed.reason and str(tmp_path) in failed.reason
    # ... also for an --out folder still to be made inside it:
    assert "no write permission" in detect_files([src], out_dir=tmp_path / "masks", jobs=1).failed[0].reason
    (tmp_path / "masks").mkdir()
    assert detect_files([src], out_dir=tmp_path / "masks", jobs=1).ok


def test_an_output_written_meanwhile_by_another_run_is_skipped_with_skip_existing(tmp_path, monkeypatch):
    """Array jobs over overlapping file lists: the second writer of one output skips it when the first
    made it with the same options, and fails it otherwise (never overwritten)."""
    import shutil

    import kercr.detection.batch as batch

    src = _single(tmp_path / "a.fits", 7)
    for options, status in (({}, "skipped"), ({"dilate": 1}, "failed")):
        theirs = tmp_path / f"theirs{len(options)}"
        assert detect_files([src], out_dir=theirs, jobs=1, **options).ok
        out = tmp_path / f"ours{len(options)}"
        out.mkdir()
        write_output = batch.write_output

        def the_other_run_first(plan, *args, **kwargs):
            shutil.copy(output_path(src, theirs), plan.out)  # published by the other run after our plan
            return write_output(plan, *args, **kwargs)

        monkeypatch.setattr(batch, "write_output", the_other_run_first)
        (outcome,) = detect_files([src], out_dir=out, jobs=1, skip_existing=True).outcomes
        monkeypatch.setattr(batch, "write_output", write_output)
        assert outcome.status == status, outcome.reason
        assert ("written meanwhile" in outcome.reason) == (status == "skipped")


@pytest.mark.parametrize("jobs", [1, 2])
def test_an_error_while_checking_a_later_file_fails_that_file_alone(jobs, tmp_path, caplog):
    """With --skip-existing each input's output is looked at before its detection; an OSError there
    (a name too long, a folder that cannot be searched, NFS) used to stop the batch (jobs=1) or fail
    the file being written and end in 'generator raised StopIteration' (jobs=2)."""
    long = _single(tmp_path / ("L" * 248 + ".fits"), 11)  # its output's name is over 255 bytes
    paths = [_exposure(tmp_path / "m.fits", 12), long, _single(tmp_path / "z.fits", 13)]
    with caplog.at_level("INFO", logger="kercr"):
        result = detect_files(paths, out_dir=tmp_path / "out", jobs=jobs, skip_existing=True)
    assert [o.status for o in result.outcomes] == ["done", "failed", "done"], result.summary()
    assert "too long" in result.outcomes[1].reason
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m_crmask.fits", "z_crmask.fits"]
    assert "3 files: 2 written, 0 skipped, 1 failed; 5 CCDs" in caplog.text


def test_a_model_file_litert_cannot_load_stops_the_batch_before_any_file(tmp_path):
    """Before, each worker failed in its start-up: the pool was restarted twice per CCD and every file
    failed as 'a worker process died (out of memory, ...)'."""
    import shutil

    from kercr.detection import ModelLoadError
    from kercr.weights import WEIGHTS_DIR

    model = tmp_path / "model"
    model.mkdir()
    for name in ("default.keras", "default.json", "default-int8.tflite", "normalization.json"):
        shutil.copy(WEIGHTS_DIR / name, model / name)
    (model / "default-int8.tflite").write_bytes((WEIGHTS_DIR / "default-int8.tflite").read_bytes()[:60000])
    paths = [_single(tmp_path / f"f{k}.fits", 20 + k) for k in range(2)]
    for jobs in (1, 2):
        with pytest.raises(ModelLoadError, match=r"default-int8.tflite: LiteRT cannot load .*delete it"):
            detect_files(paths, model=model / "default.keras", out_dir=tmp_path / "out", jobs=jobs)
    assert not (tmp_path / "out").exists()


def test_log_lines_number_files_within_the_whole_list(tmp_path, caplog):
    """A file listed twice is reported as [2/3]; the one after it keeps its own number."""
    a, b = _single(tmp_path / "a.fits", 30), _single(tmp_path / "b.fits", 31)
    with caplog.at_level("INFO", logger="kercr"):
        result = detect_files([a, a, b], out_dir=tmp_path / "out", jobs=1)
    assert [o.status for o in result.outcomes] == ["done", "skipped", "done"]
    text = caplog.text
    assert re.search(r"\[2/3\] .*a\.fits skipped", text) and re.search(r"\[3/3\] b\.fits", text), text
    assert "[2/2]" not in text


def test_sigterm_on_a_local_dask_cluster_leaves_no_partial_output(tmp_path):
    """Closing the cluster kills its workers mid-file, so their cleanup never runs: the command removes
    the hidden partial outputs they left (before, one per worker stayed, 4 MB each here)."""
    import signal

    pytest.importorskip("distributed")
    paths = [str(_single(tmp_path / f"f{k}.fits", 90 + k, shape=(1024, 1024))) for k in range(6)]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "kercr.cli.detect", "--scheduler", "local", "--jobs", "2", *paths, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob(".*.partial-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the batch ended before any partial output was seen"
        proc.send_signal(signal.SIGTERM)  # the command alone, as Slurm's time limit or `timeout` does
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err
    time.sleep(3)  # nothing may appear afterwards either (a worker left running)
    assert not [p.name for p in out.iterdir() if ".partial-" in p.name], err


def test_a_model_warning_is_printed_once_not_once_per_worker(tmp_path):
    import json
    import shutil

    from kercr.weights import WEIGHTS_DIR

    model = tmp_path / "model"
    model.mkdir()
    for name in ("default.keras", "default-int8.tflite", "normalization.json"):
        shutil.copy(WEIGHTS_DIR / name, model / name)
    card = json.loads((WEIGHTS_DIR / "default.json").read_text())
    card["tflite"]["tflite-float16"] = {**card["tflite"]["tflite-int8"], "file": "gone-float16.tflite"}
    (model / "default.json").write_text(json.dumps(card))
    paths = [str(_single(tmp_path / f"f{k}.fits", 40 + k)) for k in range(2)]
    out = subprocess.run([sys.executable, "-m", "kercr.cli.detect", *paths, "--out", str(tmp_path / "out"), "--jobs",
                          "2", "--model", str(model / "default.keras")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("gone-float16.tflite, which is missing") == 1, out.stderr


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_gzip_input_is_decompressed_once_not_for_every_ccd(jobs, tmp_path, monkeypatch):
    """A gzip stream has no random access: each CCD read used to decompress the file from its start
    (62 CCDs: 31 whole files on average). The CCDs are read from one plain copy, removed at the end."""
    import gzip

    import kercr.data
    import kercr.data.fits_read as fits_read

    plain = _exposure(tmp_path / "e.fits", 50)
    packed = tmp_path / "e.fits.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    reads = []
    real = fits_read.read_ccd
    monkeypatch.setattr(kercr.data, "read_ccd", lambda path, *a, **k: reads.append(str(path)) or real(path, *a, **k))
    out = tmp_path / "out"
    result = detect_files([packed], out_dir=out, jobs=jobs)
    assert result.ok, result.summary()
    ours = list(reads)
    expected = detect_files([plain], out_dir=tmp_path / "plain", jobs=1)
    assert expected.ok
    a, b = _masks(out / "e_crmask.fits"), _masks(tmp_path / "plain" / "e_crmask.fits")
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    with fits.open(out / "e_crmask.fits") as hdul:
        assert hdul[0].header["KCRSRC"] == "e.fits.gz"
    assert sorted(p.name for p in out.iterdir()) == ["e_crmask.fits"]  # the copy is gone
    if jobs == 1:  # (workers read in their own processes)
        assert len(ours) == 4 and all(".partial-" in r and r.endswith("-input.fits") for r in ours), ours
