"""Data fingerprints (dmlutils.data.data_fingerprint) and the run records that carry them."""
import shutil
import time

import pytest
import torch

from data_fixtures import make_cub
from dmlutils import engine
from dmlutils.data import CUB200, ClassSubset, SyntheticDataset, data_fingerprint, file_sha256
from dmlutils.data import fingerprint as fp
from dmlutils.profiles import make_config
from dmlutils.records import machine_paths


@pytest.fixture(autouse=True)
def fresh_cache():
    fp.clear_fingerprint_cache()
    yield
    fp.clear_fingerprint_cache()


@pytest.fixture
def hashed_files(monkeypatch):
    """The files whose bytes the fingerprint hashes (a list, in call order)."""
    calls = []

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return file_sha256(path, *args, **kwargs)

    monkeypatch.setattr(fp, "file_sha256", counting)
    return calls


def write_checksum_list(fixture, path=None):
    """cub_sha256.txt as the shared copy ships it: `<sha256>  images/<class>/<file>` in the data root."""
    lines = []
    for split in ("train", "test"):
        for image, _ in fixture.items[split]:
            relative = image[len(str(fixture.folder)) + 1:]
            lines.append(f"{file_sha256(image)}  {relative}")
    path = path or fixture.root / "cub_sha256.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fingerprint_names_the_data_set_and_holds_no_path(tmp_path):
    make_cub(tmp_path / "a")
    result = data_fingerprint(CUB200(tmp_path / "a", "train"))
    assert set(result) == {"dataset", "split", "images", "sha256"}
    assert result["dataset"] == "CUB-200-2011" and result["split"] == "train" and result["images"] == 12
    assert len(result["sha256"]) == 64 and int(result["sha256"], 16) >= 0
    assert machine_paths(result) == [] and str(tmp_path) not in str(result)
    assert CUB200(tmp_path / "a", "train").fingerprint() == result  # the method is the function


