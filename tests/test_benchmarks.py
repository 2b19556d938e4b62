"""Loaders on fixtures written here in each source's real schema (no network)."""

import json
from pathlib import Path

import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")

import mech.datasets.hub_copies as hub_copies  # noqa: E402
from mech.datasets import DATASETS, Sample, load  # noqa: E402
from mech.prompts import question_prompt  # noqa: E402

COLORS = ["red", "green", "blue", "white"]


def _img(i: int) -> Image.Image:
    return Image.new("RGB", (8, 6), COLORS[i % len(COLORS)])


def _save(path: Path, i: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _img(i).save(path)


def _dump(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _ten(*words: str) -> list[str]:
    return (list(words) * 10)[:10]


# --- Hub fixtures: the lmms-eval repos' columns, in the repo's parquet layout ---------

def _hub_repo(root: Path, configs: dict) -> Path:
    """configs: {config_name: (folder, split, columns)} written as <folder>/<split>-00000-of-00001.parquet."""
    lines = ["---", "configs:"]
    for config, (folder, split, cols) in configs.items():
        feats = {"image": datasets.Image()} if "image" in cols else {}
        ds = datasets.Dataset.from_dict(cols)
        if feats:
            ds = ds.cast_column("image", feats["image"])
        (root / folder).mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / folder / f"{split}-00000-of-00001.parquet"))
        lines += [f"- config_name: {config}", "  data_files:",
                  f"  - split: {split}", f"    path: {folder}/{split}-*"]
    (root / "README.md").write_text("\n".join(lines + ["---", ""]))
    return root


HUB_ROWS = {
    "textvqa": ("default", "data", "validation", lambda n: {
        "image_id": [f"img{i}" for i in range(n)], "question_id": list(range(n)),
        "question": [f"what does sign {i} say?" for i in range(n)],
        "answers": [_ten(f"stop{i}") for i in range(n)],
        "ocr_tokens": [["STOP", f"no{i}"] for i in range(n)], "set_name": ["val"] * n,
        "image": [_img(i) for i in range(n)]}),
    "okvqa": ("default", "data", "val2014", lambda n: {
        "question_id": [str(i) for i in range(n)], "image": [_img(i) for i in range(n)],
        "question": [f"what sport {i}?" for i in range(n)], "answers": [_ten("tennis")] * n,
        "question_type": ["other"] * n, "answer_type": ["other"] * n}),
    "vizwiz": ("default", "data", "val", lambda n: {
        "question_id": [f"VizWiz_val_{i:08d}" for i in range(n)], "image": [_img(i) for i in range(n)],
        "question": [f"what is this {i}?" for i in range(n)], "answers": [_ten("unanswerable")] * n,
        "category": ["unanswerable"] * n}),
    "docvqa": ("DocVQA", "DocVQA", "validation", lambda n: {
        "questionId": [str(100 + i) for i in range(n)], "question": [f"what is the date {i}?" for i in range(n)],
        "question_types": [["form"]] * n, "image": [_img(i) for i in range(n)], "docId": list(range(n)),
        "ucsf_document_id": ["x"] * n, "ucsf_document_page_no": ["1"] * n,
        "answers": [["1 May 1990", "May 1, 1990"]] * n, "data_split": ["val"] * n}),
}


@pytest.mark.parametrize("name", sorted(HUB_ROWS))
def test_hub_parquet_layout(tmp_path, name):
    config, folder, split, make = HUB_ROWS[name]
    repo = _hub_repo(tmp_path / "repo", {config: (folder, split, make(5))})
    samples = load(name, source=repo, cache_dir=str(tmp_path / "cache"))
    assert len(samples) == 5 and samples.revision is None
    s = samples[2]
    assert isinstance(s, Sample) and s.dataset == name and s.image.size == (8, 6)
    assert s.image.getpixel((0, 0)) == _img(2).getpixel((0, 0))
    assert all(isinstance(a, str) for a in s.answers) and s.question.endswith("?")


