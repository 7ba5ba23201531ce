"""The pictures of a trained model, drawn: retrieval grids, embedding maps, pair-weight maps
and a gallery of failures.

Everything a figure shows comes from a pictures file (`dmlutils.pictures`) beside a
committed run record: which queries, which neighbours and in which order, their classes,
the map's coordinates, S and W. Nothing is recomputed here. Images are read by the names
the file gives them: CUB-200-2011's under the data root (`<root>/CUB_200_2011/<name>`),
the smoke profile's synthetic ones (`synthetic/<index>`) generated again from the profile
and seed the file names, and checked against the file's data fingerprint.

An image figure returns what it drew (`Drawing.tiles`: panel, row, column, image, class,
right or wrong), so a test can hold the figure to its file. Without CUB-200-2011 it draws
nothing and shows the notice of `notebook_tools.show_missing_data` instead: what is missing
and the one command that fetches it. The maps and the weights need no image.
"""
from __future__ import annotations

import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .pictures import pictures_path, read_pictures

RIGHT, WRONG = "#1a9641", "#d7191c"  # frame of a neighbour of the query's class / of another class
PAGE_WIDTH = 9.0  # inches at 120 dpi: the book's text column (about 680 px) shows it at 0.6 of its size,
TEXT, SMALL = 13, 11  # so its text is set large: 13 pt reads as about 12 px there
QUERIES_SHOWN = 6
CLASSES_SHOWN = 10
# tab10 without its grey (the other classes are grey), and black: ten colours told apart on a page
CLASS_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#000000"]


class PicturesNotFound(FileNotFoundError):
    """A chapter's pictures file is missing or belongs to another run than its record."""


# --- finding and reading the files --------------------------------------------------------


def make_command(profile: str, name: str, seed: int = 0, results_dir="results") -> str:
    """The command that writes the pictures of run `name`, seed `seed`: its run when there
    is no record yet, else a verified re-run that leaves pictures beside the record."""
    from .records import remake_command

    record = Path(results_dir) / profile / name / f"seed_{seed}.json"
    if record.is_file():
        return remake_command(pictures_path(record))
    results = "" if Path(results_dir) == Path("results") else f" --results {results_dir}"
    if name == "baseline":
        return f"python -m dmlutils baseline --profile {profile}{results}"
    return f"python -m dmlutils ablation {name} --profile {profile} --seed {seed}{results}"


def load_pictures(profile: str, name: str, seed: int = 0, results_dir="results") -> dict:
    """The pictures of run `name` (a run of `dmlutils.manifest`), seed `seed`, checked to be
    those of its record: drawn under the profile's current version, by the run that wrote the
    record or by a re-run that matched it (`verified`). Raises `PicturesNotFound` naming the
    file and the command that makes it."""
    record_path = Path(results_dir) / profile / name / f"seed_{seed}.json"
    path = pictures_path(record_path)
    if not path.is_file():
        raise PicturesNotFound(f"no pictures file yet: `{path}`; make it with `{make_command(profile, name, seed, results_dir)}`")
    pictures = read_pictures(path)
    from .profiles import PROFILE_VERSIONS

    if pictures["profile_version"] != PROFILE_VERSIONS.get(profile):  # a chapter never mixes versions
        raise PicturesNotFound(
            f"`{path}` was drawn under version {pictures['profile_version']} of the {profile} profile, which is now at "
            f"version {PROFILE_VERSIONS.get(profile)}; re-make it with `{make_command(profile, name, seed, results_dir)}`"
        )
    if record_path.is_file():
        import json

        record_git = json.loads(record_path.read_text()).get("git")
        drawn_for = (pictures.get("verified") or {}).get("record_git", pictures.get("record_git"))
        if drawn_for != record_git:
            raise PicturesNotFound(
                f"`{path}` was drawn by another run than its record `{record_path}` (the record's commit "
                f"{(record_git or {}).get('commit', 'unknown')[:12]}, the pictures' {(drawn_for or {}).get('commit', 'unknown')[:12]}); "
                f"re-make them with `{make_command(profile, name, seed, results_dir)}`"
            )
    return pictures


