"""Data sets for deep metric learning, torchvision-style, with class-disjoint splits.

``CUB200``, ``Cars196``, ``StanfordOnlineProducts`` and ``InShop`` read the official
archives' layouts; ``SyntheticDataset`` generates tiny images for tests and the smoke
profile. Every data set exposes ``labels`` (0-based, no image decoding needed -- feed it
to :class:`dmlutils.samplers.PKSampler`) and ``classes``; the real ones also ``paths``.

The data root is the ``root`` argument, else ``$DML_DATA``, else ``./data``
(:func:`resolve_data_root`; :func:`data_root_origin` also says which of the three it
was); :func:`cub_found` says whether CUB-200-2011 is there. Every data set finds (and with
``download=True`` fetches) its files through :func:`locate_or_download`.

Run records name their data by :func:`data_fingerprint` (also ``dataset.fingerprint()``):
the data set's name, split, number of images and a SHA-256 over the image list and the
files' hashes -- never a path of the machine that ran them.
"""

from .base import (
    DATA_ROOT_ENV,
    ClassSubset,
    CorruptImageError,
    DatasetNotFoundError,
    ImageListDataset,
    data_root_origin,
    load_rgb,
    locate_or_download,
    resolve_data_root,
)
from .cars import Cars196
from .cub import CUB200, cub_found
from .download import (
    ChecksumError,
    DownloadError,
    download_and_extract,
    download_file,
    extract_archive,
    fetch_resources,
    md5sum,
)
from .fingerprint import data_fingerprint, file_sha256
from .inshop import InShop
from .sop import StanfordOnlineProducts
from .synthetic import SyntheticDataset
from .transforms import TRANSFORM_SPECS, denormalize, get_transforms, pipeline_stages, transform_names

DATASETS = {
    "cub200": CUB200,
    "cars196": Cars196,
    "sop": StanfordOnlineProducts,
    "inshop": InShop,
    "synthetic": SyntheticDataset,
}


def get_dataset(name: str, **kwargs):
    """Build a data set by name (``cub200``, ``cars196``, ``sop``, ``inshop``, ``synthetic``)."""
    try:
        cls = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(sorted(DATASETS))}.") from None
    return cls(**kwargs)


__all__ = [
    "DATASETS",
    "DATA_ROOT_ENV",
    "CUB200",
    "Cars196",
    "ClassSubset",
    "ChecksumError",
    "CorruptImageError",
    "DatasetNotFoundError",
    "DownloadError",
    "ImageListDataset",
    "InShop",
    "StanfordOnlineProducts",
    "SyntheticDataset",
    "TRANSFORM_SPECS",
    "cub_found",
    "data_fingerprint",
    "data_root_origin",
    "denormalize",
    "download_and_extract",
    "download_file",
    "extract_archive",
    "fetch_resources",
    "file_sha256",
    "get_dataset",
    "get_transforms",
    "pipeline_stages",
    "load_rgb",
    "locate_or_download",
    "md5sum",
    "resolve_data_root",
    "transform_names",
]
