"""A leak-free train/val/test split, written as a file list with content hashes.

Every exact or near duplicate group is one unit that goes wholly into one split, so no picture is in
both the training and the evaluation data. Corrupt files are left out.

* Unsplit input (class folders, or a CSV without a split column): units are shared out per class
  (stratified by the unit's majority label), seeded, to the fractions asked for.
* Pre-split input (split folders, or a CSV with a split column): the given splits are kept. A group
  that crosses splits keeps its members in the earliest split (train, then val, then test); the others
  are dropped (``leak_policy="drop"``, the default) or moved to train (``"move"``). A missing val or test
  split is carved out of train the same group-aware, stratified way, as a fraction of train.

The plan lists (relpath, label, split, sha256 of the file bytes) for every image; its ``fingerprint``
(sha256 over the sorted entry lines) identifies exactly this data and this split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from neurovit.data.analysis import ImageFingerprint, scan
from neurovit.data.duplicates import NEAR_THRESHOLD, duplicate_components
from neurovit.data.layout import SPLIT_ORDER, DatasetIndex, discover
from neurovit.errors import DataError

logger = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
FORMAT_VERSION = 1
LeakPolicy = Literal["drop", "move"]


@dataclass(frozen=True)
class SplitEntry:
    """One image of the plan: where it is (relative to the data root), its class, split and checksum."""

    relpath: str
    label: str
    split: str
    sha256: str

    def line(self) -> str:
        return f"{self.relpath}\t{self.label}\t{self.split}\t{self.sha256}\n"


@dataclass
class SplitPlan:
    """The split of one dataset.

    Args:
        entries: every image kept, sorted by relpath.
        classes: sorted class names.
        counts: images per split and class, ``{split: {class: n}}``.
        dropped: images of cross-split groups dropped (pre-split input, ``leak_policy="drop"``).
        moved: images of cross-split groups moved to train (pre-split input, ``leak_policy="move"``).
        excluded_corrupt: files left out because they could not be decoded.
        source: data root and layout the plan was made from (informational: entries are relative).
        params: seed, fractions, leak policy, near-duplicate threshold, and which splits were carved.
        fingerprint: sha256 over the sorted entry lines; computed from ``entries`` when empty.
    """

    entries: list[SplitEntry]
    classes: list[str]
    counts: dict[str, dict[str, int]]
    dropped: int = 0
    moved: int = 0
    excluded_corrupt: int = 0
    source: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = data_fingerprint(self.entries)

    def entries_in(self, split: str) -> list[SplitEntry]:
        return [entry for entry in self.entries if entry.split == split]

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "classes": self.classes,
            "counts": self.counts,
            "dropped": self.dropped,
            "moved": self.moved,
            "excluded_corrupt": self.excluded_corrupt,
            "source": self.source,
            "params": self.params,
            "entries": [asdict(entry) for entry in self.entries],
        }

    def write(self, path: str | Path) -> Path:
        """Write the plan as JSON; a folder gets ``split.json`` inside. Returns the file written."""
        target = Path(path)
        if target.is_dir():
            target = target / SPLIT_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return target


def data_fingerprint(entries: Sequence[SplitEntry]) -> str:
    """sha256 over the sorted entry lines: changes when any file, label or split assignment changes."""
    digest = hashlib.sha256()
    for line in sorted(entry.line() for entry in entries):
        # surrogateescape: a non-UTF-8 file name hashes as its own bytes (UTF-8 names are unchanged).
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def load_split(path: str | Path) -> SplitPlan:
    """Read a plan written by ``SplitPlan.write``; a folder is read as its ``split.json``.

    Raises:
        DataError: the file is missing, not a split file, or its entries no longer match its fingerprint.
    """
    source = Path(path)
    if source.is_dir():
        source = source / SPLIT_FILE
    if not source.is_file():
        raise DataError(f"split file not found: {source}")
    try:
        raw = json.loads(source.read_text())
        entries = [SplitEntry(**entry) for entry in raw["entries"]]
        plan = SplitPlan(
            entries=entries,
            classes=list(raw["classes"]),
            counts={split: dict(counts) for split, counts in raw["counts"].items()},
            dropped=int(raw.get("dropped", 0)),
            moved=int(raw.get("moved", 0)),
            excluded_corrupt=int(raw.get("excluded_corrupt", 0)),
            source=dict(raw.get("source", {})),
            params=dict(raw.get("params", {})),
            fingerprint=str(raw["fingerprint"]),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"not a NeuroViT split file: {source} ({type(error).__name__}: {error})") from error
    if raw.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"split file {source} has format {raw.get('format_version')}, expected {FORMAT_VERSION}"
        )
    if data_fingerprint(entries) != plan.fingerprint:
        raise DataError(f"split file {source} was edited: its entries do not match its fingerprint")
    return plan


def split_dataset(
    data_dir: str | Path,
    *,
    workers: int = 2,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    leak_policy: LeakPolicy = "drop",
    near_threshold: int = NEAR_THRESHOLD,
) -> SplitPlan:
    """Discover, scan and split ``data_dir``; use ``plan_split`` directly to reuse an analysis scan."""
    index = discover(data_dir)
    return plan_split(
        index,
        scan(index, workers=workers),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        leak_policy=leak_policy,
        near_threshold=near_threshold,
    )


def plan_split(
    index: DatasetIndex,
    fingerprints: Sequence[ImageFingerprint],
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    leak_policy: LeakPolicy = "drop",
    near_threshold: int = NEAR_THRESHOLD,
) -> SplitPlan:
    """Split the readable images of ``index`` (fingerprints from ``scan``) with duplicate groups kept whole.

    Raises:
        DataError: bad fractions or policy, pre-split input without train, or a split that would end
            without images of some class (too few images or groups).
    """
    if leak_policy not in ("drop", "move"):
        raise DataError(f"leak_policy must be 'drop' or 'move', got {leak_policy!r}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            f"need 0 <= val, test fractions and val + test < 1, got {val_fraction}, {test_fraction}"
        )
    readable = [fingerprint for fingerprint in fingerprints if fingerprint.readable]
    excluded = len(fingerprints) - len(readable)
    if not readable:
        raise DataError(f"no readable images under {index.root} ({excluded} files could not be decoded)")

    units = _units(readable, near_threshold)
    rng = np.random.default_rng(seed)
    pre_split = all(fingerprint.split is not None for fingerprint in readable)
    dropped = moved = 0
    carved: list[str] = []
    if pre_split:
        assignment, dropped, moved = _resolve_leaks(readable, units, leak_policy)
        given = {split for split in assignment if split is not None}
        if "train" not in given:
            raise DataError(f"pre-split data needs a train split; found {', '.join(sorted(given))}")
        carved = [split for split in ("val", "test") if split not in given]
        if carved:
            fractions = {"val": val_fraction, "test": test_fraction}
            # Only the members still in train: a dropped member of a leaking group stays dropped.
            in_train = (tuple(member for member in unit if assignment[member] == "train") for unit in units)
            train_units = [unit for unit in in_train if unit]
            wanted = {split: fractions[split] for split in carved if fractions[split] > 0}
            for unit, split in _share_out(train_units, readable, wanted, rng).items():
                for member in unit:
                    assignment[member] = split
    else:
        assignment = [None] * len(readable)
        wanted = {
            split: fraction
            for split, fraction in (("val", val_fraction), ("test", test_fraction))
            if fraction
        }
        for unit, split in _share_out(units, readable, wanted, rng).items():
            for member in unit:
                assignment[member] = split

    entries = sorted(
        (
            SplitEntry(fingerprint.relpath, fingerprint.label, split, str(fingerprint.file_sha256))
            for fingerprint, split in zip(readable, assignment, strict=True)
            if split is not None
        ),
        key=lambda entry: entry.relpath,
    )
    counts = _counts(entries, index.classes)
    _check_every_class_present(counts, index.classes)
    plan = SplitPlan(
        entries=entries,
        classes=list(index.classes),
        counts=counts,
        dropped=dropped,
        moved=moved,
        excluded_corrupt=excluded,
        source={"root": str(index.root), "layout": index.layout},
        params={
            "seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "leak_policy": leak_policy,
            "near_threshold": near_threshold,
            "kept_given_splits": pre_split,
            "carved_from_train": carved,
        },
    )
    logger.info(
        "split %s: %s; %d dropped, %d moved, %d corrupt excluded",
        plan.fingerprint[:12],
        ", ".join(f"{split} {sum(by_class.values())}" for split, by_class in counts.items()),
        dropped,
        moved,
        excluded,
    )
    return plan


# --- internals ----------------------------------------------------------------------------------------


def _units(readable: Sequence[ImageFingerprint], near_threshold: int) -> list[tuple[int, ...]]:
    """Duplicate groups (and singletons) as tuples of indices into ``readable``, in a stable order."""
    components = duplicate_components(readable, threshold=near_threshold)
    members: dict[int, list[int]] = defaultdict(list)
    for index, component in enumerate(components):
        members[int(component)].append(index)
    # Ordered by relpath, within and across units, so the seeded shuffle does not depend on input order.
    units = (tuple(sorted(group, key=lambda index: readable[index].relpath)) for group in members.values())
    return sorted(units, key=lambda unit: readable[unit[0]].relpath)


def _resolve_leaks(
    readable: Sequence[ImageFingerprint], units: list[tuple[int, ...]], policy: LeakPolicy
) -> tuple[list[str | None], int, int]:
    """The given splits with each cross-split group brought into one; returns (assignment, dropped, moved)."""
    assignment: list[str | None] = [fingerprint.split for fingerprint in readable]
    dropped = moved = 0
    rank = {split: position for position, split in enumerate(SPLIT_ORDER)}
    for unit in units:
        splits = {readable[member].split for member in unit}
        if len(splits) < 2:
            continue
        keep = "train" if policy == "move" else min(splits, key=lambda split: rank[str(split)])
        for member in unit:
            if assignment[member] == keep:
                continue
            if policy == "move":
                assignment[member] = keep
                moved += 1
            else:
                assignment[member] = None
                dropped += 1
    return assignment, dropped, moved


def _share_out(
    units: Sequence[tuple[int, ...]],
    readable: Sequence[ImageFingerprint],
    fractions: dict[str, float],
    rng: np.random.Generator,
) -> dict[tuple[int, ...], str]:
    """Assign whole units to train and the splits in ``fractions``, per class, close to the fractions.

    Each unit counts for its majority label. Within a class, units are shuffled (seeded) and then taken
    largest first, each to the split furthest below its target; every split first gets one unit, so a
    small class still reaches every split when it has enough units.
    """
    by_class: dict[str, list[tuple[int, ...]]] = defaultdict(list)
    for unit in units:
        labels = Counter(readable[member].label for member in unit)
        majority = min(labels, key=lambda label: (-labels[label], label))
        by_class[majority].append(unit)

    splits = ["train", *[split for split in SPLIT_ORDER if split in fractions]]
    assignment: dict[tuple[int, ...], str] = {}
    for label in sorted(by_class):
        class_units = list(by_class[label])
        order = rng.permutation(len(class_units))
        shuffled = [class_units[position] for position in order]
        if len(shuffled) < len(splits):
            raise DataError(
                f"class {label} has {len(shuffled)} image group(s), too few to fill {', '.join(splits)}"
            )
        total = sum(len(unit) for unit in shuffled)
        targets = {split: fractions.get(split, 0.0) * total for split in splits}
        targets["train"] = total - sum(targets[split] for split in splits if split != "train")
        filled = dict.fromkeys(splits, 0)
        # Smallest units seed the evaluation splits; the rest go largest first (stable after the shuffle).
        by_size = sorted(shuffled, key=len)
        for split in splits[1:]:
            unit = by_size.pop(0)
            assignment[unit] = split
            filled[split] += len(unit)
        for unit in sorted(by_size, key=len, reverse=True):
            split = max(splits, key=lambda name: targets[name] - filled[name])
            assignment[unit] = split
            filled[split] += len(unit)
    return assignment


def _counts(entries: Sequence[SplitEntry], classes: Sequence[str]) -> dict[str, dict[str, int]]:
    tally = Counter((entry.split, entry.label) for entry in entries)
    present = {entry.split for entry in entries}
    return {
        split: {label: tally[(split, label)] for label in classes}
        for split in SPLIT_ORDER
        if split in present
    }


def _check_every_class_present(counts: dict[str, dict[str, int]], classes: Sequence[str]) -> None:
    if not counts:
        raise DataError("the split holds no images")
    for split, by_class in counts.items():
        missing = [label for label in classes if by_class.get(label, 0) == 0]
        if missing:
            raise DataError(
                f"split {split} would have no images of class {', '.join(missing)}: too few images "
                "(or all of them are duplicates of images in another split)"
            )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def select_eval_images(
    data_dir: Path, split_path: Path | None, part: str = "test"
) -> tuple[list[tuple[Path, str, str]], str]:
    """``[(path, relpath, label)]`` to evaluate and a line saying which: the split's ``part`` images (its
    test images unless asked for ``val``) when the version's split file is there and the data still matches
    it, else every image of ``data_dir`` (eval-explain and ood-eval)."""
    if part not in ("train", "val", "test"):
        raise ValueError(f"part must be train, val or test, got {part!r}")
    root = data_dir.resolve()
    if split_path is not None and split_path.is_file():
        plan = load_split(split_path)
        wanted = [entry for entry in plan.entries if entry.split == part]
        if not wanted:
            logger.warning("the version's split has no %s part: evaluating every image of %s", part, root)
        else:
            changed = [
                e.relpath
                for e in wanted
                if not (root / e.relpath).is_file() or _sha256(root / e.relpath) != e.sha256
            ]
            if len(changed) == len(wanted) and not any((root / e.relpath).is_file() for e in wanted):
                index = discover(root)  # another folder altogether (real masked slices): all of it
                chosen = [(record.path, record.relpath, record.label) for record in index.records]
                return chosen, f"every image of {root} ({len(chosen)} images; not the version's data)"
            if not changed:
                chosen = [(root / e.relpath, e.relpath, e.label) for e in wanted]
                return chosen, f"{part} split of the version's split.json ({len(chosen)} images)"
            logger.warning(
                "%d of the %d %s images of the version's split are missing or changed in %s (e.g. %s): "
                "evaluating every image instead",
                len(changed),
                len(wanted),
                part,
                root,
                changed[0],
            )
    index = discover(root)
    chosen = [(record.path, record.relpath, record.label) for record in index.records]
    return chosen, f"every image of {root} ({len(chosen)} images; no usable {part} split)"


__all__ = [
    "FORMAT_VERSION",
    "SPLIT_FILE",
    "LeakPolicy",
    "SplitEntry",
    "SplitPlan",
    "data_fingerprint",
    "load_split",
    "plan_split",
    "select_eval_images",
    "split_dataset",
]
