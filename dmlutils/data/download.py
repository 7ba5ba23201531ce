"""Download an archive, check its MD5, extract it -- atomically, from any URL urllib opens.

``file://`` URLs work like ``https://`` ones, which is how the tests exercise the whole
path without internet: they build a tiny archive in a temporary folder and "download" it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ChecksumError", "DownloadError", "download_and_extract", "download_file", "extract_archive", "fetch_resources", "md5sum"]

_CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A downloaded (or already present) file does not have the expected MD5."""


class DownloadError(OSError):
    """No URL of a resource could be fetched."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return self.args[0]


def md5sum(path: str | os.PathLike) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(
    urls: str | Sequence[str],
    destination: str | os.PathLike,
    md5: str | None,
    progress: bool = True,
) -> Path:
    """Fetch the first URL that answers into ``destination``, verifying its MD5.

    A file already at ``destination`` with the right MD5 is kept (no download). The
    download goes to a temporary file in the same folder and is renamed into place
    only once its MD5 matches, so an interrupted or corrupt download never leaves a
    file that looks complete. A mismatch raises :class:`ChecksumError` naming the
    expected and the actual MD5.
    """
    destination = Path(destination)
    urls = [urls] if isinstance(urls, str) else list(urls)
    if destination.exists() and (md5 is None or md5sum(destination) == md5):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        try:
            return _fetch_verified(url, destination, md5, progress)
        except (urllib.error.URLError, OSError, ValueError) as err:
            if isinstance(err, DownloadError):
                raise
            failures.append(f"  {url}: {type(err).__name__}: {getattr(err, 'reason', err)}")
    raise DownloadError(
        f"could not download {destination.name}:\n" + "\n".join(failures) + "\n"
        f"Without internet (or if the host is gone), download the file elsewhere and "
        f"place it at {destination}; it is checked against MD5 {md5}."
    )


def _fetch_verified(url: str, destination: Path, md5: str | None, progress: bool) -> Path:
    digest = hashlib.md5(usedforsecurity=False)
    handle, temp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = response.headers.get("Content-Length")
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=destination.name)
            try:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    out.write(block)
                    digest.update(block)
                    if bar is not None:
                        bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
        actual = digest.hexdigest()
        if md5 is not None and actual != md5:
            raise ChecksumError(
                f"MD5 mismatch for {url}: expected {md5}, got {actual}. The download is "
                f"corrupt or incomplete, or the file changed upstream. Retry; if it persists, "
                f"fetch the file yourself and compare it with the expected MD5."
            )
        os.replace(temp_name, destination)
        return destination
    finally:
        if os.path.exists(temp_name):
            os.remove(temp_name)


def extract_archive(archive: str | os.PathLike, destination: str | os.PathLike) -> list[Path]:
    """Extract a .tar(.gz/.bz2/.xz) or .zip archive into ``destination``.

    Extraction goes into a temporary folder beside the target first and is moved into
    place afterwards (merging into folders that already exist), so a failed extraction
    leaves no half-written data set behind. Members that would escape ``destination``
    (absolute paths, ``..``, links outside) are refused. Returns the top-level entries.
    """
    archive, destination = Path(archive), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=destination))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                for member in zipped.namelist():
                    _refuse_escape(member, archive)
                zipped.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tarred:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                    tarred.extractall(staging, filter="data")
                else:  # pragma: no cover - older Pythons
                    for member in tarred.getmembers():
                        _refuse_escape(member.name, archive)
                        if member.issym() or member.islnk():
                            _refuse_escape(os.path.join(os.path.dirname(member.name), member.linkname), archive)
                    tarred.extractall(staging)
        else:
            raise ValueError(f"{archive} is neither a tar nor a zip archive; cannot extract it.")
        top_level = sorted(staging.iterdir())
        for entry in top_level:
            _move_merging(entry, destination / entry.name)
        return [destination / entry.name for entry in top_level]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _refuse_escape(member: str, archive: Path) -> None:
    normalised = os.path.normpath(member)
    if os.path.isabs(member) or normalised == ".." or normalised.startswith(".." + os.sep):
        raise ValueError(f"refusing to extract {archive}: member {member!r} would land outside the target folder.")


def _move_merging(source: Path, target: Path) -> None:
    """os.replace, except that an existing folder is merged into rather than clobbered."""
    if source.is_dir() and not source.is_symlink() and target.is_dir():
        for child in source.iterdir():
            _move_merging(child, target / child.name)
        source.rmdir()
    else:
        os.replace(source, target)


def download_and_extract(
    urls: str | Sequence[str],
    root: str | os.PathLike,
    md5: str | None,
    filename: str | None = None,
    remove_archive: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Download an archive into ``root`` (MD5-checked) and extract it there."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    root = Path(root)
    filename = filename or os.path.basename(urllib.parse.urlparse(urls[0]).path)
    archive = download_file(urls, root / filename, md5, progress=progress)
    extracted = extract_archive(archive, root)
    if remove_archive:
        archive.unlink()
    return extracted


def fetch_resources(resources: Sequence[tuple], target: str | os.PathLike, progress: bool = True) -> None:
    """Fetch a data set's official files into ``target``: each resource is ``(urls, md5, file
    name)`` or ``(urls, md5, file name, extract)``; an archive (``extract`` true, the
    default) is downloaded and extracted there, any other file only downloaded."""
    target = Path(target)
    for urls, md5, filename, *extract in resources:
        if extract[0] if extract else True:
            download_and_extract(urls, target, md5, filename=filename, progress=progress)
        else:
            download_file(urls, target / filename, md5, progress=progress)
