"""GET / LIST THANOSQL DATASET: the catalogue of fetchable datasets and their fetching.

A dataset lands in `data_dir/thanosql-dataset/<name>/` as CSVs (`audio` relative paths,
`text`) plus an `audio/` folder, the layout the ThanoSQL tutorial COPYs from. Files are
copied (or hard-linked) into the data directory rather than symlinked, so every audio
path the tables hold lies under the one root the server always allows.

Sources, in order: a local mirror folder (`--dataset-mirror` / THANOSQL_DATASET_MIRROR,
for offline machines and tests), else the official LibriSpeech distribution
(openslr.org/12), checksum-verified, of which a small sample is extracted.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import stat
import tarfile
import threading
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from planner.errors import InvalidInput, NotFound, PermissionDenied

DATASET_FOLDER = "thanosql-dataset"
VALID_OPTIONS = {"overwrite": "True to fetch again and replace the dataset's files and tables"}
DOWNLOAD_TIMEOUT_S = 30
_lock = threading.Lock()  # one fetch at a time: fetches share the staging/replace dance


@dataclass(frozen=True)
class Archive:
    """One official tarball: where to get it and the sha256 it must have."""
    file_name: str
    urls: tuple[str, ...]
    sha256: str
    size_mb: int


@dataclass(frozen=True)
class Dataset:
    name: str
    data_type: str
    description: str
    tables: dict[str, int]  # table name -> number of utterances sampled for it
    archive: Archive


_OPENSLR = ("https://www.openslr.org/resources/12/", "https://us.openslr.org/resources/12/",
            "https://openslr.elda.org/resources/12/")
# sha256 as published by torchaudio's LIBRISPEECH dataset for openslr.org/12's dev-clean.
DEV_CLEAN = Archive("dev-clean.tar.gz", tuple(base + "dev-clean.tar.gz" for base in _OPENSLR),
                    "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3", 337)

DATASETS = {
    "librispeech_data": Dataset(
        "librispeech_data", "audio",
        "LibriSpeech read English speech (CC BY 4.0), 16 kHz; tables librispeech_train (100 rows) "
        "and librispeech_test (20 rows), columns audio (file path) and text (lower case)",
        {"librispeech_train": 100, "librispeech_test": 20}, DEV_CLEAN),
}


def list_datasets() -> pa.Table:
    """LIST THANOSQL DATASET: what GET THANOSQL DATASET can fetch."""
    items = list(DATASETS.values())
    return pa.table({
        "name": pa.array([d.name for d in items], pa.string()),
        "data_type": pa.array([d.data_type for d in items], pa.string()),
        "tables": pa.array([", ".join(d.tables) for d in items], pa.string()),
        "description": pa.array([d.description for d in items], pa.string()),
    })


def check_request(name: str, options: dict) -> Dataset:
    """Refuse unknown datasets and options at prepare time, naming what is valid."""
    unknown = sorted(set(options) - set(VALID_OPTIONS))
    if unknown:
        valid = "; ".join(f"{k}: {v}" for k, v in VALID_OPTIONS.items())
        raise InvalidInput(f"unknown GET THANOSQL DATASET option(s) {', '.join(unknown)}; valid: {valid}")
    if "overwrite" in options and not isinstance(options["overwrite"], bool):
        raise InvalidInput(f"option 'overwrite' must be True or False, got {options['overwrite']!r}")
    dataset = DATASETS.get(name) or DATASETS.get(str(name).lower())
    if dataset is None:
        raise NotFound(f"unknown dataset '{name}'; available datasets: {', '.join(DATASETS)} "
                       "(see LIST THANOSQL DATASET)")
    return dataset


def fetch_dataset(name: str, data_dir: Path, mirror: Path | None, overwrite: bool) -> dict[str, Path]:
    """Put dataset `name` under data_dir/thanosql-dataset/<name>/; {table: csv path}.

    An existing, complete folder is reused unless `overwrite`; then a fresh copy is
    staged beside it and swapped in, so a failed fetch leaves the old files intact.
    """
    dataset = check_request(name, {})
    root = Path(data_dir) / DATASET_FOLDER
    target = root / dataset.name
    csvs = {table: target / f"{table}.csv" for table in dataset.tables}
    with _lock:
        if not overwrite and all(p.is_file() for p in csvs.values()):
            return csvs
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".{dataset.name}.staging-{uuid.uuid4().hex[:8]}"
        try:
            source = _mirror_folder(dataset, mirror)
            if source is not None:
                _copy_from_mirror(dataset, source, staging, Path(mirror).expanduser())
            else:
                _download_sample(dataset, root / ".downloads", staging, mirror)
            _swap_in(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return csvs


def _mirror_folder(dataset: Dataset, mirror: Path | None) -> Path | None:
    """The mirror's folder for `dataset`: mirror/<name>/ or the mirror itself."""
    if mirror is None:
        return None
    mirror = Path(mirror).expanduser()
    for candidate in (mirror / dataset.name, mirror):
        if all((candidate / f"{t}.csv").is_file() for t in dataset.tables):
            return candidate
    return None


