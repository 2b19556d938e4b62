"""Studies over several processes: torchrun ranks (gloo, CPU) and --shard, one result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

import mech

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
TIMING = ("seconds", "inverse_time")  # wall-clock measurements: never equal between two runs


def study(name, out, *options, ranks=None, wait=True):
    """``python -m studies.NAME`` (or under ``torchrun --nproc-per-node ranks``) on the embedded model."""
    launcher = [sys.executable, "-m"] if ranks is None else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), "-m"]
    command = [*launcher, f"studies.{name}", "--datasets", "shapes", "--limit", "24", "--batch-size", "4",
               "--chunk-size", "4", "--no-progress", "--out", str(out), *options]
    if not wait:
        return subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = subprocess.run(command, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_same_dataset(a: Path, b: Path) -> None:
    with xr.open_dataset(a) as x, xr.open_dataset(b) as y:
        assert set(x.data_vars) == set(y.data_vars)
        for var in x.data_vars:
            if any(t in var for t in TIMING):
                continue
            assert x[var].equals(y[var]), var
        skip = {"command", "world_size", "created"}
        assert {k: v for k, v in x.attrs.items() if k not in skip} == {k: v for k, v in y.attrs.items() if k not in skip}


def chunk_times(out: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in out.rglob("chunk-*.json")}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process: ``<out>/layer_masking.nc`` and ``<out>/review/review_layer.nc``."""
    out = tmp_path_factory.mktemp("single")
    study("layer_masking", out)
    study("review_layer", out / "review")
    return out


@pytest.mark.parametrize("name", ["layer_masking", "review_layer"])
def test_two_ranks_give_the_single_process_result(single, tmp_path, name):
    done = study(name, tmp_path, ranks=2)
    assert_same_dataset((single if name == "layer_masking" else single / "review") / f"{name}.nc",
                        tmp_path / f"{name}.nc")
    with xr.open_dataset(tmp_path / f"{name}.nc") as ds:
        assert ds.attrs["world_size"] == 2
    assert done.stdout.count("wrote ") == (1 if name == "layer_masking" else 3)  # rank 0 alone speaks
    # the two ranks split the chunks: each chunk file was written once, by its owner
    writers = {}
    for path in tmp_path.rglob("chunk-*.json"):
        writers.setdefault(json.loads(path.read_text())["meta"]["written_by"], []).append(path)
    assert set(writers) == {"rank 0/2", "rank 1/2"}
    assert abs(len(writers["rank 0/2"]) - len(writers["rank 1/2"])) <= len(writers["rank 0/2"]) // 2


def test_a_killed_rank_loses_nothing_finished(single, tmp_path):
    child = study("layer_masking", tmp_path, ranks=2, wait=False)
    deadline = time.monotonic() + 300
    while len(chunk_times(tmp_path)) < 8:
        assert child.poll() is None, child.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-f", f"studies.layer_masking.*{tmp_path}"], capture_output=True, text=True)
    pids = [int(p) for p in workers.stdout.split() if int(p) != child.pid]
    assert pids, "no rank process found"
    os.kill(max(pids), signal.SIGKILL)  # the last-started worker: a rank, not the launcher
    child.communicate(timeout=120)
    assert child.returncode != 0
    kept = chunk_times(tmp_path)
    total = 9 * 6  # baseline + 8 layers, 24 samples in chunks of 4
    assert 0 < len(kept) < total
    study("layer_masking", tmp_path, ranks=2)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())          # nothing finished recomputed
    assert len(chunk_times(tmp_path)) == total                               # the rest computed once
    assert_same_dataset(single / "layer_masking.nc", tmp_path / "layer_masking.nc")


def test_shards_then_the_plain_command(single, tmp_path):
    first = study("layer_masking", tmp_path, "--shard", "0/2")
    assert "shard 0/2 finished its chunks of baseline" in first.stderr  # and stopped: shard 1's are missing
    assert len(chunk_times(tmp_path)) == 9 * 3                           # chunks 0, 2, 4 of every run
    second = study("layer_masking", tmp_path, "--shard", "1/2")
    assert "every chunk is done" in second.stdout                        # it found shard 0's: all complete
    assert not (tmp_path / "layer_masking.nc").exists()                  # yet a shard writes no dataset
    before = chunk_times(tmp_path)
    assert len(before) == 9 * 6
    study("layer_masking", tmp_path)
    assert chunk_times(tmp_path) == before                                  # the plain command computed nothing
    assert_same_dataset(single / "layer_masking.nc", tmp_path / "layer_masking.nc")


def test_shard_option_is_checked(tmp_path):
    from studies import cli, layer_masking

    for bad in ("2/2", "x/3", "1"):
        with pytest.raises(cli.UsageError, match=f"--shard {bad}: give I/N"):
            layer_masking.main(["--shard", bad, "--out", str(tmp_path)])


def _agree(rank, digests, port, errors):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mech.parallel.agree(digests[rank], "run baseline")
    except RuntimeError as error:
        errors.put((rank, str(error)))
    finally:
        dist.destroy_process_group()


def test_a_rank_with_another_configuration_is_refused():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    errors = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_agree, args=(["a", "b"], port, errors), nprocs=2, start_method="spawn")
    found = [errors.get() for _ in range(2)]
    assert all("rank 1 runs another configuration of run baseline than rank 0" in message for _, message in found)