def test_vqav2_from_save_to_disk(tmp_path):
    n = 6
    ds = datasets.Dataset.from_dict({
        "question_type": ["how many"] * n, "multiple_choice_answer": ["2"] * n,
        "answers": [[{"answer": "2", "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]] * n,
        "image_id": list(range(n)), "answer_type": ["number"] * n,
        "question_id": [1000 + i for i in range(n)], "question": [f"how many dogs {i}?" for i in range(n)],
        "image": [_img(i) for i in range(n)],
    }).cast_column("image", datasets.Image())
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "vqav2"))
    samples = load("vqav2", source=tmp_path / "vqav2", limit=3, seed=1)
    assert len(samples) == 3
    s = samples[0]
    assert s.answers == ("2",) * 10 and s.extras["answer_type"] == "number"
    assert question_prompt(s) == s.question + "\nAnswer the question using a single word or phrase."


def test_gqa_two_configs_joined_on_image_id(tmp_path):
    instr = {"id": ["q0", "q1", "q2"], "imageId": ["n1", "n2", "n1"],
             "question": ["is it red?", "is it blue?", "what color?"],
             "answer": ["yes", "no", "red"], "fullAnswer": ["Yes, it is red."] * 3,
             "isBalanced": [True] * 3}
    images = {"id": ["n1", "n2"], "image": [_img(0), _img(1)]}
    repo = _hub_repo(tmp_path / "GQA", {
        "testdev_balanced_instructions": ("testdev_balanced_instructions", "testdev", instr),
        "testdev_balanced_images": ("testdev_balanced_images", "testdev", images)})
    samples = load("gqa", source=repo, cache_dir=str(tmp_path / "cache"))
    assert [s.id for s in samples] == ["q0", "q1", "q2"]
    assert samples[1].answers == ("no",) and samples[1].image.getpixel((0, 0)) == (0, 128, 0)
    assert samples[2].image.getpixel((0, 0)) == (255, 0, 0)


def test_hub_ids_use_pinned_revision(monkeypatch):
    seen = []

    def fake_open(where, kind, config, split, revision, cache_dir):
        seen.append((str(where), kind, config, split, revision))
        return datasets.Dataset.from_dict({"question_id": [], "question": [], "answers": [], "image": []})

    monkeypatch.setattr(hub_copies, "open_hf", fake_open)
    pin = DATASETS["okvqa"].revision
    load("okvqa")
    load("okvqa", source="lmms-lab/OK-VQA")
    assert seen == [("lmms-lab-encoder/OK-VQA", "hub", None, "val2014", pin),
                    ("lmms-lab/OK-VQA", "hub", None, "val2014", pin)]
    with pytest.warns(UserWarning, match="no pinned revision"):
        load("okvqa", source="someone/ok-vqa-mirror")
    load("okvqa", source="someone/ok-vqa-mirror", revision="abc")
    assert seen[-1][-1] == "abc"
    for info in DATASETS.values():
        assert info.revision is None or len(info.revision) == 40


# --- official file formats ---------------------------------------------------------

def _vqa_files(root: Path, qname: str, aname: str, n: int = 4) -> Path:
    _dump(root / qname, {"questions": [
        {"image_id": 10 + i, "question": f"what is {i}?", "question_id": 500 + i} for i in range(n)]})
    _dump(root / aname, {"annotations": [
        {"question_id": 500 + i, "image_id": 10 + i, "question_type": "what is",
         "answer_type": "other", "multiple_choice_answer": "cat",
         "answers": [{"answer": "cat", "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]}
        for i in range(n)]})
    for i in range(n):
        _save(root / "val2014" / f"COCO_val2014_{10 + i:012d}.jpg", i)
    return root


def _official(name: str, root: Path) -> Path:
    if name == "vqav2":
        return _vqa_files(root, "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json")
    if name == "okvqa":
        return _vqa_files(root, "OpenEnded_mscoco_val2014_questions.json", "mscoco_val2014_annotations.json")
    if name == "gqa":
        _dump(root / "testdev_balanced_questions.json", {
            f"20{i}": {"imageId": f"n{i}", "question": f"is {i} red?", "answer": "yes",
                       "fullAnswer": "Yes.", "isBalanced": True} for i in range(4)})
        for i in range(4):
            _save(root / "images" / f"n{i}.jpg", i)
    elif name == "textvqa":
        _dump(root / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "data": [
            {"question": f"what brand {i}?", "image_id": f"t{i}", "question_id": 34602 + i,
             "answers": _ten("nokia"), "set_name": "val"} for i in range(4)]})
        _dump(root / "TextVQA_Rosetta_OCR_v0.2_val.json", {"data": [
            {"image_id": f"t{i}", "ocr_tokens": ["NOKIA", "3310"]} for i in range(4)]})
        for i in range(4):
            _save(root / "train_images" / f"t{i}.jpg", i)
    elif name == "vizwiz":
        _dump(root / "Annotations" / "val.json", [
            {"image": f"VizWiz_val_{i:08d}.jpg", "question": f"what is this {i}?",
             "answers": [{"answer": "soup", "answer_confidence": "yes"}] * 10,
             "answer_type": "other", "answerable": 1} for i in range(4)])
        for i in range(4):
            _save(root / "val" / f"VizWiz_val_{i:08d}.jpg", i)
    elif name == "docvqa":
        _dump(root / "val" / "val_v1.0.json", {"dataset_name": "docvqa", "dataset_split": "val", "data": [
            {"questionId": 49153 + i, "question": f"what is the date {i}?", "image": f"documents/d{i}.png",
             "docId": i, "answers": ["1 May 1990"], "data_split": "val"} for i in range(4)]})
        for i in range(4):
            _save(root / "val" / "documents" / f"d{i}.png", i)
    return root


@pytest.mark.parametrize("name", ["vqav2", "gqa", "textvqa", "okvqa", "vizwiz", "docvqa"])
def test_official_files(tmp_path, name):
    samples = load(name, source=_official(name, tmp_path / name))
    assert len(samples) == 4
    s = samples[3]
    assert s.dataset == name and s.image.getpixel((0, 0)) == _img(3).getpixel((0, 0))
    assert s.answers and all(isinstance(a, str) for a in s.answers)
    assert question_prompt(s, post_prompt="").lower() == s.question.lower()
    assert [x.id for x in samples] == [x.id for x in load(name, source=tmp_path / name)]


def test_limit_is_a_seeded_subsample(tmp_path):
    root = _official("gqa", tmp_path / "gqa")
    a = [s.id for s in load("gqa", source=root, limit=2, seed=0)]
    assert a == [s.id for s in load("gqa", source=root, limit=2, seed=0)]
    assert len(a) == 2
    picks = {tuple(s.id for s in load("gqa", source=root, limit=2, seed=k)) for k in range(8)}
    assert len(picks) > 1
    assert len(load("gqa", source=root, limit=99)) == 4
    # A larger limit extends a smaller one, in order: its chunks start with the smaller run's.
    for k in range(8):
        three = [s.id for s in load("gqa", source=root, limit=3, seed=k)]
        assert three[:2] == [s.id for s in load("gqa", source=root, limit=2, seed=k)]


def test_prompts_follow_lmms_eval(tmp_path):
    tv = load("textvqa", source=_official("textvqa", tmp_path / "tv"), ocr=True)[0]
    assert question_prompt(tv) == ("What brand 0?\nReference OCR token: NOKIA, 3310"
                                   "\nAnswer the question using a single word or phrase.")
    assert question_prompt(tv, ocr=False, post_prompt=" Answer:") == "What brand 0? Answer:"
    vz = load("vizwiz", source=_official("vizwiz", tmp_path / "vz"))[0]
    assert question_prompt(vz) == (
        "What is this 0?\nWhen the provided information is insufficient, respond with "
        "'Unanswerable'.\nAnswer the question using a single word or phrase.")
    ok = load("okvqa", source=_official("okvqa", tmp_path / "ok"))[0]
    assert question_prompt(ok).startswith("what is 0?\nWhen the provided information")


# --- errors -------------------------------------------------------------------------

def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="vqav2, gqa, textvqa, okvqa, vizwiz, docvqa"):
        load("vqa-v3")


def test_missing_image_is_named(tmp_path):
    root = _official("docvqa", tmp_path / "doc")
    (root / "val" / "documents" / "d2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"d2\.png"):
        load("docvqa", source=root)


def test_malformed_annotation_names_file_and_record(tmp_path):
    root = _official("vqav2", tmp_path / "vqa")
    path = root / "v2_mscoco_val2014_annotations.json"
    data = json.loads(path.read_text())
    del data["annotations"][2]["answers"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"v2_mscoco_val2014_annotations\.json: record 2 \(id 502\)"):
        load("vqav2", source=root)


def test_missing_annotation_file_and_bad_source(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="testdev_balanced_questions.json"):
        load("gqa", source=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="neither an existing folder"):
        load("gqa", source=str(tmp_path / "nope" / "x" / "y"))


# --- layouts, datasets of your own, easy-vqa ----------------------------------------

def test_spdocvqa_download_layout(tmp_path):
    root = tmp_path / "spdocvqa"
    # The current SP-DocVQA download: questions under spdocvqa_qas/, every image flat in
    # spdocvqa_images/, while the JSON's "image" still says documents/x.png.
    _dump(root / "spdocvqa_qas" / "val_v1.0_withQT.json", {"dataset_name": "sp-docvqa", "data": [
        {"questionId": 7 + i, "question": f"what is the total {i}?", "image": f"documents/p{i}.png",
         "docId": i, "answers": ["$ 10"], "question_types": ["form"]} for i in range(3)]})
    for i in range(3):
        _save(root / "spdocvqa_images" / f"p{i}.png", i)
    samples = load("docvqa", source=root)
    assert [s.id for s in samples] == ["7", "8", "9"]
    assert samples[1].image.getpixel((0, 0)) == _img(1).getpixel((0, 0))
    (root / "spdocvqa_images" / "p2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"p2\.png"):
        load("docvqa", source=root)


def test_parquet_snapshot_without_its_dataset_card(tmp_path):
    config, folder, split, make = HUB_ROWS["docvqa"]
    repo = _hub_repo(tmp_path / "DocVQA", {config: (folder, split, make(2))})
    (repo / "README.md").unlink()
    with pytest.raises(FileNotFoundError, match=r"README\.md.*'DocVQA'.*lmms-lab-encoder/DocVQA"):
        load("docvqa", source=repo)


def test_register_a_dataset_of_your_own(tmp_path):
    import mech

    def loader(limit, seed):
        items = tiny_items()
        return items[:limit] if limit else items

    def tiny_items():
        return [Sample(f"mine-{i}", "mine-test", _img(i), f"what colour is it {i}?", (COLORS[i % 4],))
                for i in range(5)]

    mech.datasets.register("mine-test", loader, metric="gqa", post_prompt=" Answer:", max_new_tokens=3,
                           replace=True)
    samples = load("mine-test", limit=2)
    assert [s.id for s in samples] == ["mine-0", "mine-1"] and "mine-test" in DATASETS
    assert question_prompt(samples[0]) == "what colour is it 0? Answer:"
    assert mech.generation.settings("mine-test").max_new_tokens == 3
    assert mech.metrics.score("mine-test", "Red.", ["red"], protocol="official") == 1.0
    with pytest.raises(ValueError, match="already registered"):
        mech.datasets.register("mine-test", loader, metric="gqa")
    with pytest.raises(ValueError, match="built-in"):
        mech.datasets.register("vqav2", loader, metric="gqa")
    mech.datasets.register("mine-wrong", lambda limit, seed: tiny_items(), metric="gqa", replace=True)
    with pytest.raises(ValueError, match="must set dataset='mine-wrong'"):
        load("mine-wrong")


def test_easyvqa_from_its_package():
    pytest.importorskip("easy_vqa", reason="easy-vqa is not installed (pip install easy-vqa)")
    samples = load("easyvqa", limit=10, seed=3)
    assert len(samples) == 10 and samples[0].dataset == "easyvqa"
    assert samples[0].image.size == (64, 64) and len(samples[0].answers) == 1
    assert [s.id for s in samples] == [s.id for s in load("easyvqa", limit=10, seed=3)]
    full = load("easyvqa")
    assert len(full) > 1000 and {s.answers[0] for s in full} >= {"yes", "no", "circle", "red"}