def _copy_from_mirror(dataset: Dataset, source: Path, staging: Path, mirror: Path | None = None) -> None:
    """Copy the tables' CSVs and exactly the audio files they name (hard links when possible).

    Every file is resolved first: a symlink leading out of the mirror, or anything that is
    not a regular file (a FIFO would block the fetch), is refused; what lands in the data
    directory is the real file, never a link."""
    roots = tuple(dict.fromkeys(Path(os.path.realpath(p)) for p in (source, mirror or source)))
    staging.mkdir(parents=True)
    for table in dataset.tables:
        src_csv = _mirror_file(source / f"{table}.csv", roots)
        with open(src_csv, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            rel = (row.get("audio") or "").strip()
            if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise InvalidInput(f"mirror file {src_csv}: audio path {rel!r} must be relative "
                                   "to the CSV's folder")
            src = source / rel
            if not os.path.lexists(src):
                raise NotFound(f"mirror file {src_csv} names {rel}, which is missing from {source}")
            _link_or_copy(_mirror_file(src, roots), staging / rel)
        _link_or_copy(src_csv, staging / f"{table}.csv")
    readme = source / "README.md"
    if readme.is_file():
        _link_or_copy(_mirror_file(readme, roots), staging / "README.md")


def _mirror_file(path: Path, roots: tuple[Path, ...]) -> Path:
    """The real path of a mirror file, refused if it leads out of the mirror or is not a
    regular file."""
    real = Path(os.path.realpath(path))
    if not any(real == r or real.is_relative_to(r) for r in roots):
        raise PermissionDenied(f"mirror file {path} resolves to {real}, outside the dataset mirror "
                               f"({', '.join(str(r) for r in roots)}); it is not copied")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise NotFound(f"mirror file {path} is missing (a dangling link to {real})") from None
    if not stat.S_ISREG(mode):
        raise PermissionDenied(f"mirror file {path} is not a regular file; it is not copied")
    return real


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not permitted
        shutil.copyfile(src, dst)


def _swap_in(staging: Path, target: Path) -> None:
    """Replace `target` by `staging`: two renames, then the old copy is deleted."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- the official distribution --------------------------------------------------------


def _download_sample(dataset: Dataset, cache: Path, staging: Path, mirror: Path | None) -> None:
    archive = dataset.archive
    tarball = cache / archive.file_name
    if not (tarball.is_file() and _sha256(tarball) == archive.sha256):
        _download(archive, tarball, dataset, mirror)
    _extract_sample(tarball, dataset, staging)


def _download(archive: Archive, dest: Path, dataset: Dataset, mirror: Path | None) -> None:
    """Download to dest (via a .part file) with a progress bar; verify the sha256."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in archive.urls:
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                digest = hashlib.sha256()
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=f"downloading {archive.file_name}") as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            if digest.hexdigest() != archive.sha256:
                part.unlink(missing_ok=True)
                errors.append(f"{url}: checksum mismatch (sha256 {digest.hexdigest()}, "
                              f"expected {archive.sha256})")
                continue
            os.replace(part, dest)
            return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            part.unlink(missing_ok=True)
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
    where = f"the mirror {mirror} has no {dataset.name} folder; " if mirror else ""
    raise NotFound(
        f"dataset '{dataset.name}' could not be fetched: {where}downloading the official "
        f"LibriSpeech {archive.file_name} ({archive.size_mb} MB) failed ({'; '.join(errors)}). "
        f"Offline, start the server with --dataset-mirror DIR (or env THANOSQL_DATASET_MIRROR) "
        f"where DIR/{dataset.name}/ holds {', '.join(t + '.csv' for t in dataset.tables)} and their "
        f"audio files, or place {archive.file_name} from openslr.org/12 at {dest}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _extract_sample(tarball: Path, dataset: Dataset, staging: Path) -> None:
    """Pick utterances round-robin over speakers, tables on disjoint speakers; write CSVs.

    LibriSpeech's layout: LibriSpeech/<subset>/<speaker>/<chapter>/<spk>-<chap>-<utt>.flac
    plus one <spk>-<chap>.trans.txt per chapter ("<utt id> UPPER CASE TEXT" lines).
    Two streaming passes over the tarball: random access into a .tar.gz re-inflates it.
    """
    transcripts: dict[str, str] = {}
    flacs: set[str] = set()
    with tarfile.open(tarball, "r|gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".trans.txt"):
                for line in tar.extractfile(member).read().decode("utf-8").splitlines():
                    utt, _, text = line.strip().partition(" ")
                    if utt and text:
                        transcripts[utt] = text.lower()
            elif member.isfile() and member.name.endswith(".flac"):
                flacs.add(Path(member.name).stem)
    by_speaker: dict[str, list[str]] = defaultdict(list)
    for utt in sorted(u for u in transcripts if u in flacs):
        by_speaker[utt.split("-")[0]].append(utt)
    speakers = sorted(by_speaker, key=lambda s: (len(s), s))
    plan = _split(dataset, speakers, by_speaker, tarball.name)
    wanted = {utt for utts in plan.values() for utt in utts}
    staging.mkdir(parents=True)
    (staging / "audio").mkdir()
    with tarfile.open(tarball, "r|gz") as tar:
        for member in tar:
            stem = Path(member.name).stem
            if member.isfile() and member.name.endswith(".flac") and stem in wanted:
                with tar.extractfile(member) as src, open(staging / "audio" / f"{stem}.flac", "wb") as dst:
                    shutil.copyfileobj(src, dst)
    for table, utts in plan.items():
        with open(staging / f"{table}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["audio", "text"])
            writer.writerows((f"audio/{utt}.flac", transcripts[utt]) for utt in utts)


def _split(dataset: Dataset, speakers: list[str], by_speaker: dict[str, list[str]],
           source: str) -> dict[str, list[str]]:
    """{table: utterances}: speakers shared out in proportion to each table's size."""
    needed = sum(dataset.tables.values())
    plan, start = {}, 0
    for i, (table, count) in enumerate(dataset.tables.items()):
        last = i == len(dataset.tables) - 1
        share = len(speakers) - start if last else max(1, round(len(speakers) * count / needed))
        groups = [by_speaker[s] for s in speakers[start:start + share]]
        start += share
        chosen: list[str] = []
        for depth in range(max((len(g) for g in groups), default=0)):
            for group in groups:
                if depth < len(group) and len(chosen) < count:
                    chosen.append(group[depth])
        if len(chosen) < count:
            raise InvalidInput(f"{source} holds too few transcribed utterances for {dataset.name}'s "
                               f"{table} ({len(chosen)} of {count})")
        plan[table] = chosen
    return plan
