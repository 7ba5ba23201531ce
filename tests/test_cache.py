"""dmlutils.cache: the activation cache of the cpu path is built once when several runs start together."""
from __future__ import annotations

import multiprocessing
import time

import torch
from data_fixtures import make_cub

from dmlutils import cache as activation_cache_module
from dmlutils import engine
from dmlutils.profiles import make_config


def tiny_cpu_config() -> dict:
    # EfficientNet-Lite0 without its weights, 32-px images, one view: a cache in seconds.
    return make_config("cpu", "multi_similarity", {"pretrained": False, "image_size": 32, "resize_size": 36, "cache_views": 1})


def _build_in_a_process(root, cache, barrier, builds_file):
    import os

    os.environ["DML_CACHE"] = cache
    torch.set_num_threads(1)
    real_build = activation_cache_module._build_activation_cache

    def counted_build(*args, **kwargs):
        with open(builds_file, "a") as f:
            f.write("built\n")
        time.sleep(1.0)  # hold the lock long enough for the other process to reach it
        return real_build(*args, **kwargs)

    activation_cache_module._build_activation_cache = counted_build
    config = tiny_cpu_config()
    train, test = engine.build_datasets(config, root)
    model = engine.build_model(config)
    barrier.wait()  # both processes ask for the cache at the same moment
    cache = activation_cache_module.activation_cache(config, model, train, test, progress=False)
    torch.save(cache["train"], f"{builds_file}.{os.getpid()}.pt")


def test_two_runs_started_together_build_the_cache_once(tmp_path):
    root = tmp_path / "data"
    make_cub(root, classes_per_split=2, images_per_class=3)
    builds = tmp_path / "builds.txt"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    processes = [
        context.Process(target=_build_in_a_process, args=(str(root), str(tmp_path / "cache"), barrier, str(builds)))
        for _ in range(2)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=300)
        assert p.exitcode == 0
    assert builds.read_text().count("built") == 1
    first, second = (torch.load(p) for p in sorted(tmp_path.glob("builds.txt.*.pt")))
    assert torch.equal(first, second)
    assert len(list((tmp_path / "cache").glob("activations-*.pt"))) == 1


def test_the_cache_command_builds_the_cache_a_run_then_reads(tmp_path, monkeypatch, capsys):
    from dmlutils.__main__ import main as cli

    root = tmp_path / "data"
    make_cub(root, classes_per_split=2, images_per_class=3)
    monkeypatch.setenv("DML_CACHE", str(tmp_path / "cache"))
    settings = ["--set", "pretrained=false", "--set", "image_size=32", "--set", "resize_size=36", "--set", "cache_views=1"]
    assert cli(["cache", "--profile", "cpu", "--root", str(root), *settings]) == 0
    built = list((tmp_path / "cache").glob("activations-*.pt"))
    assert len(built) == 1 and built[0].name in capsys.readouterr().out
    config = tiny_cpu_config()
    train, test = engine.build_datasets(config, root)
    assert activation_cache_module.activation_cache_path(config, train, test) == built[0]  # the run's own cache
    assert cli(["cache", "--profile", "cpu", "--root", str(root), *settings, "--set", "seed=1"]) == 0
    assert len(list((tmp_path / "cache").glob("activations-*.pt"))) == 2  # another seed, other views
    assert cli(["cache", "--profile", "cpu", "--root", str(root), "--set", "cache_views=0"]) == 2
    assert "no activation cache to build" in capsys.readouterr().err


def test_a_cache_with_more_views_extends_the_one_with_fewer_and_equals_a_fresh_build(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_cub(root, classes_per_split=2, images_per_class=3)
    three = {**tiny_cpu_config(), "cache_views": 3}
    train, test = engine.build_datasets(three, root)
    model = engine.build_model(three)

    monkeypatch.setenv("DML_CACHE", str(tmp_path / "fresh"))
    fresh = activation_cache_module.activation_cache(three, model, train, test, progress=False)

    monkeypatch.setenv("DML_CACHE", str(tmp_path / "extended"))
    one = activation_cache_module.activation_cache(tiny_cpu_config(), model, train, test, progress=False)
    drawn = []
    real = activation_cache_module._prefix_activations
    monkeypatch.setattr(activation_cache_module, "_prefix_activations", lambda *a, **k: drawn.append(a[5]) or real(*a, **k))
    extended = activation_cache_module.activation_cache(three, model, train, test, progress=False)
    assert drawn == [1, 2]  # only the two missing views' generators (seed 0 * 1000 + v), no test pass
    assert torch.equal(extended["train"][:, 0], one["train"][:, 0])
    assert torch.equal(extended["train"], fresh["train"]) and torch.equal(extended["test"], fresh["test"])
    assert extended["seconds"] >= one["seconds"]


def test_the_cache_follows_the_images_not_their_folder(tmp_path):
    # A copy moved elsewhere keeps its cache (a rebuild costs half an hour at cpu); one image
    # replaced in place must not reuse the old activations.
    import shutil

    from PIL import Image

    config = tiny_cpu_config()
    here, there = tmp_path / "here", tmp_path / "there"
    make_cub(here, classes_per_split=2, images_per_class=3)
    shutil.copytree(here, there)
    path_here = activation_cache_module.activation_cache_path(config, *engine.build_datasets(config, here))
    assert activation_cache_module.activation_cache_path(config, *engine.build_datasets(config, there)) == path_here
    image = sorted((there / "CUB_200_2011" / "images").rglob("*.jpg"))[0]
    Image.new("RGB", (40, 40), (255, 0, 0)).save(image)
    from dmlutils.data.fingerprint import clear_fingerprint_cache

    clear_fingerprint_cache()
    assert activation_cache_module.activation_cache_path(config, *engine.build_datasets(config, there)) != path_here


def test_a_wrapped_data_set_is_keyed_by_its_images_too(tmp_path):
    # A torch Subset has no fingerprint() and no root: keyed by its length alone, a Subset of
    # other images of the same size reused a cache of the wrong activations.
    import shutil

    from PIL import Image
    from torch.utils.data import Subset

    from dmlutils.data.fingerprint import clear_fingerprint_cache

    config = tiny_cpu_config()
    here, there = tmp_path / "here", tmp_path / "there"
    make_cub(here, classes_per_split=2, images_per_class=3)
    shutil.copytree(here, there)

    def path_of(root):
        train, test = engine.build_datasets(config, root)
        return activation_cache_module.activation_cache_path(config, Subset(train, range(4)), test)

    assert path_of(there) == path_of(here)  # moved: the same images, the same cache
    Image.new("RGB", (40, 40), (255, 0, 0)).save(sorted((there / "CUB_200_2011" / "images").rglob("*.jpg"))[0])
    clear_fingerprint_cache()
    assert path_of(there) != path_of(here)  # one image of the subset replaced: another cache

    class Own(torch.utils.data.Dataset):  # of no form the fingerprint knows: keyed by its folder
        def __init__(self, root):
            self.root = root

        def __len__(self):
            return 4

    train, test = engine.build_datasets(config, here)
    assert (activation_cache_module.activation_cache_path(config, Own("a"), test)
            != activation_cache_module.activation_cache_path(config, Own("b"), test))
