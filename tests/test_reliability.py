"""Long runs: nothing finished recomputed, nothing overwritten, nothing invalid published,
every bad input refused first and clearly. One section per defect of the reliability issue."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import xarray as xr

import mech
from mech.datasets import Sample
from studies import baselines, cli, layer_masking, mask_ratio, output, review_layer, strategies
from tiny_models import tiny_llava, tiny_samples

TESTS = Path(__file__).resolve().parent
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]), OMP_NUM_THREADS="1",
           HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


@pytest.fixture(scope="module")
def llava():
    module, processor = tiny_llava("llava-1.5")
    return mech.load(module, processor=processor)


def manifest_chunks(out: Path) -> list[Path]:
    (manifest,) = out.glob("run-*.json")
    return [out / name for name in json.loads(manifest.read_text())["chunks"]]


def chunk_files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in Path(out).rglob("chunk-*.json")}


# -- 1. one --out, several configurations --------------------------------------------------

@pytest.mark.parametrize("change", [dict(batch_size=1), dict(max_new_tokens=3), dict(protocol="official")])
def test_configurations_share_a_folder_without_overwriting(llava, tmp_path, change):
    samples = tiny_samples(4)
    base = dict(batch_size=2, chunk_size=2, max_new_tokens=2, progress=False)
    first = mech.run(llava, samples, out=tmp_path, **base)
    files = chunk_files(tmp_path)
    other = mech.run(llava, samples, out=tmp_path, **{**base, **change})
    assert all(p.stat().st_mtime_ns == t for p, t in files.items())   # nothing overwritten
    if "protocol" in change:  # scoring only: the same generation is reused
        assert other.reused == [0, 1] and other.computed == []
    else:
        assert other.computed == [0, 1] and other.rejected == {}
    again = mech.run(llava, samples, out=tmp_path, **base)
    assert again.reused == [0, 1] and again.predictions == first.predictions


def test_results_load_refuses_mixed_or_repeated_chunks(llava, tmp_path):
    samples = tiny_samples(4)
    base = dict(chunk_size=2, max_new_tokens=2, progress=False)
    one = mech.run(llava, samples, out=tmp_path, batch_size=2, **base)
    mech.run(llava, samples, out=tmp_path, batch_size=1, **base)
    with pytest.raises(ValueError, match="holds 2 configurations.*batch_size 2.*pass run="):
        mech.Results.load(tmp_path)
    manifests = sorted(tmp_path.glob("run-*.json"))
    name = next(m.name for m in manifests if json.loads(m.read_text())["batch_size"] == 2)
    loaded = mech.Results.load(tmp_path, run=name)
    assert [r.prediction for r in loaded.records] == one.predictions and len(loaded.records) == 4
    # A manifest that lists one chunk twice repeats its sample ids.
    data = json.loads((tmp_path / name).read_text())
    data["chunks"] = [data["chunks"][0]] * 2
    (tmp_path / name).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="repeats sample ids"):
        mech.Results.load(tmp_path, run=name)


def test_a_larger_limit_and_another_seed_reuse_and_keep_chunks(checkpoint, tmp_path):
    args = ["--model", checkpoint, "--batch-size", "2", "--chunk-size", "2", "--no-progress", "--out", str(tmp_path),
            "--datasets", "shapes"]
    small = layer_masking.main([*args, "--limit", "4"])
    files = chunk_files(tmp_path)
    assert len(files) == 2 * 7  # 2 chunks x (baseline + 6 layers)
    large = layer_masking.main([*args, "--limit", "6"])
    assert all(p.stat().st_mtime_ns == t for p, t in files.items())  # reused, not rewritten
    assert len(chunk_files(tmp_path)) == 3 * 7                       # only the new chunk computed
    assert (large["score"].isel(sample=slice(0, 4)).values == small["score"].values).all()
    layer_masking.main([*args, "--limit", "4", "--seed", "1"])       # other samples: other chunks
    assert len(chunk_files(tmp_path)) == 3 * 7 + 2 * 7
    before = chunk_files(tmp_path)
    layer_masking.main([*args, "--limit", "4"])
    assert chunk_files(tmp_path) == before                           # nothing recomputed


# -- 2. nothing invalid is published -------------------------------------------------------

def test_invalid_local_dataset_fields_are_refused(tmp_path):
    def dump(path, data):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))

    from PIL import Image

    root = tmp_path / "textvqa"
    (root / "train_images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "train_images" / "t0.jpg")
    record = {"question": "what?", "image_id": "t0", "question_id": 1, "answers": "nokia"}
    dump(root / "TextVQA_0.5.1_val.json", {"data": [record]})
    with pytest.raises(ValueError, match="'answers' must be a list of strings.*split into characters"):
        mech.datasets.load("textvqa", source=root)
    dump(root / "TextVQA_0.5.1_val.json", {"data": [{**record, "answers": ["x"] * 10, "question": 7}]})
    with pytest.raises(ValueError, match="'question' must be a string, got int"):
        mech.datasets.load("textvqa", source=root)
    gqa = tmp_path / "gqa"
    dump(gqa / "testdev_balanced_questions.json", {"1": {"imageId": "n1", "question": "q?", "answer": ["yes"]}})
    with pytest.raises(ValueError, match="'answer' must be a string, got list"):
        mech.datasets.load("gqa", source=gqa)


def test_samples_the_model_cannot_take_are_refused(llava):
    good = tiny_samples(1)[0]
    for bad, match in ((Sample("a", "shapes", None, "q?", ("x",)), "image must be a PIL image"),
                       (Sample("b", "shapes", good.image, 5, ("x",)), "question must be a str"),
                       (Sample("c", "shapes", good.image, "q?", "x"), "answers must be a tuple of strings")):
        with pytest.raises(TypeError, match=f"sample {bad.id}: {match}"):
            mech.run(llava, [bad], progress=False)


def test_a_prompt_beyond_the_context_is_named(llava):
    sample = tiny_samples(1)[0]
    long = Sample("long-one", "shapes", sample.image, " ".join(["what"] * 5000), sample.answers)
    with pytest.warns(mech.ContextWarning, match="sample long-one .*beyond the model's context of 4096"):
        mech.run(llava, [long], max_new_tokens=1, progress=False)


# -- 3. every bad option before the expensive part -------------------------------------------

BAD = [
    (layer_masking, ["--limit", "0"], "--limit 0"),
    (layer_masking, ["--batch-size", "0"], "--batch-size 0"),
    (layer_masking, ["--max-new-tokens", "0"], "--max-new-tokens 0"),
    (layer_masking, ["--batch-size", "2", "--chunk-size", "3"], "--chunk-size 3: must be a multiple"),
    (layer_masking, ["--source", "shapes"], "--source shapes: give NAME=PATH"),
    (layer_masking, ["--source", "vqav2=/nowhere/x"], "not among --datasets"),
    (layer_masking, ["--datasets", "shapes,vqa9"], "--datasets vqa9: unknown"),
    (review_layer, ["--review", "-1"], r"--review -1: out of range: valid decoder layers are 0\.\.5"),
    (review_layer, ["--review", "6"], r"--review 6: out of range"),
    (review_layer, ["--review", str(10 ** 6)], r"--review 1000000: out of range"),
    (review_layer, ["--review", "0"], "layer 0 has none"),
    (review_layer, ["--post", "9"], r"--post 9: out of range"),
    (review_layer, ["--review", "3", "--post", "3"], "--post 3: must come before the review layer 3"),
    (review_layer, ["--rho", "2"], r"--rho 2: must be a finite number in \[0, 1\]"),
    (review_layer, ["--rho", "nan"], r"--rho nan: must be a finite number in \[0, 1\]"),
    (review_layer, ["--lam", "-0.5"], "--lam -0.5: must be a finite number >= 0"),
    (review_layer, ["--lam", "nan"], "--lam nan: must be a finite number >= 0"),
    (review_layer, ["--lam", "inf"], "--lam inf: must be a finite number >= 0"),
    (review_layer, ["--fusion", "abc"], "--fusion abc: give comma-separated decoder layer numbers"),
    (review_layer, ["--fusion", "99"], r"--fusion 99: out of range: valid decoder layers are 0\.\.5"),
    (review_layer, ["--review", "3", "--fusion", "4,5"], "--fusion 4,5: no layer below the post-integrated"),
    (review_layer, ["--candidates", "most"], "--candidates most: use fusion, all, shallow or deep"),
    (strategies, ["--fusion", "99"], r"--fusion 99: out of range"),
    (mask_ratio, ["--rho", "0,2"], r"--rho 2: must be a finite number in \[0, 1\]"),
    (mask_ratio, ["--rho", "abc"], r"--rho 'abc': must be a finite number in \[0, 1\]"),
    (mask_ratio, ["--rho", "0.2,0.2"], "given twice"),
    (mask_ratio, ["--ratios", "0,1"], "--ratios 0,1: the option is --rho now"),
    (review_layer, ["--rho", "0.2,0.5"], "--rho 0.2,0.5: this study takes one value; python -m studies.controls"),
    (mask_ratio, ["--lam", "nan"], "--lam nan"),
    (baselines, ["--vicrop-layer", "99"], r"--vicrop-layer 99: ViCrop attention layer 99 is out of range"),
    (baselines, ["--dola-layers", "99"], "--dola-layers 99: DoLa candidate layers"),
    (baselines, ["--dola-layers", "x"], "--dola-layers x: use high, low or comma-separated"),
    (baselines, ["--repetition-penalty", "nan"], "--repetition-penalty nan: must be a finite number > 0"),
    (baselines, ["--vicrop-crop-size", "0"], "--vicrop-crop-size 0"),
    (baselines, ["--remote"], "--remote: DoLa and ViCrop"),
]


@pytest.mark.parametrize("study, options, message", BAD, ids=[" ".join(o) for _, o, _ in BAD])
def test_bad_options_fail_before_anything_is_written(checkpoint, tmp_path, study, options, message):
    out = tmp_path / "runs"
    with pytest.raises(cli.UsageError, match=message):
        study.main(["--model", checkpoint, "--limit", "2", "--batch-size", "2", "--no-progress",
                    "--out", str(out), *options])
    assert not list(out.rglob("chunk-*.json")) and not list(out.rglob("*.nc"))


def test_a_bad_option_is_one_line_and_exit_code_2(checkpoint, tmp_path):
    done = subprocess.run([sys.executable, "-m", "studies.review_layer", "--model", checkpoint, "--lam", "nan",
                           "--out", str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=120,
                          cwd=TESTS.parent)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and "Loading weights" not in line]
    assert lines == ["python -m studies.review_layer: error: --lam nan: must be a finite number >= 0 "
                     "(0 removes low-score tokens, 1 leaves them)"]


# -- 4. 1/t labelled by how it was measured --------------------------------------------------

def test_naive_sweep_times_standalone_runs(checkpoint, tmp_path):
    args = ["--model", checkpoint, "--limit", "4", "--batch-size", "2", "--no-progress", "--out", str(tmp_path),
            "--datasets", "shapes"]
    fast = layer_masking.main(args)
    files = chunk_files(tmp_path)
    naive = layer_masking.main([*args, "--naive-sweep"])
    assert "sweep" in fast["inverse_time"].attrs["timing"]
    assert "sweep" not in naive["inverse_time"].attrs["timing"]
    layer_runs = [p for p in chunk_files(tmp_path) if p not in files]
    assert len(layer_runs) == 7  # baseline and six layers, timed standalone: chunks of their own
    assert (fast["score"].values == naive["score"].values).all()


# -- 5. integrity ----------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("score", 0.123), ("prediction", "zebra")])
def test_an_edited_chunk_is_caught(llava, tmp_path, field, value):
    samples = tiny_samples(6)
    first = mech.run(llava, samples, out=tmp_path, batch_size=2, max_new_tokens=2, progress=False)
    (path,) = manifest_chunks(tmp_path)
    data = json.loads(path.read_text())
    for record in data["records"][:5]:
        record[field] = value
    path.write_text(json.dumps(data))  # still valid JSON, the fingerprint untouched
    with pytest.warns(mech.ChunkWarning, match="do not match their checksum"):
        again = mech.run(llava, samples, out=tmp_path, batch_size=2, max_new_tokens=2, progress=False)
    assert again.computed == [0] and again.predictions == first.predictions


def test_a_changed_weight_changes_the_fingerprint(tmp_path):
    module, processor = tiny_llava("llava-1.5")
    model = mech.load(module, processor=processor)
    samples = tiny_samples(2)
    before = mech.store.model_fingerprint(model)["weights_xxh3_128"]
    mech.run(model, samples, out=tmp_path, batch_size=2, max_new_tokens=2, progress=False)
    with torch.no_grad():
        for p in module.model.language_model.layers[2].parameters():
            p.data.zero_()  # in place, behind autograd's back: only the bytes change
    assert mech.store.model_fingerprint(model)["weights_xxh3_128"] != before
    again = mech.run(model, samples, out=tmp_path, batch_size=2, max_new_tokens=2, progress=False)
    assert again.computed == [0] and again.reused == []
    # one changed element anywhere changes it too
    with torch.no_grad():
        module.lm_head.weight.view(-1)[-1] += 1e-3
    fresh, fresh_processor = tiny_llava("llava-1.5")
    with torch.no_grad():
        for p in fresh.model.language_model.layers[2].parameters():
            p.zero_()
    same_but_one = mech.store.model_fingerprint(mech.load(fresh, processor=fresh_processor))
    assert same_but_one["weights_xxh3_128"] != mech.store.model_fingerprint(model)["weights_xxh3_128"]
    with torch.no_grad():
        fresh.lm_head.weight.view(-1)[-1] += 1e-3
    assert mech.store.model_fingerprint(mech.load(fresh, processor=fresh_processor))["weights_xxh3_128"] == \
        mech.store.model_fingerprint(model)["weights_xxh3_128"]


# -- 6. model loading ------------------------------------------------------------------------

def test_model_folders_that_are_not_llava(tmp_path):
    from transformers import GPT2Config, LlamaConfig

    GPT2Config(n_layer=1, architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path / "gpt2")
    LlamaConfig(num_hidden_layers=1, architectures=["LlamaForCausalLM"]).save_pretrained(tmp_path / "llama")
    LlamaConfig(num_hidden_layers=1).save_pretrained(tmp_path / "bare")
    (tmp_path / "empty").mkdir()
    cases = {"gpt2": "unsupported architecture GPT2LMHeadModel", "llama": "unsupported architecture LlamaForCausalLM",
             "bare": "unsupported model_type 'llama'", "empty": "the folder is empty", "missing/x/y": "no such folder"}
    for folder, message in cases.items():
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            mech.load(str(tmp_path / folder))
    with pytest.raises(cli.UsageError, match=f"--model {tmp_path / 'gpt2'}: unsupported.*mech supports"):
        layer_masking.main(["--model", str(tmp_path / "gpt2"), "--out", str(tmp_path / "runs")])


def test_hub_ids_while_offline_say_so_at_once(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="hub access is off .*pass a local copy"):
        mech.load("llava-hf/not-cached-anywhere")
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="vqav2 .*hub access is off.*--source vqav2=FOLDER"):
        mech.datasets.load("vqav2", limit=2)
    assert time.monotonic() - start < 10


# -- 7. concurrency and faults -----------------------------------------------------------------

def test_two_processes_share_one_folder(tmp_path):
    command = [sys.executable, str(TESTS / "runner_child.py"), str(tmp_path), "8", "0.2"]
    children = [subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    outs = [child.communicate(timeout=180) for child in children]
    assert all(child.returncode == 0 for child in children), [err for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    computed = [set(r["computed"]) for r in results]
    assert computed[0].isdisjoint(computed[1]), computed         # no chunk computed twice
    assert computed[0] | computed[1] == {0, 1, 2, 3}
    assert results[0]["records"] == results[1]["records"] or \
        [r["prediction"] for r in results[0]["records"]] == [r["prediction"] for r in results[1]["records"]]


def test_simultaneous_dataset_writes(tmp_path):
    script = ("import sys, xarray as xr, numpy as np\n"
              "from pathlib import Path\nfrom studies.output import write_dataset\n"
              "ds = xr.Dataset({'x': ('i', np.arange(1000.0) + int(sys.argv[1]))})\n"
              "for _ in range(20):\n    write_dataset(ds, Path(sys.argv[2]), 'study')\n")
    children = [subprocess.Popen([sys.executable, "-c", script, str(k), str(tmp_path)], env=ENV,
                                 stderr=subprocess.PIPE, text=True, cwd=TESTS.parent) for k in range(4)]
    errors = [child.communicate(timeout=120)[1] for child in children]
    assert all(child.returncode == 0 for child in children), errors
    with xr.open_dataset(tmp_path / "study.nc") as ds:
        assert ds["x"].size == 1000
    assert [p.name for p in tmp_path.iterdir()] == ["study.nc"]  # no temporary file left


def test_files_are_readable_by_the_group(llava, tmp_path):
    mask = os.umask(0o022)
    try:
        mech.run(llava, tiny_samples(2), out=tmp_path, batch_size=2, max_new_tokens=1, progress=False)
        output.write_dataset(xr.Dataset({"x": ("i", [1.0])}), tmp_path, "study")
    finally:
        os.umask(mask)
    for path in [*manifest_chunks(tmp_path), tmp_path / "study.nc", *tmp_path.glob("run-*.json")]:
        assert path.stat().st_mode & 0o777 == 0o644, path


@pytest.fixture
def small_disk(tmp_path):
    """A 24 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(where)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", str(where)])


