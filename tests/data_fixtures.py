"""Tiny copies of the data sets in their official layouts, written into a tmp_path.

The real CUB, Cars196, SOP and In-Shop archives are not on the test machines (only a
reduced CUB copy is), so the loaders are tested on these. Each builder returns the
ground truth it wrote (paths, official class ids, ...) for the tests to compare with.
"""

from __future__ import annotations

import hashlib
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


def write_jpeg(path: Path, size=(40, 30), colour=(200, 30, 30), box=None, box_colour=(255, 255, 255)) -> None:
    """A solid JPEG, optionally with a rectangle (left, top, right, bottom) in another colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    if box is not None:
        image.paste(Image.new("RGB", (box[2] - box[0], box[3] - box[1]), box_colour), box[:2])
    image.save(path, format="JPEG", quality=95)


def truncate(path: Path, keep_fraction: float = 0.5) -> None:
    """Cut a file short, like an interrupted copy."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep_fraction))])


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_tar_gz(source_dir: Path, archive: Path) -> str:
    """Pack every entry of source_dir at the archive's top level; return the archive's MD5."""
    with tarfile.open(archive, "w:gz") as tar:
        for entry in sorted(source_dir.iterdir()):
            tar.add(entry, arcname=entry.name)
    return md5_of(archive)


def make_zip(source_dir: Path, archive: Path) -> str:
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(source_dir.rglob("*")):
            zipped.write(path, path.relative_to(source_dir).as_posix())
    return md5_of(archive)


@dataclass
class Fixture:
    root: Path  # the data root to pass as root=
    folder: Path  # the data set's own folder
    # per split: list of (absolute image path, official class id), in file order
    items: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    boxes: dict[str, tuple] = field(default_factory=dict)  # path -> box as written in the annotations


def make_cub(root: Path, classes_per_split: int = 3, images_per_class: int = 4) -> Fixture:
    """CUB_200_2011/ with train classes 1..n and test classes 101..100+n.

    Images are 40 x 30 (even image ids) or 30 x 40 (odd), each with a white box whose
    position is written to bounding_boxes.txt. train_test_split.txt marks every other
    image as "test" to check that the loader ignores it.
    """
    folder = root / "CUB_200_2011"
    class_ids = list(range(1, classes_per_split + 1)) + list(range(101, 101 + classes_per_split))
    fixture = Fixture(root=root, folder=folder, items={"train": [], "test": []})
    images, labels, splits, boxes = [], [], [], []
    image_id = 0
    for class_id in class_ids:
        class_dir = f"{class_id:03d}.Bird_{class_id}"
        for n in range(images_per_class):
            image_id += 1
            relative = f"{class_dir}/Bird_{class_id}_{n:04d}.jpg"
            size = (40, 30) if image_id % 2 == 0 else (30, 40)
            x, y, w, h = 3 + n, 2 + n, 12 + n, 10 + n
            write_jpeg(folder / "images" / relative, size=size, colour=(20 * n, 7 * class_id % 256, 90), box=(x, y, x + w, y + h))
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {class_id}")
            splits.append(f"{image_id} {image_id % 2}")
            boxes.append(f"{image_id} {x}.0 {y}.0 {w}.0 {h}.0")
            path = str(folder / "images" / relative)
            fixture.items["train" if class_id <= 100 else "test"].append((path, class_id))
            fixture.boxes[path] = (x, y, w, h)
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(splits) + "\n")
    (folder / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (folder / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in class_ids))
    return fixture