def load_panels(runs: dict[str, str], profile: str, seed: int = 0, results_dir="results", what: str = "these figures") -> dict | None:
    """{title: pictures} of `runs` ({title: run name}), or None after a notice naming each
    missing file and the command that makes it."""
    panels, missing = {}, []
    for title, name in runs.items():
        try:
            panels[title] = load_pictures(profile, name, seed, results_dir)
        except PicturesNotFound as error:
            missing.append(str(error))
    if missing:
        show_notice(f"**Not shown: {what}.** " + " ".join(f"{m[0].upper()}{m[1:]}." for m in missing))
        return None
    return panels


def optional_panel(profile: str, name: str, seed: int = 0, results_dir="results") -> dict | None:
    """A run's pictures if its file exists, else None without a notice: a panel a figure
    adds once its run has been made (the whole-backbone regime's beside the cpu regime's)."""
    try:
        return load_pictures(profile, name, seed, results_dir)
    except PicturesNotFound:
        return None


def show_notice(text: str) -> None:
    """Display Markdown in a notebook, else print it (`notebook_tools.show_markdown`)."""
    from .notebook_tools import show_markdown

    show_markdown(text)


def provenance(pictures: dict) -> str:
    """Which run drew a pictures file, in one sentence's clause."""
    run = pictures.get("loss") or "the pretrained features (no training)"
    text = (f"{run}, seed {pictures['seed']}, profile {pictures['profile']} v{pictures['profile_version']}, "
            f"drawn at commit `{pictures['git'].get('commit', 'unknown')[:12]}`")
    verified = pictures.get("verified")
    if verified:
        text += f" by a re-run that matched its record ({verified['verdict']})"
    return text


# --- what the files say --------------------------------------------------------------------


def correct_at_1(pictures: dict) -> np.ndarray:
    """Per query of the file: is its nearest neighbour of its class?"""
    queries = pictures["queries"]
    return np.array([hits[0] == label for hits, label in zip(queries["neighbour_labels"], queries["label"])])


def failures(pictures: dict) -> list[int]:
    """Positions (in the file's query list) of the queries whose nearest neighbour is of another class."""
    return [int(i) for i in np.flatnonzero(~correct_at_1(pictures))]


def class_name(pictures: dict, label: int) -> str:
    """A class's name from the folder of one of its images in the file (CUB:
    `images/200.Common_Yellowthroat/...` gives "Common Yellowthroat"), else "class <label>"."""
    queries, batch = pictures["queries"], pictures["batch"]
    indices = [i for i, lab in zip(queries["index"], queries["label"]) if lab == label]
    indices += [i for hits, labs in zip(queries["neighbours"], queries["neighbour_labels"]) for i, lab in zip(hits, labs) if lab == label]
    indices += [i for i, lab in zip(batch["index"], batch["label"]) if lab == label]
    for index in indices:
        parts = pictures["images"].get(str(index), "").split("/")
        if len(parts) >= 3 and parts[0] == "images":
            return re.sub(r"^\d+\.", "", parts[1]).replace("_", " ")
    return f"class {label}"


def kind_of(pictures: dict, label: int) -> str | None:
    """The last word of a class's name ("Sparrow" of "Brewer Sparrow"): CUB names a species
    by its kind last. None for a class without a name (synthetic)."""
    name = class_name(pictures, label)
    return None if name == f"class {label}" else name.split()[-1]


def _same_queries(panels: dict[str, dict]) -> dict:
    first_title, first = next(iter(panels.items()))
    for title, pictures in panels.items():
        if pictures["data"] != first["data"] or pictures["queries"]["index"] != first["queries"]["index"]:
            raise ValueError(f"the pictures of {first_title!r} and {title!r} are of different evaluation sets or queries "
                             f"({first['data']} vs {pictures['data']}): a grid compares runs on the same queries only")
    return first


