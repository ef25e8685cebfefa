"""Find the images and their labels in the dataset layouts people actually ship.

Three layouts are recognised:

* ``class-folders``: ``<root>/<class>/<files>`` (files may sit in sub-folders of a class folder);
* ``pre-split``: ``<root>/<split>/<class>/<files>``, split folders named ``train``/``training``,
  ``val``/``valid``/``validation`` or ``test``/``testing`` in any case (the Kaggle Brain Tumor MRI
  collection ships ``Training/`` and ``Testing/``);
* ``csv``: a ``.csv`` file (or a folder holding exactly one) with columns ``path,label`` and optionally
  ``split``; paths are relative to the CSV's folder.

Nothing is decoded here: a non-image file is a candidate like any other, and the analysis lists it as
corrupt when it fails to decode. A folder or file that is a symbolic link leading out of the data root (a
class folder linked to /etc) is refused: what trains and gets published must be what the root holds.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from neurovit.errors import DataError

logger = logging.getLogger(__name__)

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
SPLIT_ORDER = ("train", "val", "test")

# Lesion masks the demo data keeps beside each image; they are not images to classify.
MASK_SUFFIX = ".mask.png"

# "no tumour" is spelt a dozen ways across public collections ("no_tumor", "No Tumour", ...); all of them
# are one class, read as this name.
NO_TUMOUR_CLASS = "notumor"
_NO_TUMOUR = re.compile(r"^no[\s_\-]*tumou?r$")

_EXPECTED = (
    "expected <root>/<class>/<image>, <root>/<split>/<class>/<image> (split = train|val|test), "
    "or a CSV file with columns path,label[,split]"
)


@dataclass(frozen=True)
class ImageRecord:
    """One candidate image file and its label.

    Args:
        path: absolute path of the file.
        relpath: path relative to the data root, with forward slashes (stable across machines).
        label: canonical class name (lower case).
        split: canonical split ("train", "val", "test"), or None when the layout has no splits.
    """

    path: Path
    relpath: str
    label: str
    split: str | None = None


@dataclass
class DatasetIndex:
    """Every candidate image of a dataset, sorted by relpath.

    Args:
        root: absolute data root; every ``relpath`` is relative to it.
        layout: "class-folders", "pre-split" or "csv".
        classes: sorted canonical class names.
        records: the candidate files.
    """

    root: Path
    layout: str
    classes: list[str]
    records: list[ImageRecord] = field(default_factory=list)

    @property
    def splits(self) -> list[str]:
        """The splits the layout defines, in train/val/test order; empty when it defines none."""
        present = {record.split for record in self.records if record.split is not None}
        return [name for name in SPLIT_ORDER if name in present]


def canonical_class(name: str) -> str:
    """Folder or CSV class name -> canonical label (lower case, stripped, 'no tumour' spellings unified)."""
    label = name.strip().lower()
    return NO_TUMOUR_CLASS if _NO_TUMOUR.match(label) else label


def canonical_split(name: str) -> str | None:
    """Split folder or CSV value -> "train", "val" or "test"; None when it names no split."""
    return SPLIT_NAMES.get(name.strip().lower())


def discover(data_dir: str | Path) -> DatasetIndex:
    """Recognise the layout of ``data_dir`` and list its candidate images with labels.

    Raises:
        DataError: the path is missing or empty, the layout is not recognised, a class folder holds
            no files, there is only one class, split folders disagree on classes, or a CSV is invalid.
    """
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataError(f"data path does not exist: {path}")
    path = path.resolve()
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"data path is a file, not a folder or a .csv: {path}; {_EXPECTED}")
        index = _discover_csv(path)
    elif not path.is_dir():
        raise DataError(f"data path is not a folder: {path}")
    else:
        index = _discover_folder(path)
    _check_classes(index)
    logger.info(
        "found %d candidate files in %d classes (layout %s, splits %s)",
        len(index.records),
        len(index.classes),
        index.layout,
        index.splits or "none",
    )
    return index


# --- folders ------------------------------------------------------------------------------------------


def _discover_folder(root: Path) -> DatasetIndex:
    entries = [entry for entry in sorted(root.iterdir()) if not _is_hidden(entry.name)]
    if not entries:
        raise DataError(f"data folder is empty: {root}; {_EXPECTED}")
    csv_files = [entry for entry in entries if entry.is_file() and entry.suffix.lower() == ".csv"]
    labelled_csvs = [entry for entry in csv_files if _has_csv_columns(entry)]
    if len(labelled_csvs) == 1:
        return _discover_csv(labelled_csvs[0])
    if len(labelled_csvs) > 1:
        names = ", ".join(entry.name for entry in labelled_csvs)
        raise DataError(f"{root} holds several CSV files with path,label columns ({names}); pass one of them")

    folders = [entry for entry in entries if entry.is_dir()]
    if not folders and len(csv_files) == 1:
        return _discover_csv(csv_files[0])  # says which columns the CSV lacks
    if not folders:
        raise DataError(f"{root} holds {len(entries)} files but no class folders; {_EXPECTED}")
    split_of = {folder: canonical_split(folder.name) for folder in folders}
    split_folders = [folder for folder in folders if split_of[folder] is not None]
    if not split_folders:
        return _discover_class_folders(root, folders)
    if len(split_folders) != len(folders):
        others = ", ".join(folder.name for folder in folders if split_of[folder] is None)
        raise DataError(
            f"{root} mixes split folders ({', '.join(f.name for f in split_folders)}) with other folders "
            f"({others}); {_EXPECTED}"
        )
    return _discover_pre_split(root, split_folders, split_of)


def _discover_class_folders(root: Path, folders: list[Path]) -> DatasetIndex:
    records = _records_of_class_folders(root, folders, split=None)
    _warn_loose_files(root)
    return _index(root, "class-folders", records)


def _discover_pre_split(
    root: Path, split_folders: list[Path], split_of: dict[Path, str | None]
) -> DatasetIndex:
    seen: dict[str, Path] = {}
    records: list[ImageRecord] = []
    classes_per_split: dict[str, set[str]] = {}
    for folder in split_folders:
        split = split_of[folder]
        assert split is not None
        if split in seen:
            raise DataError(
                f"two folders name the same split '{split}': {seen[split].name} and {folder.name}"
            )
        seen[split] = folder
        class_folders = [
            entry for entry in sorted(folder.iterdir()) if entry.is_dir() and not _is_hidden(entry.name)
        ]
        if not class_folders:
            raise DataError(f"split folder {folder.name}/ holds no class folders; {_EXPECTED}")
        _warn_loose_files(folder)
        split_records = _records_of_class_folders(root, class_folders, split=split)
        classes_per_split[split] = {record.label for record in split_records}
        records.extend(split_records)
    _check_splits_agree(classes_per_split)
    return _index(root, "pre-split", records)


def _records_of_class_folders(
    root: Path, class_folders: list[Path], *, split: str | None
) -> list[ImageRecord]:
    records = []
    for folder in class_folders:
        _check_inside(root, folder)
        label = canonical_class(folder.name)
        files = _candidate_files(folder)
        if not files:
            raise DataError(f"class folder {folder.relative_to(root).as_posix()}/ holds no files")
        for file in files:
            _check_inside(root, file)
        records.extend(ImageRecord(file, file.relative_to(root).as_posix(), label, split) for file in files)
    return records


def _check_inside(root: Path, path: Path) -> None:
    """Refuse a symbolic link (or a path through one) that leads out of the data root."""
    target = path.resolve()
    if not target.is_relative_to(root):
        raise DataError(
            f"{path.relative_to(root).as_posix()} under {root} leads to {target}, outside the data folder "
            "(a symbolic link): copy the images into the data folder, or pass the folder they are in"
        )


def _candidate_files(folder: Path) -> list[Path]:
    """Every regular file below ``folder``, except hidden files or folders and lesion masks."""
    files = []
    for file in folder.rglob("*"):
        relative_parts = file.relative_to(folder).parts
        if any(_is_hidden(part) for part in relative_parts):
            continue
        if file.name.lower().endswith(MASK_SUFFIX) or not file.is_file():
            continue
        files.append(file)
    return sorted(files)


def _warn_loose_files(folder: Path) -> None:
    loose = [entry for entry in folder.iterdir() if entry.is_file() and not _is_hidden(entry.name)]
    if loose:
        logger.warning("ignoring %d files outside the class folders of %s", len(loose), folder.name or folder)


# --- CSV ----------------------------------------------------------------------------------------------


def _read_csv_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    return [column.strip().lower() for column in header]


def _has_csv_columns(path: Path) -> bool:
    try:
        header = _read_csv_header(path)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return {"path", "label"} <= set(header)


def _discover_csv(csv_path: Path) -> DatasetIndex:
    root = csv_path.parent
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise DataError(f"CSV file is empty: {csv_path}")
            columns = {name.strip().lower(): name for name in reader.fieldnames if name is not None}
            missing = {"path", "label"} - set(columns)
            if missing:
                raise DataError(
                    f"CSV {csv_path.name} lacks column(s) {', '.join(sorted(missing))}: "
                    f"found {', '.join(reader.fieldnames)}; expected path,label[,split]"
                )
            rows = [
                (
                    (row.get(columns["path"]) or "").strip(),
                    (row.get(columns["label"]) or "").strip(),
                    (row.get(columns["split"]) or "").strip() if "split" in columns else "",
                )
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read CSV {csv_path}: {error}") from error
    if not rows:
        raise DataError(f"CSV {csv_path.name} has a header but no rows")

    records, missing_files, seen = [], [], set()
    for line, (raw_path, raw_label, raw_split) in enumerate(rows, start=2):
        if not raw_path or not raw_label:
            raise DataError(f"CSV {csv_path.name} line {line}: empty path or label")
        split = None
        if raw_split:
            split = canonical_split(raw_split)
            if split is None:
                raise DataError(
                    f"CSV {csv_path.name} line {line}: unknown split '{raw_split}' "
                    "(expected train, val or test)"
                )
        file = (root / raw_path).resolve()
        if not file.is_relative_to(root):
            raise DataError(f"CSV {csv_path.name} line {line}: path {raw_path} is outside the CSV's folder")
        relpath = file.relative_to(root).as_posix()
        if relpath in seen:
            raise DataError(f"CSV {csv_path.name} line {line}: {relpath} is listed twice")
        seen.add(relpath)
        if not file.is_file():
            missing_files.append(relpath)
            continue
        records.append(ImageRecord(file, relpath, canonical_class(raw_label), split))
    if missing_files:
        shown = ", ".join(missing_files[:5]) + (" ..." if len(missing_files) > 5 else "")
        raise DataError(f"CSV {csv_path.name} names {len(missing_files)} missing file(s): {shown}")

    with_split = sum(record.split is not None for record in records)
    if 0 < with_split < len(records):
        raise DataError(
            f"CSV {csv_path.name}: {len(records) - with_split} rows have no split while others do; "
            "give a split for every row or for none"
        )
    if with_split:
        per_split: dict[str, set[str]] = defaultdict(set)
        for record in records:
            per_split[str(record.split)].add(record.label)
        _check_splits_agree(per_split)
    return _index(root, "csv", records)


# --- checks -------------------------------------------------------------------------------------------


def _index(root: Path, layout: str, records: list[ImageRecord]) -> DatasetIndex:
    records = sorted(records, key=lambda record: record.relpath)
    return DatasetIndex(root, layout, sorted({record.label for record in records}), records)


def _check_classes(index: DatasetIndex) -> None:
    if not index.records:
        raise DataError(f"no candidate image files under {index.root}")
    if len(index.classes) < 2:
        raise DataError(
            f"only one class found ({', '.join(index.classes)}) under {index.root}: "
            f"a classifier needs at least two; {_EXPECTED}"
        )


def _check_splits_agree(classes_per_split: dict[str, set[str]]) -> None:
    all_classes = set().union(*classes_per_split.values())
    differing = {
        split: sorted(all_classes - classes)
        for split, classes in classes_per_split.items()
        if classes != all_classes
    }
    if differing:
        details = "; ".join(
            f"{split} lacks {', '.join(missing)}" for split, missing in sorted(differing.items())
        )
        raise DataError(f"splits have different classes: {details}")


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__MACOSX")


__all__ = [
    "MASK_SUFFIX",
    "NO_TUMOUR_CLASS",
    "SPLIT_NAMES",
    "SPLIT_ORDER",
    "DatasetIndex",
    "ImageRecord",
    "canonical_class",
    "canonical_split",
    "discover",
]
