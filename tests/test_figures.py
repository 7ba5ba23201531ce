"""The chapters' figures (dmlutils.figures) draw what the pictures file says.

The files here are made by the producer, `pictures.make_pictures`, on the smoke profile's
synthetic test set (so every image can be drawn), from arbitrary embeddings; then a copy is
altered by hand. A figure that recomputed its neighbours, classes or weights instead of
reading them would not follow the alteration.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from dmlutils import figures, pictures  # noqa: E402
from dmlutils.engine.build import dataset_split  # noqa: E402
from dmlutils.losses import get_loss  # noqa: E402
from dmlutils.profiles import PROFILE_VERSIONS, make_config  # noqa: E402

GIT = {"commit": "1" * 40, "dirty": False}


@pytest.fixture(scope="module")
def test_set():
    return dataset_split(make_config("smoke", overrides={"seed": 0}), "test", augment=False)


def make_file(test_set, seed: int, loss: str | None = "multi_similarity") -> dict:
    """A pictures dict of the smoke test set for embeddings drawn at random (`seed`)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(test_set.labels)
    # class centres plus noise: some queries right, some wrong at R@1
    embeddings = torch.randn(int(labels.max()) + 1, 16, generator=generator)[labels] + 1.2 * torch.randn(len(labels), 16, generator=generator)
    start = torch.randn(len(pictures.fixed_batch(test_set.labels)), 16, generator=generator) if loss else None
    record = {"profile": "smoke", "profile_version": PROFILE_VERSIONS["smoke"], "seed": 0, "git": GIT, "loss": loss,
              "data": {"test": test_set.fingerprint()},
              "evaluated_on": {"split": "test", "images": len(labels)}, "final": {"iteration": 60}, "evaluations": [{"iteration": 60}]}
    return pictures.make_pictures(record, test_set, embeddings, start, get_loss("multi_similarity"))


@pytest.fixture(scope="module")
def drawn_files(test_set):
    return {"baseline": make_file(test_set, 1, loss=None), "Multi-Similarity": make_file(test_set, 2)}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def drawn_pixels(drawing, tile) -> np.ndarray:
    return np.asarray(drawing.axes_of(tile).images[0].get_array())


def frame(drawing, tile):
    return drawing.axes_of(tile).spines["left"].get_edgecolor()


def test_the_grid_draws_the_files_neighbours_and_frames_not_a_recomputation(test_set, drawn_files):
    ms = drawn_files["Multi-Similarity"]
    altered = copy.deepcopy(ms)
    query, label = altered["queries"]["index"][0], altered["queries"]["label"][0]
    # put an image of another class at rank 3 of the first query, and say in the file that it is right
    stranger = next(i for i in range(len(test_set)) if test_set.labels[i] != label and i not in ms["queries"]["neighbours"][0])
    altered["queries"]["neighbours"][0][2] = stranger
    altered["queries"]["neighbour_labels"][0][2] = label
    altered["images"][str(stranger)] = f"synthetic/{stranger}"
    drawing = figures.retrieval_grid({"as made": ms, "altered": altered}, positions=[0, 1])

    for title, file in (("as made", ms), ("altered", altered)):
        rows = [t for t in drawing.tiles if t.panel == title and t.column > 0]
        q = file["queries"]
        assert [t.index for t in rows] == q["neighbours"][0] + q["neighbours"][1]
        assert [t.correct for t in rows] == [lab == q["label"][p] for p in (0, 1) for lab in q["neighbour_labels"][p]]
    tile = next(t for t in drawing.tiles if t.panel == "altered" and t.column == 3 and t.index == stranger)
    assert tile.correct is True and tile.label == label
    assert np.allclose(drawn_pixels(drawing, tile), test_set[stranger][0].permute(1, 2, 0).numpy())
    assert frame(drawing, tile) == to_rgba(figures.RIGHT)
    original = next(t for t in drawing.tiles if t.panel == "as made" and t.row == tile.row - 1 and t.column == 3)
    assert original.index == ms["queries"]["neighbours"][0][2]
    assert frame(drawing, original) == to_rgba(figures.RIGHT if original.correct else figures.WRONG)
    # every tile shows the image of its index, the query once per block
    for t in drawing.tiles:
        assert np.allclose(drawn_pixels(drawing, t), test_set[t.index][0].permute(1, 2, 0).numpy())
    assert [t.index for t in drawing.tiles if t.column == 0] == [query, ms["queries"]["index"][1]]


def test_the_grid_refuses_files_of_different_queries(drawn_files):
    other = copy.deepcopy(drawn_files["Multi-Similarity"])
    other["queries"]["index"][0] += 1
    with pytest.raises(ValueError, match="same queries"):
        figures.retrieval_grid({"a": drawn_files["Multi-Similarity"], "b": other})