# --- images ----------------------------------------------------------------------------------


class ImagesNotFound(FileNotFoundError):
    """The images a pictures file names are not on this machine."""


def _synthetic_images(pictures: dict):
    """The smoke profile's synthetic evaluation set, generated again from the file's profile and
    seed, and checked against the file's data fingerprint."""
    from .data import data_fingerprint
    from .engine.build import dataset_split
    from .profiles import make_config

    config = make_config(pictures["profile"], overrides={"seed": pictures["seed"]})
    dataset = dataset_split(config, "test", augment=False)
    if data_fingerprint(dataset) != pictures["data"]:
        raise ValueError(f"the synthetic images of profile {pictures['profile']!r}, seed {pictures['seed']}, are not "
                         f"those the pictures file was drawn on ({pictures['data']}); re-make the file at this commit")
    return lambda index: dataset[index][0].permute(1, 2, 0).numpy()


def image_reader(pictures: dict, data_root=None):
    """A function index -> image (H x W x 3 array) for the images the file names, or
    `ImagesNotFound` when they are CUB-200-2011's and the data root does not hold it."""
    from .data import cub_found, load_rgb, resolve_data_root

    names = pictures["images"]
    if all(name.startswith("synthetic/") for name in names.values()):
        return _synthetic_images(pictures)
    if not cub_found(data_root):
        raise ImagesNotFound(resolve_data_root(data_root))
    root = resolve_data_root(data_root)
    folder = root / "CUB_200_2011" if (root / "CUB_200_2011" / "images.txt").is_file() else root

    def read(index: int) -> np.ndarray:
        image = load_rgb(folder / names[str(index)])
        side = min(image.size)  # the centre square: about what the evaluation's centre crop keeps
        left, top = (image.width - side) // 2, (image.height - side) // 2
        return np.asarray(image.crop((left, top, left + side, top + side)).resize((160, 160)))

    return read


@dataclass(frozen=True)
class Tile:
    """One image of a figure: which file (`panel`) and where it sits (`row`, `column` 0 =
    the query, 1.. its neighbours in the file's order), what it is (`index` in the
    evaluation set, `image` its name in the file, `label`), and its frame (`correct`: of
    the query's class; None for the query)."""

    panel: str
    row: int
    column: int
    index: int
    image: str
    label: int
    correct: bool | None


@dataclass
class Drawing:
    """A figure and what it drew; `figure` is None (and `notice` says why) when nothing was."""

    figure: object | None
    tiles: list[Tile] = field(default_factory=list)
    notice: str | None = None
    values: dict = field(default_factory=dict)  # the arrays a non-image figure drew, by panel

    def axes_of(self, tile: Tile):
        """The axes that shows `tile`."""
        return next(ax for ax in self.figure.axes if ax.get_gid() == _gid(tile))


def _gid(tile: Tile) -> str:
    return f"{tile.panel}|{tile.row}|{tile.column}"


