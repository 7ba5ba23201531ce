"""Tests of dmlutils.data: loaders on tiny official-layout fixtures, the real CUB copy,
downloads from file:// URLs, bad input, the synthetic set, transforms, the benchmark.

Oracles: the ground truth each fixture builder records (paths, official class ids,
boxes); PIL's own decoding of the same files; arithmetic on constant-colour images
for the normalisations; plain-Python parsing of the real annotation files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data_fixtures import make_cars, make_cub, make_inshop, make_sop, make_tar_gz, make_zip, md5_of, truncate
from dmlutils.data import (
    CUB200,
    Cars196,
    ChecksumError,
    CorruptImageError,
    DatasetNotFoundError,
    DownloadError,
    InShop,
    StanfordOnlineProducts,
    SyntheticDataset,
    cub_found,
    data_root_origin,
    denormalize,
    download_file,
    extract_archive,
    get_dataset,
    get_transforms,
    resolve_data_root,
    transform_names,
)
from dmlutils.samplers import PKSampler

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- data root


def test_root_argument_wins_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DML_DATA", str(tmp_path / "from_env"))
    assert resolve_data_root(tmp_path / "given") == tmp_path / "given"
    assert resolve_data_root() == tmp_path / "from_env"
    monkeypatch.delenv("DML_DATA")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root().resolve() == tmp_path / "data"


def test_loader_reads_from_dml_data_when_no_root_is_given(tmp_path, monkeypatch):
    fixture = make_cub(tmp_path)
    monkeypatch.setenv("DML_DATA", str(tmp_path))
    assert len(CUB200(split="train")) == len(fixture.items["train"])


# ---------------------------------------------------------------- CUB on fixtures


@pytest.mark.parametrize("split, first_class_id", [("train", 1), ("test", 101)])
def test_cub_class_disjoint_split_and_zero_based_labels(tmp_path, split, first_class_id):
    fixture = make_cub(tmp_path)
    dataset = CUB200(root=tmp_path, split=split)
    expected = fixture.items[split]
    assert dataset.paths == [path for path, _ in expected]
    # labels re-indexed within the split: official id - 1 (train) or - 101 (test)
    assert dataset.labels.tolist() == [class_id - first_class_id for _, class_id in expected]
    assert dataset.classes == [f"{c:03d}.Bird_{c}" for c in sorted({c for _, c in expected})]
    assert dataset.class_ids == sorted({c for _, c in expected})


def test_cub_ignores_train_test_split_txt(tmp_path):
    fixture = make_cub(tmp_path)
    split_flags = dict(line.split() for line in (fixture.folder / "train_test_split.txt").read_text().splitlines())
    dataset = CUB200(root=tmp_path, split="train")
    ids = [str(i) for i in dataset.image_ids]
    # the fixture marks every other image "test" in that file; the DML split keeps them all
    assert {split_flags[i] for i in ids} == {"0", "1"}
    assert len(dataset) == len(fixture.items["train"])


def test_cub_getitem_returns_rgb_pil_image_and_int_label(tmp_path):
    fixture = make_cub(tmp_path)
    dataset = CUB200(root=tmp_path, split="test")
    for index in (0, len(dataset) - 1):
        image, label = dataset[index]
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        assert isinstance(label, int) and label == dataset.labels[index]
        with Image.open(fixture.items["test"][index][0]) as oracle:
            assert image.size == oracle.size
            assert np.array_equal(np.asarray(image), np.asarray(oracle.convert("RGB")))


def test_cub_accepts_the_dataset_folder_itself_as_root(tmp_path):
    fixture = make_cub(tmp_path)
    assert CUB200(root=fixture.folder, split="train").paths == CUB200(root=tmp_path, split="train").paths


def test_cub_crop_to_bbox_crops_to_the_annotated_box(tmp_path):
    fixture = make_cub(tmp_path)
    dataset = CUB200(root=tmp_path, split="train", crop_to_bbox=True)
    for index in range(len(dataset)):
        image, _ = dataset[index]
        x, y, w, h = fixture.boxes[dataset.paths[index]]
        assert image.size == (w, h)
        # the fixture painted the box white on a darker background
        assert np.asarray(image).mean() > 235


def test_labels_are_available_without_decoding_images(tmp_path):
    fixture = make_cub(tmp_path)
    for path, _ in fixture.items["train"]:
        Path(path).write_bytes(b"not an image")
    dataset = CUB200(root=tmp_path, split="train")
    sampler = PKSampler(dataset.labels, p=3, k=2, seed=0)
    for batch in sampler:
        assert len(set(dataset.labels[batch])) == 3


def test_data_root_origin_says_where_the_root_came_from(tmp_path, monkeypatch):
    monkeypatch.setenv("DML_DATA", str(tmp_path / "from_env"))
    assert data_root_origin(tmp_path / "given") == (tmp_path / "given", "the root argument")
    assert data_root_origin() == (tmp_path / "from_env", "the DML_DATA environment variable")
    monkeypatch.delenv("DML_DATA")
    root, origin = data_root_origin()
    assert root == Path("data") and origin.startswith("the default ./data")


def test_cub_found_looks_for_images_txt_under_the_data_root_or_in_it(tmp_path, monkeypatch):
    monkeypatch.delenv("DML_DATA", raising=False)
    assert not cub_found(tmp_path)
    fixture = make_cub(tmp_path / "root")
    assert cub_found(tmp_path / "root") and cub_found(fixture.folder)  # <root>/CUB_200_2011/ or the folder itself
    monkeypatch.setenv("DML_DATA", str(tmp_path / "root"))
    assert cub_found()
    (fixture.folder / "images.txt").unlink()
    assert not cub_found()


@pytest.mark.parametrize("cls, into", [
    (CUB200, "."), (StanfordOnlineProducts, "."), (Cars196, "cars196"), (InShop, None),
])
def test_every_data_set_downloads_through_the_one_shared_path(cls, into, tmp_path, monkeypatch):
    """download=True on an empty root goes through dmlutils.data.base.locate_or_download:
    the data set's own resources are fetched into its folder (In-Shop has none: nothing is
    fetched), then the usual not-found error if the files still are not there."""
    import dmlutils.data.base as base

    fetched = []
    monkeypatch.setattr(base, "fetch_resources", lambda resources, target: fetched.append((resources, Path(target))))
    with pytest.raises(DatasetNotFoundError, match="not found"):
        cls(root=tmp_path, download=True)
    if into is None:
        assert fetched == []
    else:
        assert fetched == [(cls.resources, tmp_path / into)]
    fetched.clear()
    with pytest.raises(DatasetNotFoundError):
        cls(root=tmp_path, download=False)
    assert fetched == []


# ---------------------------------------------------------------- bad input


def test_missing_root_error_says_what_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("DML_DATA", raising=False)
    empty = tmp_path / "nothing_here"
    with pytest.raises(DatasetNotFoundError) as excinfo:
        CUB200(root=empty)
    message = str(excinfo.value)
    for expected_file in ("images.txt", "image_class_labels.txt", "classes.txt", "images"):
        assert expected_file in message
    assert str(empty / "CUB_200_2011") in message  # where it looked
    assert "the root argument" in message and "DML_DATA" in message  # where the root came from
    assert "download=True" in message and "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz" in message


def test_missing_root_error_names_dml_data_as_the_origin(tmp_path, monkeypatch):
    monkeypatch.setenv("DML_DATA", str(tmp_path / "env_root"))
    with pytest.raises(DatasetNotFoundError, match="DML_DATA environment variable"):
        CUB200()


def test_partial_layout_error_lists_the_missing_file(tmp_path):
    fixture = make_cub(tmp_path)
    (fixture.folder / "image_class_labels.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"has 3 of 4; missing image_class_labels.txt"):
        CUB200(root=tmp_path)


def test_crop_to_bbox_requires_bounding_boxes_txt(tmp_path):
    fixture = make_cub(tmp_path)
    (fixture.folder / "bounding_boxes.txt").unlink()
    assert len(CUB200(root=tmp_path)) > 0  # not needed without cropping
    with pytest.raises(DatasetNotFoundError, match="missing bounding_boxes.txt"):
        CUB200(root=tmp_path, crop_to_bbox=True)


@pytest.mark.parametrize("cls, bad, valid", [
    (CUB200, "val", ["'train'", "'test'"]),
    (Cars196, "query", ["'train'", "'test'"]),
    (StanfordOnlineProducts, "all", ["'train'", "'test'"]),
    (InShop, "test", ["'train'", "'query'", "'gallery'"]),
    (SyntheticDataset, "valid", ["'train'", "'test'"]),
])
def test_unknown_split_lists_valid_splits(tmp_path, cls, bad, valid):
    with pytest.raises(ValueError, match=f"unknown split '{bad}'") as excinfo:
        cls(split=bad) if cls is SyntheticDataset else cls(root=tmp_path, split=bad)
    assert all(v in str(excinfo.value) for v in valid)


def test_unknown_on_corrupt_choice(tmp_path):
    make_cub(tmp_path)
    with pytest.raises(ValueError, match=r"unknown on_corrupt 'ignore'; valid: 'raise', 'skip'"):
        CUB200(root=tmp_path, on_corrupt="ignore")


def test_damaged_annotation_line_names_file_and_line(tmp_path):
    fixture = make_cub(tmp_path)
    with open(fixture.folder / "image_class_labels.txt", "a") as handle:
        handle.write("99\n")
    with pytest.raises(ValueError, match=r"image_class_labels.txt, line 25: expected 2 columns"):
        CUB200(root=tmp_path)


@pytest.mark.parametrize("damage, pattern", [
    (truncate, "cannot decode image .*truncated"),
    (lambda p: p.write_bytes(b"\x00" * 100), "cannot decode image"),
    (lambda p: p.unlink(), "image file missing"),
])
def test_unreadable_image_raises_error_naming_the_file(tmp_path, damage, pattern):
    fixture = make_cub(tmp_path)
    bad_path = Path(fixture.items["train"][2][0])
    damage(bad_path)
    dataset = CUB200(root=tmp_path, split="train")
    with pytest.raises(CorruptImageError, match=pattern) as excinfo:
        dataset[2]
    assert str(bad_path) in str(excinfo.value)
    assert excinfo.value.path == str(bad_path)
    assert "on_corrupt='skip'" in str(excinfo.value)
    dataset[1]  # its neighbours still load


def test_corrupt_image_error_is_clear_inside_a_dataloader_worker(tmp_path):
    fixture = make_cub(tmp_path)
    bad_path = Path(fixture.items["train"][0][0])
    truncate(bad_path)
    loader = DataLoader(CUB200(root=tmp_path, split="train", transform=get_transforms("resnet50", False, resize=24, crop=20)),
                        batch_size=4, num_workers=1)
    with pytest.raises(CorruptImageError) as excinfo:
        list(loader)
    assert str(bad_path) in str(excinfo.value)


def test_on_corrupt_skip_warns_and_substitutes_an_image_of_the_same_class(tmp_path):
    fixture = make_cub(tmp_path)
    truncate(Path(fixture.items["train"][1][0]))
    dataset = CUB200(root=tmp_path, split="train", on_corrupt="skip")
    with pytest.warns(RuntimeWarning, match="Bird_1_0001.jpg"):
        image, label = dataset[1]
    assert label == dataset.labels[1] == dataset.labels[2]
    # the substitute is the next image of the class, index 2
    assert np.array_equal(np.asarray(image), np.asarray(dataset[2][0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known-bad file is not reported twice
        dataset[1]


def test_on_corrupt_skip_with_a_whole_class_unreadable_raises(tmp_path):
    fixture = make_cub(tmp_path, images_per_class=2)
    for path, class_id in fixture.items["train"]:
        if class_id == 2:
            Path(path).write_bytes(b"garbage")
    dataset = CUB200(root=tmp_path, split="train", on_corrupt="skip")
    with pytest.warns(RuntimeWarning), pytest.raises(CorruptImageError, match="every image of class '002.Bird_2'"):
        dataset[2]


# ---------------------------------------------------------------- downloads


def _point_cub_at(monkeypatch, url, md5):
    monkeypatch.setattr(CUB200, "resources", (((url,), md5, "CUB_200_2011.tgz"),))


def test_cub_download_from_a_file_url_checks_md5_and_extracts(tmp_path, monkeypatch):
    source = tmp_path / "source"
    fixture = make_cub(source)
    archive = tmp_path / "CUB_200_2011.tgz"
    md5 = make_tar_gz(source, archive)
    _point_cub_at(monkeypatch, archive.as_uri(), md5)
    target = tmp_path / "downloaded"
    dataset = CUB200(root=target, split="test", download=True)
    assert len(dataset) == len(fixture.items["test"])
    assert md5_of(target / "CUB_200_2011.tgz") == md5
    assert (target / "CUB_200_2011" / "images.txt").read_bytes() == (fixture.folder / "images.txt").read_bytes()
    dataset[0]
    # with the data in place, download=True does not fetch again (the URL is now dead)
    _point_cub_at(monkeypatch, (tmp_path / "gone.tgz").as_uri(), md5)
    (target / "CUB_200_2011.tgz").unlink()
    assert len(CUB200(root=target, split="test", download=True)) == len(dataset)


def test_download_md5_mismatch_names_expected_and_actual_and_leaves_nothing(tmp_path, monkeypatch):
    source = tmp_path / "source"
    make_cub(source)
    archive = tmp_path / "CUB_200_2011.tgz"
    actual = make_tar_gz(source, archive)
    wrong = "0" * 32
    _point_cub_at(monkeypatch, archive.as_uri(), wrong)
    target = tmp_path / "downloaded"
    with pytest.raises(ChecksumError) as excinfo:
        CUB200(root=target, download=True)
    assert f"expected {wrong}, got {actual}" in str(excinfo.value)
    assert list(target.iterdir()) == []  # no partial file, no extracted data


def test_download_file_reuses_a_present_file_with_the_right_md5(tmp_path):
    present = tmp_path / "data.bin"
    present.write_bytes(b"payload")
    dead_url = (tmp_path / "does_not_exist").as_uri()
    assert download_file(dead_url, present, hashlib.md5(b"payload").hexdigest(), progress=False) == present


def test_download_file_unreachable_urls_raise_download_error_naming_them(tmp_path):
    urls = [(tmp_path / "a.tgz").as_uri(), (tmp_path / "b.tgz").as_uri()]
    with pytest.raises(DownloadError) as excinfo:
        download_file(urls, tmp_path / "out" / "x.tgz", "0" * 32, progress=False)
    message = str(excinfo.value)
    assert urls[0] in message and urls[1] in message and str(tmp_path / "out" / "x.tgz") in message


def test_download_file_falls_back_to_the_next_url(tmp_path):
    good = tmp_path / "good.bin"
    good.write_bytes(b"abc")
    urls = [(tmp_path / "missing.bin").as_uri(), good.as_uri()]
    out = download_file(urls, tmp_path / "out.bin", hashlib.md5(b"abc").hexdigest(), progress=False)
    assert out.read_bytes() == b"abc"


def test_extract_archive_refuses_members_outside_the_target(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    target = tmp_path / "target"
    with pytest.raises((tarfile.TarError, ValueError)):
        extract_archive(archive, target)
    assert not (tmp_path / "escaped.txt").exists()
    assert [p.name for p in target.iterdir()] == []  # staging folder removed


def test_sop_download_extracts_a_zip(tmp_path, monkeypatch):
    source = tmp_path / "source"
    fixture = make_sop(source)
    archive = tmp_path / "Stanford_Online_Products.zip"
    md5 = make_zip(source, archive)
    monkeypatch.setattr(StanfordOnlineProducts, "resources", (((archive.as_uri(),), md5, archive.name),))
    dataset = StanfordOnlineProducts(root=tmp_path / "dl", split="train", download=True)
    assert len(dataset) == len(fixture.items["train"])


def test_cars_download_fetches_the_images_archive_and_the_mat_file(tmp_path, monkeypatch):
    source = tmp_path / "source"
    fixture = make_cars(source)
    images_archive = tmp_path / "car_ims.tgz"
    with tarfile.open(images_archive, "w:gz") as tar:
        tar.add(fixture.folder / "car_ims", arcname="car_ims")
    mat = fixture.folder / "cars_annos.mat"
    monkeypatch.setattr(Cars196, "resources", (
        ((images_archive.as_uri(),), md5_of(images_archive), "car_ims.tgz", True),
        ((mat.as_uri(),), md5_of(mat), "cars_annos.mat", False),
    ))
    dataset = Cars196(root=tmp_path / "dl", split="test", download=True)
    assert len(dataset) == len(fixture.items["test"])
    assert (tmp_path / "dl" / "cars196" / "car_ims").is_dir()


# ---------------------------------------------------------------- Cars196, SOP, In-Shop


@pytest.mark.parametrize("split, first_class_id", [("train", 1), ("test", 99)])
def test_cars196_split_labels_and_names(tmp_path, split, first_class_id):
    fixture = make_cars(tmp_path)
    dataset = Cars196(root=tmp_path, split=split)
    assert dataset.paths == [p for p, _ in fixture.items[split]]
    assert dataset.labels.tolist() == [c - first_class_id for _, c in fixture.items[split]]
    assert dataset.classes == [f"Maker Model {c}" for c in sorted({c for _, c in fixture.items[split]})]
    image, label = dataset[0]
    assert image.size == (48, 32) and label == 0


def test_cars196_crop_to_bbox_uses_one_based_inclusive_corners(tmp_path):
    fixture = make_cars(tmp_path)
    dataset = Cars196(root=tmp_path, split="train", crop_to_bbox=True)
    for index in range(len(dataset)):
        image, _ = dataset[index]
        x1, y1, x2, y2 = fixture.boxes[dataset.paths[index]]
        assert image.size == (x2 - x1 + 1, y2 - y1 + 1)
        assert np.asarray(image).mean() > 235  # only the white box, no background


def test_cars196_missing_error_names_files_and_both_md5s(tmp_path):
    with pytest.raises(DatasetNotFoundError) as excinfo:
        Cars196(root=tmp_path)
    message = str(excinfo.value)
    assert "cars_annos.mat" in message and "car_ims" in message
    assert "d5c8f0aa497503f355e17dc7886c3f14" in message and "b407c6086d669747186bd1d764ff9dbc" in message


@pytest.mark.parametrize("split, first_class_id", [("train", 1), ("test", 4)])
def test_sop_reads_ebay_files(tmp_path, split, first_class_id):
    fixture = make_sop(tmp_path)
    dataset = StanfordOnlineProducts(root=tmp_path, split=split)
    assert dataset.paths == [p for p, _ in fixture.items[split]]
    assert dataset.labels.tolist() == [c - first_class_id for _, c in fixture.items[split]]
    assert dataset.classes == [str(c) for c in sorted({c for _, c in fixture.items[split]})]
    names = [Path(p).parent.name.removesuffix("_final") for p in dataset.paths]
    assert [dataset.super_classes[s] for s in dataset.super_labels] == names
    assert dataset[len(dataset) - 1][0].size == (36, 36)


@pytest.mark.parametrize("official_tree", [False, True])
def test_inshop_query_and_gallery_share_labels(tmp_path, official_tree):
    fixture = make_inshop(tmp_path, official_tree=official_tree)
    train, query, gallery = (InShop(root=tmp_path, split=s) for s in ("train", "query", "gallery"))
    for dataset, split in ((train, "train"), (query, "query"), (gallery, "gallery")):
        assert dataset.paths == [p for p, _ in fixture.items[split]]
        assert [dataset.classes[label] for label in dataset.labels] == [item for _, item in fixture.items[split]]
    # one label index over the query + gallery items: same item, same label
    assert query.classes == gallery.classes == ["id_00000004", "id_00000005", "id_00000007"]
    assert set(train.classes).isdisjoint(query.classes)
    assert train.labels.tolist() == [0, 0, 1, 1, 1]
    assert query[0][0].size == (32, 48)


def test_inshop_missing_says_it_cannot_be_downloaded_and_where_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as excinfo:
        InShop(root=tmp_path, download=True)
    message = str(excinfo.value)
    assert "list_eval_partition.txt" in message and "cannot be downloaded automatically" in message
    assert "mmlab.ie.cuhk.edu.hk" in message


def test_get_dataset_by_name(tmp_path):
    make_sop(tmp_path)
    assert isinstance(get_dataset("sop", root=tmp_path, split="test"), StanfordOnlineProducts)
    with pytest.raises(ValueError, match="unknown data set 'cub'; valid names: cars196, cub200, inshop, sop, synthetic"):
        get_dataset("cub")


# ---------------------------------------------------------------- the real CUB copy


def _parse_real_cub(folder: Path):
    """Independent oracle: plain dicts from the official annotation files."""
    class_of = dict(line.split() for line in (folder / "image_class_labels.txt").read_text().splitlines())
    return {int(image_id): int(c) for image_id, c in class_of.items()}


def test_real_cub_split_sizes_and_disjoint_classes(shared_data_root):
    train = CUB200(root=shared_data_root, split="train")
    test = CUB200(root=shared_data_root, split="test")
    assert (len(train), len(set(train.labels.tolist()))) == (5864, 100)
    assert (len(test), len(set(test.labels.tolist()))) == (5924, 100)
    assert set(train.classes).isdisjoint(test.classes)
    assert sorted(set(train.labels.tolist())) == sorted(set(test.labels.tolist())) == list(range(100))
    class_of = _parse_real_cub(shared_data_root / "CUB_200_2011")
    assert Counter(class_of[i] - 1 for i in train.image_ids) == Counter(train.labels.tolist())
    assert Counter(class_of[i] - 101 for i in test.image_ids) == Counter(test.labels.tolist())
    assert all(Path(p).parent.name == test.classes[label] for p, label in zip(test.paths, test.labels))


def test_real_cub_first_image_loads_at_the_expected_size(shared_data_root):
    dataset = CUB200(root=shared_data_root, split="train")
    image, label = dataset[0]
    with Image.open(dataset.paths[0]) as oracle:
        assert image.size == oracle.size
    assert image.mode == "RGB" and label == 0
    assert min(image.size) <= 160  # the reduced copy: shorter side 160 px at most


def test_real_cub_bbox_crop(shared_data_root):
    dataset = CUB200(root=shared_data_root, split="test", crop_to_bbox=True)
    boxes = {
        int(line.split()[0]): [float(v) for v in line.split()[1:]]
        for line in (shared_data_root / "CUB_200_2011" / "bounding_boxes.txt").read_text().splitlines()
    }
    for index in (0, 1000, len(dataset) - 1):
        image, _ = dataset[index]
        x, y, w, h = boxes[dataset.image_ids[index]]
        with Image.open(dataset.paths[index]) as full:
            width, height = full.size
        expected = (min(width, round(x + w)) - round(x), min(height, round(y + h)) - round(y))
        assert image.size == expected
        assert image.size[0] < width or image.size[1] < height


def test_real_cub_through_pk_sampler_and_cpu_profile_transforms(shared_data_root):
    dataset = CUB200(root=shared_data_root, split="train", transform=get_transforms("efficientnet_lite0", True))
    sampler = PKSampler(dataset.labels, p=4, k=2, num_batches=1, seed=0)
    images, labels = next(iter(DataLoader(dataset, batch_sampler=sampler)))
    assert images.shape == (8, 3, 144, 144)
    assert len(set(labels.tolist())) == 4 and set(Counter(labels.tolist()).values()) == {2}


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_seed_dependent():
    a, b = SyntheticDataset(seed=3), SyntheticDataset(seed=3)
    other = SyntheticDataset(seed=4)
    for index in (0, 7, len(a) - 1):
        assert torch.equal(a[index][0], b[index][0])
        assert not torch.equal(a[index][0], other[index][0])
    # access order does not matter: item 5 is the same before and after others
    fresh = SyntheticDataset(seed=3)
    first = fresh[5][0].clone()
    fresh[9], fresh[2]
    assert torch.equal(fresh[5][0], first)


def test_synthetic_same_pixels_through_dataloader_workers():
    dataset = SyntheticDataset(num_classes=4, images_per_class=4)
    loaded = torch.cat([x for x, _ in DataLoader(dataset, batch_size=4, num_workers=1)])
    assert torch.equal(loaded, torch.stack([dataset[i][0] for i in range(len(dataset))]))


def test_synthetic_split_is_class_disjoint_with_zero_based_labels():
    train, test = SyntheticDataset("train", num_classes=7, images_per_class=3), SyntheticDataset("test", num_classes=7, images_per_class=3)
    assert len(train.classes) == 3 and len(test.classes) == 4
    assert set(train.classes).isdisjoint(test.classes)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    image, label = test[len(test) - 1]
    assert label == 3 and image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1


def _recall_at_1(features: torch.Tensor, labels: torch.Tensor) -> float:
    distances = torch.cdist(features, features)
    distances.fill_diagonal_(float("inf"))
    return (labels[distances.argmin(1)] == labels).float().mean().item()


def test_synthetic_test_classes_are_separable_by_shift_invariant_features_not_raw_pixels():
    # The images are circularly shifted noisy patterns, so the magnitude of the 2-D
    # Fourier transform (invariant to circular shifts) separates the unseen test
    # classes almost perfectly, while raw pixels do clearly worse: there is something
    # for a (translation-equivariant) CNN to learn.
    dataset = SyntheticDataset("test", seed=0)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.as_tensor(dataset.labels)
    fourier = _recall_at_1(torch.fft.fft2(images).abs().flatten(1), labels)
    raw = _recall_at_1(images.flatten(1), labels)
    assert fourier >= 0.95
    assert raw <= fourier - 0.08


def test_a_small_cnn_learns_the_synthetic_classes():
    dataset = SyntheticDataset("train", images_per_class=40, seed=0)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.as_tensor(dataset.labels)
    held_out = torch.arange(len(dataset)) % 40 >= 30  # 10 unseen images per class
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is fastest and deterministic
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 5, stride=2, padding=2), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, len(dataset.classes)),
        )
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
        train_x, train_y = images[~held_out], labels[~held_out]
        for _ in range(200):
            batch = torch.randint(0, len(train_x), (32,))
            loss = torch.nn.functional.cross_entropy(net(train_x[batch]), train_y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            accuracy = (net(images[held_out]).argmax(1) == labels[held_out]).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert accuracy >= 0.6  # chance: 0.1


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_classes >= 2"):
        SyntheticDataset(num_classes=1)
    with pytest.raises(IndexError):
        SyntheticDataset(num_classes=2, images_per_class=2)[2]


# ---------------------------------------------------------------- transforms


def _constant_image(rgb=(10, 20, 30), size=(300, 260)):
    return Image.new("RGB", size, rgb)


@pytest.mark.parametrize("name, train, side", [
    ("bninception", True, 227), ("bninception", False, 227),
    ("resnet50", True, 227), ("resnet50", False, 227),
    ("efficientnet_lite0", True, 144), ("efficientnet_lite0", False, 144),
])
def test_transform_output_shapes(name, train, side):
    out = get_transforms(name, train)(_constant_image())
    assert out.shape == (3, side, side) and out.dtype == torch.float32


def test_bninception_input_is_bgr_0_255_minus_caffe_mean():
    out = get_transforms("bninception", False)(_constant_image((10, 20, 30)))
    expected = torch.tensor([30 - 104.0, 20 - 117.0, 10 - 128.0])  # B, G, R minus (104, 117, 128)
    assert torch.allclose(out.mean((1, 2)), expected, atol=1e-4)
    assert torch.allclose(out.std((1, 2)), torch.zeros(3), atol=1e-4)


def test_resnet50_input_uses_imagenet_mean_and_std():
    out = get_transforms("resnet50", False)(_constant_image((10, 20, 30)))
    expected = (torch.tensor([10, 20, 30]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(out.mean((1, 2)), expected, atol=1e-5)


def test_efficientnet_input_spans_minus_one_to_one():
    black = get_transforms("efficientnet_lite0", False)(_constant_image((0, 0, 0)))
    white = get_transforms("efficientnet_lite0", False)(_constant_image((255, 255, 255)))
    assert torch.allclose(black, torch.full_like(black, -1.0)) and torch.allclose(white, torch.ones_like(white))


def test_test_pipeline_matches_pil_resize_and_centre_crop():
    # Oracle: torchvision's classic PIL-based pipeline on the same picture.
    from torchvision import transforms as v1

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    picture = Image.fromarray(small).resize((320, 240), Image.BILINEAR)  # smooth, so resampling differences stay small
    ours = get_transforms("resnet50", False, resize=128, crop=112)(picture)
    reference = v1.Compose([v1.Resize(128), v1.CenterCrop(112), v1.ToTensor(),
                            v1.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])(picture)
    assert ours.shape == reference.shape == (3, 112, 112)
    assert (ours - reference).abs().mean() < 0.02


def test_train_pipeline_flips_and_is_reproducible_under_a_seed():
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8))
    never = get_transforms("efficientnet_lite0", True, resize=60, crop=48, flip_prob=0.0)
    always = get_transforms("efficientnet_lite0", True, resize=60, crop=48, flip_prob=1.0)
    torch.manual_seed(5)
    a = never(picture)
    torch.manual_seed(5)
    b = always(picture)
    torch.manual_seed(5)
    assert torch.equal(never(picture), a)
    assert torch.equal(b, a.flip(-1))  # same crop, mirrored
    torch.manual_seed(6)
    assert not torch.equal(never(picture), a)  # a different random crop


def test_denormalize_inverts_each_pipeline():
    picture = _constant_image((10, 200, 90))
    for name in transform_names():
        restored = denormalize(get_transforms(name, False)(picture), name)
        assert torch.allclose(restored.mean((1, 2)), torch.tensor([10, 200, 90]) / 255, atol=1e-4), name


def test_transform_registry_errors():
    with pytest.raises(ValueError, match="unknown transform pipeline 'vgg'; valid names: bninception, efficientnet_lite0, resnet50"):
        get_transforms("vgg", True)
    with pytest.raises(ValueError, match="crop=300 is larger than resize=256"):
        get_transforms("bninception", False, crop=300)
    with pytest.raises(ValueError, match="scale must be"):
        get_transforms("bninception", True, scale=(0.5, 0.1))
    with pytest.raises(TypeError, match="unexpected keyword argument 'size'"):
        get_transforms("bninception", True, size=100)


# ---------------------------------------------------------------- benchmark script


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_data", REPO / "benchmarks" / "bench_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_and_reports_every_configuration(tmp_path):
    bench = _load_benchmark()
    make_cub(tmp_path)
    out = tmp_path / "bench.json"
    result = bench.main(["--root", str(tmp_path), "--num-images", "6", "--workers", "0", "1",
                         "--batch-size", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert {"root", "num_images", "batch_size", "cpu_count", "torch_threads", "rows"} <= set(result)
    rows = result["rows"]
    workers_expected = [0] * len({1, torch.get_num_threads()}) + [1]
    from dmlutils.profiles import PROFILES

    # each pipeline at its profile's crop (the cpu profile's 224, the paper's 227)
    for pipeline, crop in (("efficientnet_lite0", PROFILES["cpu"]["image_size"]), ("bninception", PROFILES["paper"]["image_size"])):
        mine = [r for r in rows if r["pipeline"] == pipeline]
        assert [r["workers"] for r in mine] == workers_expected
        for row in mine:
            assert set(row) == set(bench.ROW_KEYS)
            assert row["crop"] == crop and row["images"] == 6
            assert row["images_per_s"] > 0 and row["seconds"] > 0
    assert bench.markdown_table(result).count("\n") == len(rows) + 1