def test_the_gallery_shows_the_queries_the_file_says_fail(drawn_files):
    ms = copy.deepcopy(drawn_files["Multi-Similarity"])
    wrong = figures.failures(ms)
    assert wrong, "the fixture's embeddings should leave some query wrong at R@1"
    drawing = figures.failure_gallery(ms)
    assert [t.index for t in drawing.tiles if t.column == 0] == [ms["queries"]["index"][p] for p in wrong]
    # the file now says the first failure's nearest neighbour is right: it leaves the gallery
    ms["queries"]["neighbour_labels"][wrong[0]][0] = ms["queries"]["label"][wrong[0]]
    assert figures.failures(ms) == wrong[1:]
    drawing = figures.failure_gallery(ms)
    assert ms["queries"]["index"][wrong[0]] not in [t.index for t in drawing.tiles if t.column == 0]


def cub_named(file: dict) -> dict:
    """The file as if drawn on CUB-200-2011: images named by their place in its folder."""
    file = copy.deepcopy(file)
    file["images"] = {i: f"images/{101 + int(i) % 100:03d}.Some_Bird/Some_Bird_{i}.jpg" for i in file["images"]}
    return file


def test_without_cub_the_image_figures_say_what_is_missing_and_the_rest_draws(drawn_files, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cub = {title: cub_named(file) for title, file in drawn_files.items()}
    for drawing in (figures.retrieval_grid(cub, data_root=empty), figures.failure_gallery(cub["Multi-Similarity"], data_root=empty)):
        assert drawing.figure is None and drawing.tiles == []
        assert str(empty / "CUB_200_2011" / "images.txt") in drawing.notice
        assert f"python -m dmlutils download --root {empty}" in drawing.notice
        assert "download = True" not in drawing.notice  # a parameter of chapter 1 only
    printed = capsys.readouterr().out  # outside a notebook the notice is printed
    assert "**Not shown: the retrieval grid.**" in printed and "**Not shown: the gallery of failures.**" in printed
    assert figures.embedding_maps(cub).figure is not None  # the maps and weights need no image
    assert figures.similarity_and_weights(cub["Multi-Similarity"]).figure is not None


def test_cub_images_are_read_from_the_data_root_by_their_name(drawn_files, tmp_path):
    from PIL import Image

    cub = cub_named(drawn_files["Multi-Similarity"])
    folder = tmp_path / "data" / "CUB_200_2011"
    for i, name in enumerate(cub["images"].values()):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (90, 60), (i % 256, 7, 200)).save(folder / name)
    (folder / "images.txt").write_text("")
    # a second file whose neighbour at rank 1 only it names (the first file does not)
    other = copy.deepcopy(cub)
    unnamed = next(i for i in range(200) if str(i) not in cub["images"])
    other["queries"]["neighbours"][0][0] = unnamed
    other["images"][str(unnamed)] = "images/150.Other_Bird/Other_Bird_1.jpg"
    (folder / "images/150.Other_Bird").mkdir(parents=True)
    Image.new("RGB", (60, 90), (255, 255, 3)).save(folder / "images/150.Other_Bird/Other_Bird_1.jpg")
    drawing = figures.retrieval_grid({"MS": cub, "other": other}, positions=[0], data_root=tmp_path / "data")
    tile = next(t for t in drawing.tiles if t.panel == "MS" and t.column == 3)
    shade = list(cub["images"]).index(str(tile.index)) % 256
    assert np.all(drawn_pixels(drawing, tile)[..., 0] == shade)  # that file's pixels, centre-cropped
    assert figures.class_name(cub, tile.label) == "Some Bird" and figures.kind_of(cub, tile.label) == "Bird"
    assert figures.kind_of(drawn_files["Multi-Similarity"], tile.label) is None  # synthetic classes have no name
    tile = next(t for t in drawing.tiles if t.panel == "other" and t.column == 1)
    assert tile.index == unnamed and np.all(drawn_pixels(drawing, tile)[..., 2] == 3)


def test_weight_panels_show_the_files_weights_times_the_batch_size(drawn_files):
    ms = drawn_files["Multi-Similarity"]
    S, W, labels, iteration = figures.batch_weights(ms)
    m = len(ms["batch"]["label"])
    assert iteration == 60 and np.array_equal(W, m * np.asarray(ms["batch"]["states"][-1]["weights"]))
    drawing = figures.weight_maps({"trained": (W, labels)})
    assert np.array_equal(np.asarray(drawing.figure.axes[0].images[0].get_array()), m * np.asarray(ms["batch"]["states"][-1]["weights"]))

    scatter = figures.similarity_and_weights(ms)
    for state, ax in zip(ms["batch"]["states"], scatter.figure.axes):
        S_file, W_file = np.asarray(state["similarity"]), m * np.asarray(state["weights"])
        points = np.concatenate([c.get_offsets() for c in ax.collections])
        off_diagonal = ~np.eye(m, dtype=bool)
        expected = np.stack([S_file[off_diagonal], W_file[off_diagonal]], axis=1)
        assert sorted(map(tuple, points)) == sorted(map(tuple, expected))


