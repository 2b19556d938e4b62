"""Reliability, second pass: nothing invalid published, no stale chunk reused after a code
change, one way to score, no dataset overwritten, a model known by its content, no hang,
every bad input one line before any work, no leftovers. One section per numbered defect."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

import mech
from mech.datasets import Sample
from studies import cli, layer_masking
from tiny_models import tiny_llava, tiny_samples

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), OMP_NUM_THREADS="1",
           HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
RUN = dict(batch_size=2, chunk_size=2, max_new_tokens=2, progress=False)


@pytest.fixture(scope="module")
def llava():
    module, processor = tiny_llava("llava-1.5")
    return mech.load(module, processor=processor)


def chunk_files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in Path(out).rglob("chunk-*.json")}


def study(checkpoint, out, *options):
    return ["--model", checkpoint, "--no-progress", "--out", str(out), "--datasets", "shapes", "--limit", "2",
            "--batch-size", "2", "--chunk-size", "2", *options]


def registered(name, samples=None, metric="vqav2"):
    """Register dataset ``name`` whose loader returns ``samples`` (default: 2 tiny ones)."""
    def loader(limit=None, seed=0):
        made = samples if samples is not None else [
            Sample(s.id.replace("shapes", name), name, s.image, s.question, s.answers) for s in tiny_samples(2)]
        return made[:limit]
    mech.datasets.register(name, loader, metric=metric, replace=True)
    return name


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A saved 2-layer random LLaVA that knows the shapes words: a study is 3 runs."""
    from mech.datasets.shapes import VOCABULARY
    from mech.zoo.random_llava import random_llava

    folder = tmp_path_factory.mktemp("small-llava")
    module, processor = random_llava(layers=2, image_size=64, patch_size=16, words=VOCABULARY)
    module.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def other_checkout(tmp_path_factory):
    """A copy of mech whose generation code differs: every prediction upper-cased."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(ROOT / "mech", root / "mech", ignore=shutil.ignore_patterns("__pycache__"))
    records = root / "mech" / "runner" / "records.py"
    line = "text = tokenizer.decode(new[i, :count], skip_special_tokens=True).strip()"
    assert line in records.read_text()
    records.write_text(records.read_text().replace(line, line + ".upper()"))
    return root


# -- 1. invalid scores are an error, before anything is written ---------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf, 1.5, -0.5])
def test_a_scorer_returning_a_non_score_is_an_error_naming_dataset_sample_value(llava, tmp_path, bad):
    name = registered(f"r2-bad{str(bad).replace('.', '')}",
                      metric=lambda prediction, answers: bad if answers[0] == "poison" else 0.0)
    samples = [Sample(f"{name}-{i}", name, s.image, s.question, ("poison",) if i == 1 else s.answers)
               for i, s in enumerate(tiny_samples(2))]
    with pytest.raises(ValueError, match=rf"dataset {name}, sample {name}-1: its lmms-eval scorer returned "
                                         rf"{bad!r}.*finite number in \[0, 1\]"):
        mech.run(llava, samples, out=tmp_path, **RUN)
    assert not chunk_files(tmp_path)  # nothing written


def test_a_study_never_averages_over_skipped_scores(small, tmp_path):
    """The probe: NaN for some samples made accuracy a mean over the others, published."""
    name = registered("r2-nanstudy", metric=lambda prediction, answers: math.nan)
    with pytest.raises(ValueError, match=f"dataset {name}, sample {name}-000: .*returned nan"):
        layer_masking.main(study(small, tmp_path, "--datasets", name))
    assert not list(tmp_path.rglob("*.nc")) and not chunk_files(tmp_path)


# -- 2. code identity: a chunk of other code is never reused silently ---------------------------

def test_other_code_is_recomputed_alone_and_refused_among_ranks(llava, tmp_path, other_checkout):
    """The probe: generation code changed (predictions upper-cased), run into the same out,
    alone and as one of two ranks (`rank_child`: rank 1 runs the other checkout's code)."""
    import torch.multiprocessing as mp

    from rank_child import run_rank

    alone, ranks = tmp_path / "alone", tmp_path / "ranks"
    first = mech.run(llava, tiny_samples(4), out=alone, **RUN)
    assert any(p != p.upper() for p in first.predictions)
    before = chunk_files(alone)
    results = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(run_rank, args=(free_port(), str(alone), str(ranks), str(other_checkout), results),
                       nprocs=2, start_method="spawn")
    found = sorted((results.get() for _ in range(3)), key=str)
    (_, predictions, computed, warned, where), *by_rank = found
    assert where.startswith(str(other_checkout))
    assert predictions == [p.upper() for p in first.predictions]   # its own code's answers, not the stored ones
    assert computed == [0, 1] and any("made by other code" in w and "source_sha256" in w for w in warned)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # the first code's chunks kept
    assert [(r, f.startswith(str(other_checkout))) for _, r, _, f in by_rank] == [(0, False), (1, True)]
    assert all("rank 1 runs another configuration of run baseline than rank 0 (other code" in message
               for _, _, message, _ in by_rank), by_rank
    assert not chunk_files(ranks)


def test_other_code_is_reused_only_when_asked_and_then_recorded(llava, tmp_path, monkeypatch):
    samples = tiny_samples(4)
    first = mech.run(llava, samples, out=tmp_path, **RUN)
    real = mech.codebase.identity()
    monkeypatch.setattr(mech.codebase, "identity", lambda: {**real, "source_sha256": "another checkout"})
    mech.store.ACCEPTED.clear()
    reused = mech.run(llava, samples, out=tmp_path, reuse_other_code=True, **RUN)
    assert reused.computed == [] and reused.reused == [0, 1] and reused.predictions == first.predictions
    chunks = reused.meta["chunks_of_other_code"]
    assert sorted(chunks) == [0, 1] and all(c["code"]["source_sha256"] != "another checkout" for c in chunks.values())
    assert len(mech.store.ACCEPTED) == 2
    (manifest,) = [m for m in tmp_path.glob("run-*.json") if "chunks_of_other_code" in json.loads(m.read_text())]
    loaded = mech.Results.load(tmp_path, run=manifest.name)                   # what the run used
    assert loaded.predictions == first.predictions
    with pytest.warns(mech.ChunkWarning, match="made by other code"):
        again = mech.run(llava, samples, out=tmp_path, **RUN)                 # not asked: recomputed
    assert again.computed == [0, 1]


def test_the_source_digest_follows_code_not_comments(tmp_path):
    from mech import codebase

    root = tmp_path / "mech"
    shutil.copytree(ROOT / "mech", root, ignore=shutil.ignore_patterns("__pycache__"))
    digest = codebase.source_digest(root)
    job = root / "runner" / "job.py"
    text = job.read_text()
    job.write_text(text.replace('"""A run over chunks', '"""A run, reworded, over chunks', 1)
                   .replace("    share = parallel.current()\n", "    share = parallel.current()  # a comment\n\n", 1))
    assert codebase.source_digest(root) == digest          # docstrings, comments, blank lines: the same code
    (root / "plots.py").write_text((root / "plots.py").read_text() + "\nX = 1\n")
    assert codebase.source_digest(root) == digest          # above the runner: reads finished records only
    job.write_text(text.replace("wait=False", "wait=True", 1))
    assert codebase.source_digest(root) != digest          # code that makes records


def test_record_modules_are_the_layers_up_to_the_runner():
    from mech import codebase
    from tools import architecture

    runner = [name for name, _ in architecture.LAYERS].index("runner")
    mech_modules = {m for m in architecture.modules() if m.startswith("mech")}
    assert set(codebase.record_modules()) == {m for m in mech_modules
                                              if architecture.layer_of(m) is not None
                                              and architecture.layer_of(m) <= runner}


# -- 3. one reader: the same chunk gives the same scores everywhere -----------------------------

def test_results_load_scores_from_predictions_as_the_runner_does(llava, tmp_path):
    name = registered("r2-fix", metric=lambda prediction, answers: 0.0)
    samples = [Sample(f"{name}-{i}", name, s.image, s.question, s.answers) for i, s in enumerate(tiny_samples(4))]
    mech.run(llava, samples, out=tmp_path, **RUN)
    # a scorer fix ...
    registered(name, metric=lambda prediction, answers: 1.0 if prediction else 0.5)
    # ... and a score edited with its checksum recomputed
    (chunk, *_) = sorted(tmp_path.glob("chunk-*.json"))
    data = json.loads(chunk.read_text())
    data["records"][0]["score"] = 0.25
    data["records"][0]["scores"] = {"lmms-eval": 0.25, "official": 0.25}
    data["records_sha256"] = mech.store.digest(data["records"])
    chunk.write_text(json.dumps(data))
    by_runner = mech.run(llava, samples, out=tmp_path, **RUN)
    assert by_runner.reused == [0, 1]
    expected = [1.0 if r.prediction else 0.5 for r in by_runner.records]
    assert by_runner.scores == expected
    for protocol in ("lmms-eval", "official"):
        assert mech.Results.load(tmp_path, protocol=protocol).scores == expected


# -- 4. a second configuration never overwrites the first's dataset -----------------------------

def test_another_configuration_writes_its_own_dataset(small, tmp_path):
    layer_masking.main(study(small, tmp_path))
    (first,) = (tmp_path / "layer_masking").glob("*.nc")
    kept = first.read_bytes()
    layer_masking.main(study(small, tmp_path, "--batch-size", "1"))   # the probe: --batch-size into the same out
    files = sorted((tmp_path / "layer_masking").glob("*.nc"))
    assert len(files) == 2 and first.read_bytes() == kept                  # the first untouched
    with xr.open_dataset(tmp_path / "layer_masking.nc") as latest:         # the stable name: the latest
        assert latest.attrs["batch_size"] == 1
        second = tmp_path / "layer_masking" / f"{latest.attrs['config_id']}.nc"
    assert second in files and (tmp_path / "layer_masking.png").resolve().parent == tmp_path / "layer_masking"
    with xr.open_dataset(first) as ds:
        assert ds.attrs["batch_size"] == 2 and first.stem == ds.attrs["config_id"]


def test_a_dataset_of_the_earlier_layout_is_moved_not_replaced(tmp_path):
    import matplotlib.pyplot as plt

    from studies import output

    xr.Dataset({"x": ("i", [1.0])}, attrs={"seed": 0}).to_netcdf(tmp_path / "strategies.nc")
    (tmp_path / "strategies.png").write_bytes(b"earlier figure")
    args = type("Args", (), {"out": tmp_path})()
    output.publish(xr.Dataset({"x": ("i", [2.0])}, attrs={"seed": 1, "config_id": "new"}), args, "strategies",
                   lambda ds: plt.figure())
    earlier = output.config_id({"seed": 0})
    assert (tmp_path / "strategies" / f"{earlier}.png").read_bytes() == b"earlier figure"
    with xr.open_dataset(tmp_path / "strategies" / f"{earlier}.nc") as ds:
        assert float(ds["x"][0]) == 1.0
    with xr.open_dataset(tmp_path / "strategies.nc") as ds:
        assert float(ds["x"][0]) == 2.0


# -- 5. the model is known by its content; shards finish what they can ---------------------------

def test_any_spelling_of_a_model_reuses_its_chunks(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    copy = tmp_path / "node-local copy"
    shutil.copytree(ROOT / "data" / "tiny-llava-shapes", copy)
    samples = tiny_samples(2)
    spellings = ["tiny", "data/tiny-llava-shapes", "./data/tiny-llava-shapes/",
                 str(ROOT / "data" / "tiny-llava-shapes"), str(copy)]
    computed = [mech.run(mech.load(s), samples, out=tmp_path / "out", **RUN).computed for s in spellings]
    assert computed == [[0]] + [[]] * (len(spellings) - 1)


def test_shards_over_several_datasets_leave_nothing_for_the_plain_command(small, tmp_path):
    args = study(small, tmp_path, "--datasets", "shapes,shapes-dots", "--limit", "4")
    with pytest.raises(mech.parallel.ShardDone, match="shapes.*shapes-dots|shard 0/2"):
        layer_masking.main([*args, "--shard", "0/2"])
    try:
        layer_masking.main([*args, "--shard", "1/2"])
    except mech.parallel.ShardDone:
        pass
    before = chunk_files(tmp_path)
    assert len(before) == 2 * 3 * 2  # datasets x runs (baseline + 2 layers) x chunks
    layer_masking.main(args)
    assert chunk_files(tmp_path) == before  # the plain command computed nothing


# -- 6. no hangs ---------------------------------------------------------------------------------

LAUNCH = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="29999")


@pytest.mark.parametrize("env, message", [
    (dict(RANK="3", WORLD_SIZE="2", **LAUNCH), r"RANK='3' in the environment: must be a whole number in 0\.\.1"),
    (dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="2", **LAUNCH), r"LOCAL_RANK='2' .* in 0\.\.1"),
    (dict(RANK="0", WORLD_SIZE="4", LOCAL_WORLD_SIZE="2", LOCAL_RANK="3", **LAUNCH), r"below LOCAL_WORLD_SIZE=2"),
    (dict(WORLD_SIZE="abc"), r"WORLD_SIZE='abc' in the environment: must be a whole number >= 1"),
    (dict(WORLD_SIZE="2"), r"WORLD_SIZE=2 .* RANK, MASTER_ADDR, MASTER_PORT are not set.*torchrun"),
    (dict(RANK="1"), r"RANK='1' in the environment but WORLD_SIZE=''"),
    (dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="h", MASTER_PORT="70000"), r"MASTER_PORT='70000'"),
])
def test_an_inconsistent_launch_environment_is_one_line(env, message, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=message):
        mech.parallel.launch(env)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(cli.UsageError, match=message):
        layer_masking.main(["--out", str(tmp_path)])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A" for r in rows):
            return True
    return False