def test_a_full_disk_is_one_clear_error_and_leaves_nothing(llava, small_disk):
    (small_disk / "filler").write_bytes(b"x" * (22 * 1024))
    samples = tiny_samples(4)
    with pytest.raises(mech.WriteError, match=f"could not write {small_disk}.*the disk is full"):
        mech.run(llava, samples, out=small_disk / "run", batch_size=2, chunk_size=2, max_new_tokens=2,
                 progress=False)
    with pytest.raises(mech.WriteError, match="study.nc.*nothing partial was left"):
        output.write_dataset(xr.Dataset({"x": ("i", list(range(10000)))}), small_disk, "study")
    leftovers = [p.name for p in small_disk.rglob("*") if p.is_file() and p.name != "filler"
                 and not p.name.endswith(".lock")]
    assert not [n for n in leftovers if n.endswith(".tmp") or n.startswith("chunk-") or n.endswith(".nc")], leftovers


def test_a_failed_write_is_one_error_everywhere(llava, tmp_path, monkeypatch):
    """Without a small disk: every write path turns an OS error into a WriteError."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mech.store, "pretty", full)
    with pytest.raises(mech.WriteError, match="No space left on device.*disk is full"):
        mech.run(llava, tiny_samples(2), out=tmp_path, batch_size=2, max_new_tokens=1, progress=False)
    assert not list(tmp_path.rglob("*.tmp"))


def test_ctrl_c_says_what_was_saved_and_resumes(checkpoint, tmp_path):
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "studies.layer_masking", "--model", checkpoint, "--limit", "12",
               "--batch-size", "2", "--chunk-size", "2", "--no-progress", "--out", str(out), "--datasets", "shapes"]
    child = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=TESTS.parent)
    deadline = time.monotonic() + 120
    while len(list(out.rglob("chunk-*.json"))) < 3:
        assert child.poll() is None, child.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "Traceback" not in err and "interrupted;" in err and "Resume with the same command" in err
    kept = chunk_files(out)
    assert kept
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300, cwd=TESTS.parent)
    assert done.returncode == 0, done.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # nothing finished recomputed
    whole = layer_masking.main([*command[3:], "--out", str(tmp_path / "whole")])
    with xr.open_dataset(out / "layer_masking.nc") as resumed:
        assert (resumed["score"].values == whole["score"].values).all()
        assert resumed.attrs["command"].startswith("python -m studies.layer_masking --model")


# -- 8. small runs are resumable -----------------------------------------------------------------

def test_chunk_size_bounds_what_a_kill_loses(checkpoint, tmp_path):
    layer_masking.main(["--model", checkpoint, "--limit", "6", "--batch-size", "2", "--chunk-size", "2",
                        "--no-progress", "--out", str(tmp_path), "--datasets", "shapes"])
    per_run = {}
    for path in tmp_path.rglob("chunk-*.json"):
        per_run.setdefault(path.parent.name, []).append(len(json.loads(path.read_text())["records"]))
    assert len(per_run) == 7 and all(sorted(sizes) == [2, 2, 2] for sizes in per_run.values())