def test_the_same_images_elsewhere_give_the_same_fingerprint(tmp_path):
    make_cub(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    for split in ("train", "test"):
        assert data_fingerprint(CUB200(tmp_path / "a", split)) == data_fingerprint(CUB200(tmp_path / "elsewhere" / "b", split))
    assert data_fingerprint(CUB200(tmp_path / "a", "train")) != data_fingerprint(CUB200(tmp_path / "a", "test"))


def test_one_changed_image_changes_the_fingerprint(tmp_path):
    fixture = make_cub(tmp_path)
    before = data_fingerprint(CUB200(tmp_path, "train"))
    image = fixture.items["train"][5][0]
    with open(image, "ab") as handle:
        handle.write(b"\0")  # still a decodable JPEG; different bytes
    fp.clear_fingerprint_cache()
    assert data_fingerprint(CUB200(tmp_path, "train"))["sha256"] != before["sha256"]


def test_a_relabelled_image_changes_the_fingerprint(tmp_path):
    fixture = make_cub(tmp_path)
    before = data_fingerprint(CUB200(tmp_path, "train"))
    labels = fixture.folder / "image_class_labels.txt"
    lines = labels.read_text().splitlines()
    lines[0] = "1 2"  # image 1: class 1 -> class 2, same file
    labels.write_text("\n".join(lines) + "\n")
    fp.clear_fingerprint_cache()
    after = data_fingerprint(CUB200(tmp_path, "train"))
    assert after["images"] == before["images"] and after["sha256"] != before["sha256"]


def test_the_checksum_list_replaces_hashing_and_gives_the_same_fingerprint(tmp_path, hashed_files):
    fixture = make_cub(tmp_path, classes_per_split=5, images_per_class=6)  # 30 images per split
    hashed = {s: data_fingerprint(CUB200(tmp_path, s)) for s in ("train", "test")}
    assert len(hashed_files) == 60  # no list: every image read once
    fp.clear_fingerprint_cache()
    hashed_files.clear()
    write_checksum_list(fixture)
    listed = {s: data_fingerprint(CUB200(tmp_path, s)) for s in ("train", "test")}
    assert listed == hashed
    assert 0 < len(hashed_files) <= fp.SPOT_CHECKS  # only the spot check reads images


def test_a_checksum_list_that_does_not_match_the_images_is_not_trusted(tmp_path, hashed_files):
    fixture = make_cub(tmp_path)
    expected = data_fingerprint(CUB200(tmp_path, "train"))
    fp.clear_fingerprint_cache()
    listing = write_checksum_list(fixture)
    lines = listing.read_text().splitlines()
    lines[0] = "0" * 64 + lines[0][64:]  # the first train image, which the spot check reads
    listing.write_text("\n".join(lines) + "\n")
    with pytest.warns(RuntimeWarning, match="does not match the images"):
        assert data_fingerprint(CUB200(tmp_path, "train")) == expected


def test_fingerprints_are_cached_per_folder_and_split(tmp_path, hashed_files):
    make_cub(tmp_path)
    first = data_fingerprint(CUB200(tmp_path, "train"))
    reads = len(hashed_files)
    assert reads == 12
    assert data_fingerprint(CUB200(tmp_path, "train")) == first  # a new instance of the same split
    assert len(hashed_files) == reads


def test_subsets_fingerprint_their_own_images(tmp_path):
    make_cub(tmp_path)
    train = CUB200(tmp_path, "train")
    subset = ClassSubset(train, [0, 1, 2, 3])
    torch_subset = torch.utils.data.Subset(train, [0, 1, 2, 3])
    result = subset.fingerprint()
    assert result["images"] == 4 and result["dataset"] == "CUB-200-2011"
    assert result != data_fingerprint(train)
    assert data_fingerprint(torch_subset) == result
    assert data_fingerprint(ClassSubset(train, [4, 5, 6, 7]))["sha256"] != result["sha256"]


def test_synthetic_data_is_fingerprinted_by_its_generation_parameters():
    base = SyntheticDataset("train", seed=0).fingerprint()
    assert base["dataset"] == "synthetic" and base["images"] == 10 * 20
    assert SyntheticDataset("train", seed=0).fingerprint() == base
    for changed in (dict(seed=1), dict(images_per_class=19), dict(noise_std=0.5), dict(image_size=16)):
        assert SyntheticDataset("train", **changed).fingerprint()["sha256"] != base["sha256"], changed
    assert SyntheticDataset("test", seed=0).fingerprint()["sha256"] != base["sha256"]
    assert ClassSubset(SyntheticDataset("train"), range(20)).fingerprint()["images"] == 20


def test_other_objects_are_refused_with_what_is_accepted():
    with pytest.raises(TypeError, match="image-list data set"):
        data_fingerprint(torch.utils.data.TensorDataset(torch.zeros(3, 2)))


def test_the_cub_copy_is_fingerprinted_from_its_checksum_list_in_well_under_a_second(shared_data_root, hashed_files):
    start = time.perf_counter()
    train, test = CUB200(shared_data_root, "train"), CUB200(shared_data_root, "test")
    loaded = time.perf_counter()
    prints = [data_fingerprint(train), data_fingerprint(test)]
    seconds = time.perf_counter() - loaded
    assert [p["images"] for p in prints] == [5864, 5924]
    assert len(hashed_files) <= fp.SPOT_CHECKS  # cub_sha256.txt, not 11,788 files
    assert seconds < 1.0, f"fingerprinting took {seconds:.2f} s (loading the annotations {loaded - start:.2f} s)"
    # the list's hash of an image is the image's hash
    image = train.paths[1234]
    assert fp.file_hashes(train.root, [image[len(str(train.root)) + 1:]], train.name).popitem()[1] == file_sha256(image)


def test_run_records_carry_fingerprints_and_no_machine_path(tmp_path):
    config = make_config("smoke", "multi_similarity", {"iterations": 2, "eval_every": 2})
    record = engine.train(config, tmp_path / "run", record_path=tmp_path / "r.json", progress=False, device="cpu")
    assert record["data"]["train"] == SyntheticDataset("train", seed=config["seed"], image_size=config["image_size"]).fingerprint()
    assert record["data"]["test"]["split"] == "test" and record["data"]["test"]["images"] == 200
    assert "root" not in record["data"]
    assert machine_paths(record) == []
    base = engine.baseline(config, record_path=tmp_path / "b.json", progress=False, device="cpu")
    assert base["data"] == {"test": record["data"]["test"]}
    assert machine_paths(base) == []