def test_a_missing_peer_is_one_line_within_seconds(monkeypatch, capsys, tmp_path):
    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    start = time.monotonic()
    with pytest.raises(mech.parallel.RendezvousError, match="rank 1 of WORLD_SIZE=2 did not join .*within 1 s"):
        mech.parallel.init(rendezvous_s=1)
    monkeypatch.setenv("RANK", "1")  # and rank 1 with no rank 0 to meet
    with pytest.raises(mech.parallel.RendezvousError, match="rank 1: nobody answered at .* within 1 s"):
        mech.parallel.init(rendezvous_s=1)
    monkeypatch.setenv("RANK", "0")
    assert time.monotonic() - start < 10
    monkeypatch.setenv("MECH_RENDEZVOUS_TIMEOUT", "1")  # the command, with its stated timeout shortened
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setattr(sys, "argv", ["layer_masking", "--out", str(tmp_path)])
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stop:
            cli.cli(layer_masking.main)
    finally:
        signal.signal(signal.SIGTERM, handler)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert stop.value.code == 1 and len(lines) == 1
    assert lines[0].startswith("python -m studies.layer_masking: error: rank 1 of WORLD_SIZE=2 did not join")
    assert time.monotonic() - start < 20


def test_signals_end_a_rank_waiting_for_its_peers(tmp_path):
    def rank0(port):
        env = dict(ENV, RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        return subprocess.Popen([sys.executable, "-m", "studies.layer_masking", "--model", "tiny", "--no-progress",
                                 "--out", str(tmp_path / str(port))], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    ports = [free_port(), free_port()]
    waiting = {signal.SIGTERM: rank0(ports[0]), signal.SIGINT: rank0(ports[1])}
    start = time.monotonic()
    try:
        for (sig, child), port in zip(waiting.items(), ports):
            while not listening(port):  # rank 0 serves the rendezvous and waits there for rank 1
                assert child.poll() is None, child.communicate()[1][-2000:]
                assert time.monotonic() - start < 120
                time.sleep(0.1)
            time.sleep(0.3)
            sent = time.monotonic()
            child.send_signal(sig)
            _, err = child.communicate(timeout=30)
            assert child.returncode == 130 and time.monotonic() - sent < 10, err[-2000:]
            assert "interrupted;" in err and "Traceback" not in err
    finally:
        for child in waiting.values():
            if child.poll() is None:
                child.kill()


# -- 7. every bad input: one line, naming it, before model work ----------------------------------

def test_truncated_weights_are_named(small, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(small, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    with pytest.raises(ValueError, match=f"{weights}: incomplete or damaged weights.*download or copy it again"):
        mech.load(str(broken))
    with pytest.raises(cli.UsageError, match=f"--model {broken}: {weights}: incomplete"):
        layer_masking.main(["--model", str(broken), "--out", str(tmp_path / "runs")])


@pytest.mark.parametrize("options, message", [
    (["--seed", "99999999999999999999"], r"--seed 99999999999999999999: must be an integer in 0\.\.9223372036854775807"),
    (["--seed", "-1"], r"--seed -1: must be an integer in 0\.\."),
    (["--limit", str(2 ** 64)], r"--limit 18446744073709551616: must be an integer in 1\.\."),
    (["--out", "x" * 300], r"--out x+\.\.\.: the name x+\.\.\. is 300 bytes, over this filesystem's"),
    (["--revision", "deadbeef"], r"--revision deadbeef: applies to a hub id only, and --model tiny is the embedded"),
])
def test_options_the_outputs_cannot_hold_are_refused_first(tmp_path, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mech, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(cli.UsageError, match=message):
        layer_masking.main(["--model", "tiny", "--datasets", "shapes", "--out", "runs", *options])
    assert not any(tmp_path.rglob("*.json")) and not any(tmp_path.rglob("*.nc"))


def test_revision_with_a_local_model_is_refused():
    with pytest.raises(ValueError, match="revision='deadbeef' applies to a hub id only, and tiny is the embedded"):
        mech.load("tiny", revision="deadbeef")


@pytest.mark.parametrize("broken, message", [
    (lambda s: [Sample(s[0].id, "r2-loader", None, "q?", ("x",)), *s[1:]], "image must be a PIL image"),
    (lambda s: [s[0], s[0]], r"sample ids must be unique.*repeated: \['r2-loader-000'\]"),
    (lambda s: [Sample(s[0].id, "r2-loader", s[0].image, "q?", "yes")], "answers must be a tuple of strings"),
    (lambda s: [Sample("a\0b", "r2-loader", s[0].image, "q?", ("x",))], "NUL character"),
    (lambda s: [s[0], Sample(s[1].id, "r2-loader", s[1].image, "q?", ())], "r2-loader-001 .* has no gold answers"),
])
def test_a_loader_giving_bad_samples_is_named_before_the_model_loads(tmp_path, monkeypatch, broken, message):
    good = [Sample(f"r2-loader-{i:03d}", "r2-loader", s.image, s.question, s.answers)
            for i, s in enumerate(tiny_samples(2))]
    registered("r2-loader", broken(good))
    monkeypatch.setattr(mech, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(cli.UsageError, match=f"--datasets r2-loader: .*{message}"):
        layer_masking.main(["--model", "tiny", "--datasets", "r2-loader", "--out", str(tmp_path)])


def test_a_damaged_manifest_is_named(llava, tmp_path):
    mech.run(llava, tiny_samples(2), out=tmp_path, **RUN)
    (manifest,) = tmp_path.glob("run-*.json")
    for damage in (manifest.read_text()[:50], json.dumps({"format": 2})):
        manifest.write_text(damage)
        with pytest.raises(ValueError, match=f"{manifest}: damaged run manifest.*delete it and rerun"):
            mech.Results.load(tmp_path)


def test_a_truncated_image_names_its_file_and_sample(tmp_path):
    from PIL import Image

    root = tmp_path / "textvqa"
    (root / "train_images").mkdir(parents=True)
    image = root / "train_images" / "t0.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(image)
    image.write_bytes(image.read_bytes()[:400])
    record = {"question": "what?", "image_id": "t0", "question_id": 7, "answers": ["a"] * 10}
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": [record]}))
    with pytest.raises(OSError, match=f"sample 7: image {image} cannot be read.*damaged or incomplete"):
        list(mech.datasets.load("textvqa", source=root))


# -- 8. leftovers ---------------------------------------------------------------------------------

def _die_while_writing(path: Path) -> None:
    """Fork a writer that is killed in the middle of writing ``path``."""
    pid = os.fork()
    if pid == 0:  # the child: start the write, then die as under SIGKILL
        def write(tmp):
            tmp.write_bytes(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            mech.store.atomic_write(path, write)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)


def test_temporary_files_of_dead_writers_are_removed_on_the_next_run(llava, tmp_path):
    import threading

    from studies import output

    run = tmp_path / "run"
    _die_while_writing(run / "chunk-abc.json")
    _die_while_writing(tmp_path / "study.nc")  # a study's dataset, killed mid-write
    dead = sorted(tmp_path.rglob(".*.tmp"))
    assert len(dead) == 2
    release = threading.Event()  # a live writer, at work while the next run starts: its file is kept
    writer = threading.Thread(target=mech.store.atomic_write,
                              args=(run / "chunk-live.json", lambda tmp: (tmp.write_bytes(b"x"), release.wait(30))))
    writer.start()
    while len(list(run.glob(".*.tmp"))) < 2:
        time.sleep(0.01)
    mech.run(llava, tiny_samples(2), out=run, **RUN)
    left = list(run.glob(".*.tmp"))
    assert len(left) == 1 and ".chunk-live.json." in left[0].name  # the dead writer's removed, the live one's kept
    release.set()
    writer.join()
    assert (run / "chunk-live.json").read_bytes() == b"x"
    output.publish(xr.Dataset({"x": ("i", [1.0])}, attrs={"config_id": "c"}), type("A", (), {"out": tmp_path})(),
                   "study", lambda ds: __import__("matplotlib.pyplot").pyplot.figure())
    assert not list(tmp_path.rglob(".*.tmp"))


def test_lock_files_are_removed_when_their_chunk_is_done(llava, tmp_path):
    mech.run(llava, tiny_samples(4), out=tmp_path, **RUN)
    assert len(chunk_files(tmp_path)) == 2
    assert not list(tmp_path.rglob("*.lock"))


def test_sample_ids_keep_every_character_through_the_dataset(small, tmp_path):
    ids = ["ünï/cöde", "tab\there", "new\nline", " lead and trail ", "😀", "x" * 300]
    images = tiny_samples(len(ids))
    registered("r2-ids", [Sample(i, "r2-ids", s.image, s.question, s.answers) for i, s in zip(ids, images)])
    layer_masking.main(study(small, tmp_path, "--datasets", "r2-ids", "--limit", str(len(ids)),
                             "--chunk-size", "6"))
    with xr.open_dataset(tmp_path / "layer_masking.nc") as ds:
        assert list(ds["sample_id"].values) == ids


def test_a_sample_id_the_files_cannot_keep_is_refused(llava, tmp_path):
    image = tiny_samples(1)[0].image
    for bad, message in (("a\0b", "its id holds a NUL character"), ("\ud800", "its id is not valid text"),
                         ("", "give every sample a non-empty id")):
        with pytest.raises(ValueError, match=message):
            mech.run(llava, [Sample(bad, "shapes", image, "q?", ("x",))], out=tmp_path, progress=False)
    assert not chunk_files(tmp_path)