def test_maps_draw_the_files_coordinates_with_its_classes(drawn_files):
    drawing = figures.embedding_maps(drawn_files, n_classes=4)
    ms = drawn_files["Multi-Similarity"]
    assert drawing.values["classes"] == ms["queries"]["label"][:4]
    ax = drawing.figure.axes[1]
    assert ax.get_title() == "Multi-Similarity" and drawing.figure.get_suptitle() == ms["map"]["method"]  # one method, one title
    labels = np.asarray(ms["map"]["label"])
    for collection, label in zip(ax.collections[1:], drawing.values["classes"]):
        assert np.array_equal(collection.get_offsets(), np.stack([ms["map"]["x"], ms["map"]["y"]], 1)[labels == label])
    other = dict(ms, map=dict(ms["map"], method="UMAP (made up)"))
    titles = [ax.get_title() for ax in figures.embedding_maps({"a": ms, "b": other}).figure.axes[:2]]
    assert titles[0].startswith("a\nt-SNE") and titles[1] == "b\nUMAP (made up)"  # each its own method


def write_run(results, name: str, file: dict | None, record_git=GIT) -> None:
    folder = results / "smoke" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "seed_0.json").write_text(json.dumps({"git": record_git}))
    if file is not None:
        (folder / "seed_0.pictures.json").write_text(json.dumps(file))


def test_a_chapter_gets_the_pictures_of_its_record_or_a_notice_with_the_command(drawn_files, tmp_path, capsys):
    results = tmp_path / "results"
    write_run(results, "multi_similarity", drawn_files["Multi-Similarity"])
    assert figures.load_pictures("smoke", "multi_similarity", 0, results)["queries"] == drawn_files["Multi-Similarity"]["queries"]

    write_run(results, "baseline", None)  # a record without pictures: a verified re-run draws them
    with pytest.raises(figures.PicturesNotFound, match=r"no pictures file yet: `.*baseline/seed_0.pictures.json`; "
                       r"make it with `python -m dmlutils verify --profile smoke --pictures --runs baseline:0 --results "):
        figures.load_pictures("smoke", "baseline", 0, results)
    with pytest.raises(figures.PicturesNotFound, match="make it with `python -m dmlutils ablation npair --profile smoke --seed 0"):
        figures.load_pictures("smoke", "npair", 0, results)  # no record: its run draws them

    assert figures.load_panels({"baseline": "baseline", "MS": "multi_similarity"}, "smoke", 0, results, what="the grid") is None
    assert capsys.readouterr().out.startswith("**Not shown: the grid.** No pictures file yet:")

    # pictures of an older version of the profile are refused: a chapter never mixes versions
    old = dict(drawn_files["Multi-Similarity"], profile_version=PROFILE_VERSIONS["smoke"] - 1)
    write_run(results, "multi_similarity", old)
    with pytest.raises(figures.PicturesNotFound, match=f"drawn under version {PROFILE_VERSIONS['smoke'] - 1} of the smoke profile"):
        figures.load_pictures("smoke", "multi_similarity", 0, results)
    # pictures of another run than the record (a record re-made later) are refused ...
    write_run(results, "multi_similarity", drawn_files["Multi-Similarity"], record_git={"commit": "2" * 40, "dirty": False})
    with pytest.raises(figures.PicturesNotFound, match="drawn by another run than its record"):
        figures.load_pictures("smoke", "multi_similarity", 0, results)
    # ... unless a re-run that matched that record drew them
    verified = dict(drawn_files["Multi-Similarity"], verified={"record_git": {"commit": "2" * 40, "dirty": False}, "verdict": "identical"})
    write_run(results, "multi_similarity", verified, record_git={"commit": "2" * 40, "dirty": False})
    assert "by a re-run that matched its record (identical)" in figures.provenance(figures.load_pictures("smoke", "multi_similarity", 0, results))


def test_an_optional_panel_is_none_without_its_file_and_the_file_with_it(tmp_path):
    import shutil

    from dmlutils import figures as figs

    assert figs.optional_panel("cpu_full", "multi_similarity", 0, tmp_path) is None  # no notice, no error
    source = Path(__file__).resolve().parents[1] / "results" / "cpu" / "multi_similarity"
    target = tmp_path / "cpu" / "multi_similarity"
    target.mkdir(parents=True)
    for name in ("seed_0.json", "seed_0.pictures.json"):
        shutil.copy(source / name, target / name)
    panel = figs.optional_panel("cpu", "multi_similarity", 0, tmp_path)
    assert panel is not None and panel["profile"] == "cpu" and len(panel["queries"]["index"]) == 24