def make_cars(root: Path, classes_per_split: int = 2, images_per_class: int = 3) -> Fixture:
    """cars196/cars_annos.mat + car_ims/, train classes 1..n, test classes 99..98+n.

    The 'test' flag of the annotations alternates, to check that the loader ignores it.
    Boxes are 1-based inclusive (x1, y1, x2, y2) as in the official file.
    """
    import scipy.io

    folder = root / "cars196"
    class_ids = list(range(1, classes_per_split + 1)) + list(range(99, 99 + classes_per_split))
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    records = []
    fixture = Fixture(root=root, folder=folder, items={"train": [], "test": []})
    number = 0
    for class_id in class_ids:
        for n in range(images_per_class):
            number += 1
            relative = f"car_ims/{number:06d}.jpg"
            x1, y1, x2, y2 = 4 + n, 3, 20 + n, 15  # 1-based inclusive
            write_jpeg(folder / relative, size=(48, 32), colour=(10, 10 * class_id % 256, 60), box=(x1 - 1, y1 - 1, x2, y2))
            records.append((relative, x1, y1, x2, y2, class_id, number % 2))
            fixture.items["train" if class_id <= 98 else "test"].append((str(folder / relative), class_id))
            fixture.boxes[str(folder / relative)] = (x1, y1, x2, y2)
    annotations = np.zeros((1, len(records)), dtype=[(f, "O") for f in fields])
    for j, record in enumerate(records):
        annotations[0, j] = tuple(np.array([[v]], dtype=np.uint16) if i else np.array([v]) for i, v in enumerate(record))
    class_names = np.array([f"Maker Model {c}" for c in range(1, 197)], dtype=object)[None, :]
    scipy.io.savemat(folder / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return fixture


def make_sop(root: Path) -> Fixture:
    """Stanford_Online_Products/ with Ebay_train.txt and Ebay_test.txt (class-disjoint)."""
    folder = root / "Stanford_Online_Products"
    # (class_id, super_class_id, super name, images) -- 2..3 images per product as in SOP
    layout = {
        "train": [(1, 1, "bicycle", 2), (2, 1, "bicycle", 3), (3, 2, "chair", 2)],
        "test": [(4, 2, "chair", 2), (5, 3, "mug", 3)],
    }
    fixture = Fixture(root=root, folder=folder, items={"train": [], "test": []})
    image_id = 0
    for split, products in layout.items():
        lines = ["image_id class_id super_class_id path"]
        for class_id, super_id, super_name, count in products:
            for n in range(count):
                image_id += 1
                relative = f"{super_name}_final/{100000 + class_id}_{n}.JPG"
                write_jpeg(folder / relative, size=(36, 36), colour=(30 * class_id % 256, 40, 40))
                lines.append(f"{image_id} {class_id} {super_id} {relative}")
                fixture.items[split].append((str(folder / relative), class_id))
        (folder / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return fixture


def make_inshop(root: Path, official_tree: bool = False) -> Fixture:
    """In-Shop with list_eval_partition.txt: items 1-2 train, items 3-5 query + gallery.

    ``official_tree`` puts the partition file in Eval/ and the images in Img/img/, as
    the official download unpacks; otherwise both sit directly in InShop/.
    """
    if official_tree:
        folder = root / "In-shop Clothes Retrieval Benchmark"
        partition, image_base = folder / "Eval" / "list_eval_partition.txt", folder / "Img"
    else:
        folder = root / "InShop"
        partition, image_base = folder / "list_eval_partition.txt", folder
    rows = []
    plan = [
        ("id_00000001", ["train", "train"]),
        ("id_00000002", ["train", "train", "train"]),
        ("id_00000007", ["query", "gallery", "gallery"]),
        ("id_00000004", ["query", "query", "gallery"]),
        ("id_00000005", ["gallery", "gallery"]),  # gallery-only item (a distractor)
    ]
    fixture = Fixture(root=root, folder=folder, items={"train": [], "query": [], "gallery": []})
    for item, statuses in plan:
        for n, status in enumerate(statuses):
            relative = f"img/WOMEN/Dresses/{item}/{n + 1:02d}_1_front.jpg"
            write_jpeg(image_base / relative, size=(32, 48), colour=(50, 5 * int(item[-2:]), 90))
            rows.append(f"{relative} {item} {status}")
            fixture.items[status].append((str(image_base / relative), item))
    partition.parent.mkdir(parents=True, exist_ok=True)
    partition.write_text(f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n")
    return fixture