def _draw_tile(ax, image, tile: Tile, caption: str | None = None) -> None:
    ax.imshow(image, interpolation="lanczos" if image.shape[0] > 64 else "nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_gid(_gid(tile))
    colour = {True: RIGHT, False: WRONG, None: "black"}[tile.correct]
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(1 if tile.correct is None else 3.5)
    if caption:
        ax.set_xlabel(textwrap.fill(caption, 10, break_long_words=False), fontsize=SMALL, labelpad=2, linespacing=1.0)


def _missing_images(what: str, data_root) -> Drawing:
    from .notebook_tools import missing_data_markdown, show_missing_data

    show_missing_data(what, data_root, download_parameter=False)  # the chapters drawing pictures have no `download`
    return Drawing(None, notice=missing_data_markdown(what, data_root, download_parameter=False))


def _row_tiles(title: str, pictures: dict, position: int, row: int) -> list[Tile]:
    queries, names = pictures["queries"], pictures["images"]
    query, label = queries["index"][position], queries["label"][position]
    tiles = [Tile(title, row, 0, query, names[str(query)], label, None)]
    for column, (hit, hit_label) in enumerate(zip(queries["neighbours"][position], queries["neighbour_labels"][position]), start=1):
        tiles.append(Tile(title, row, column, hit, names[str(hit)], hit_label, hit_label == label))
    return tiles


def retrieval_grid(panels: dict[str, dict], positions=None, data_root=None) -> Drawing:
    """Queries and their nearest neighbours as the files list them, one row per file under
    each query (the same queries for every file), each neighbour framed green (the query's
    class) or red (another class). `positions`: which of the file's queries (default: its
    first `QUERIES_SHOWN`)."""
    import matplotlib.pyplot as plt

    first = _same_queries(panels)
    positions = list(range(min(QUERIES_SHOWN, len(first["queries"]["index"])))) if positions is None else list(positions)
    try:  # each file names its own neighbours; one evaluation set, so one name per index
        read = image_reader(dict(first, images={k: v for p in panels.values() for k, v in p["images"].items()}), data_root)
    except ImagesNotFound:
        return _missing_images("the retrieval grid", data_root)
    titles, n_neighbours = list(panels), len(first["queries"]["neighbours"][0])
    gap = 0.35  # between the blocks of two queries, in tile heights
    heights = []
    for block in range(len(positions)):
        heights += [1.0] * len(titles) + ([gap] if block < len(positions) - 1 else [])
    widths = [1.1, 0.3] + [1.0] * n_neighbours
    unit = PAGE_WIDTH / sum(widths)
    above, below = 0.45, 0.6  # column titles; the last query's caption
    height = sum(heights) + above + below
    fig = plt.figure(figsize=(PAGE_WIDTH, unit * height))
    grid = fig.add_gridspec(len(heights), len(widths), height_ratios=heights, width_ratios=widths,
                            wspace=0.06, hspace=0.06, left=0.01, right=0.99, top=1 - above / height, bottom=below / height)
    tiles = []
    for block, position in enumerate(positions):
        top = block * (len(titles) + 1)
        for offset, title in enumerate(titles):
            row_tiles = _row_tiles(title, panels[title], position, top + offset)
            if offset == 0:  # the query: once, beside its rows
                query = row_tiles[0]
                ax = fig.add_subplot(grid[top:top + len(titles), 0])
                _draw_tile(ax, read(query.index), query, class_name(first, query.label))
                tiles.append(query)
            for tile in row_tiles[1:]:
                ax = fig.add_subplot(grid[top + offset, tile.column + 1])
                _draw_tile(ax, read(tile.index), tile)
                if tile.column == 1:
                    ax.set_ylabel(title, fontsize=TEXT, labelpad=3)
                if block == 0 and offset == 0:
                    ax.set_title(f"{tile.column}", fontsize=TEXT, pad=4)
                tiles.append(tile)
    fig.text(0.01 + 0.55 * unit / PAGE_WIDTH, 1 - 0.08 / height, "query", ha="center", va="top", fontsize=TEXT)
    return Drawing(fig, tiles)


def failure_gallery(pictures: dict, title: str = "Multi-Similarity", limit: int = 8, data_root=None) -> Drawing:
    """The queries of the file whose nearest neighbour is of another class, with their
    neighbours as the file lists them; each wrong neighbour captioned with its class."""
    import matplotlib.pyplot as plt

    wrong = failures(pictures)[:limit]
    if not wrong:
        return Drawing(None, notice=f"none of the {len(pictures['queries']['index'])} queries has a nearest neighbour of another class")
    try:
        read = image_reader(pictures, data_root)
    except ImagesNotFound:
        return _missing_images("the gallery of failures", data_root)
    n_neighbours = len(pictures["queries"]["neighbours"][0])
    widths = [1.0, 0.15] + [1.0] * n_neighbours
    unit = PAGE_WIDTH / sum(widths)
    row_height, above, below = 1.75, 0.4, 0.8  # a row: a tile and its caption of up to three lines; in tile sides
    height = row_height * len(wrong) - (row_height - 1) + above + below
    fig = plt.figure(figsize=(PAGE_WIDTH, unit * height))
    grid = fig.add_gridspec(len(wrong), len(widths), width_ratios=widths, wspace=0.06, hspace=row_height - 1,
                            left=0.01, right=0.99, top=1 - above / height, bottom=below / height)
    tiles = []
    for row, position in enumerate(wrong):
        for tile in _row_tiles(title, pictures, position, row):
            ax = fig.add_subplot(grid[row, 0 if tile.column == 0 else tile.column + 1])
            caption = class_name(pictures, tile.label) if tile.correct is not True else None
            _draw_tile(ax, read(tile.index), tile, caption)
            if row == 0:
                ax.set_title("query" if tile.column == 0 else f"{tile.column}", fontsize=TEXT, pad=4)
            tiles.append(tile)
    return Drawing(fig, tiles)


# --- maps and weights (no images) ---------------------------------------------------------------


def highlighted_classes(pictures: dict, n: int = CLASSES_SHOWN) -> list[int]:
    """The classes a map colours: those of the file's first `n` queries."""
    return [int(label) for label in pictures["queries"]["label"][:n]]


def embedding_maps(panels: dict[str, dict], n_classes: int = CLASSES_SHOWN) -> Drawing:
    """Each file's 2-D map of the evaluation set side by side, titled with its method: the
    classes of the first `n_classes` queries in colour, every other class light grey."""
    import matplotlib.pyplot as plt

    first = _same_queries(panels)
    classes = highlighted_classes(first, n_classes)
    if len(classes) > len(CLASS_COLOURS):
        raise ValueError(f"a map colours at most {len(CLASS_COLOURS)} classes, not {len(classes)}")
    colours = CLASS_COLOURS[: len(classes)]
    legend_rows = -(-len(classes) // 3)
    fig, axes = plt.subplots(1, len(panels), figsize=(PAGE_WIDTH, PAGE_WIDTH / len(panels) + 0.6 + 0.3 * legend_rows),
                             squeeze=False, layout="constrained")
    methods = {pictures["map"]["method"] for pictures in panels.values()}
    shared_method = len(methods) == 1
    if shared_method:  # one title for both maps
        fig.suptitle(methods.pop(), fontsize=SMALL)
    values = {}
    for ax, (title, pictures) in zip(axes[0], panels.items()):
        m = pictures["map"]
        x, y, labels = np.asarray(m["x"]), np.asarray(m["y"]), np.asarray(m["label"])
        grey = ~np.isin(labels, classes)
        ax.scatter(x[grey], y[grey], s=5, color="#d9d9d9", linewidths=0, rasterized=True)
        for colour, label in zip(colours, classes):
            mine = labels == label
            ax.scatter(x[mine], y[mine], s=16, color=colour, linewidths=0, label=class_name(first, label))
        ax.set_title(title if shared_method else f"{title}\n" + textwrap.fill(m["method"], 40), fontsize=TEXT if shared_method else SMALL)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
        values[title] = np.stack([x, y], axis=1)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(3, len(classes)), fontsize=SMALL, markerscale=1.8, frameon=False)
    return Drawing(fig, values={"classes": classes, **values})


def batch_weights(pictures: dict, state: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(S, m·W, labels, iteration) of the file's batch at `state` (0: iteration 0, -1: the end).
    W is scaled by the batch size m: `pair_weights` includes the loss's mean over anchors,
    the paper's w_ij do not."""
    batch = pictures["batch"]
    chosen = batch["states"][state]
    if chosen["weights"] is None:
        raise ValueError(f"the pictures of {pictures.get('loss')} hold no pair weights: its loss has no closed form in S alone")
    labels = np.asarray(batch["label"])
    return np.asarray(chosen["similarity"]), len(labels) * np.asarray(chosen["weights"]), labels, batch["iterations"][state]


def weight_maps(panels: dict[str, tuple[np.ndarray, np.ndarray]]) -> Drawing:
    """Heat maps of pair weights side by side, {title: (m·W, labels)}, positives blue and
    negatives red on one scale, lines between the classes' blocks."""
    import matplotlib.pyplot as plt

    largest = max(float(np.abs(w).max()) for w, _ in panels.values()) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(PAGE_WIDTH, PAGE_WIDTH / len(panels) + 0.2), squeeze=False,
                             layout="constrained")
    values = {}
    for ax, (title, (weights, labels)) in zip(axes[0], panels.items()):
        weights, labels = np.asarray(weights, dtype=float), np.asarray(labels)
        image = ax.imshow(weights, cmap="RdBu", vmin=-largest, vmax=largest, interpolation="nearest")
        for edge in np.flatnonzero(np.diff(labels)) + 0.5:
            ax.axhline(edge, color="#bdbdbd", lw=0.4)
            ax.axvline(edge, color="#bdbdbd", lw=0.4)
        ax.set_title(textwrap.fill(title, 26), fontsize=TEXT)
        ax.set_xlabel("pair j", fontsize=SMALL)
        ax.set_ylabel("anchor i", fontsize=SMALL)
        ax.tick_params(labelsize=SMALL)
        ax.grid(False)
        values[title] = weights
    bar = fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    bar.set_label(r"$w_{ij}$ ($w^+$ > 0, $-w^-$ < 0)", fontsize=SMALL)
    bar.ax.tick_params(labelsize=SMALL)
    return Drawing(fig, values=values)


def similarity_and_weights(pictures: dict) -> Drawing:
    """Each pair's weight against its similarity, at every stored state of the file's batch
    (iteration 0 and the end): positives blue, negatives red; hollow, the pairs of weight 0 in
    the file (those mining dropped, and any whose weight rounds to 0 at the file's precision)."""
    import matplotlib.pyplot as plt

    n_states = len(pictures["batch"]["states"])
    fig, axes = plt.subplots(1, n_states, figsize=(PAGE_WIDTH, 4.6), squeeze=False, sharey=True, layout="constrained")
    values = {}
    for state, ax in enumerate(axes[0]):
        S, W, labels, iteration = batch_weights(pictures, state)
        off_diagonal = ~np.eye(len(labels), dtype=bool)
        same = (labels[:, None] == labels[None, :]) & off_diagonal
        for mask, colour, name in ((same, "tab:blue", "positive pairs"), (~same & off_diagonal, "tab:red", "negative pairs")):
            kept = mask & (W != 0)
            ax.scatter(S[kept], W[kept], s=10, color=colour, alpha=0.6, linewidths=0, label=f"{name}, weighted")
            ax.scatter(S[mask & (W == 0)], W[mask & (W == 0)], s=10, facecolor="none", edgecolor=colour, alpha=0.35,
                       linewidths=0.5, label=f"{name}, weight 0 in the file")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"iteration {iteration}", fontsize=TEXT)
        ax.set_xlabel("similarity $S_{ij}$", fontsize=SMALL)
        ax.tick_params(labelsize=SMALL)
        values[f"iteration {iteration}"] = (S, W)
    axes[0][0].set_ylabel(r"$w_{ij}$ ($w^+$ > 0, $-w^-$ < 0)", fontsize=SMALL)
    handles, names = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize=SMALL, markerscale=1.8, frameon=False)
    return Drawing(fig, values=values)
