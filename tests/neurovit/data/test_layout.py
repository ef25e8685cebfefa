"""Layout discovery: class folders, pre-split folders (any case), CSV, and a clear error for each bad case."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from neurovit.data.layout import canonical_class, canonical_split, discover
from neurovit.errors import DataError


def touch_image(path: Path) -> Path:
    """Layout discovery never decodes, so any small image file will do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8)).save(path)
    return path


# --- class folders ------------------------------------------------------------------------------------


def test_class_folders(tmp_path):
    touch_image(tmp_path / "glioma" / "a.png")
    touch_image(tmp_path / "glioma" / "deeper" / "b.png")  # sub-folders of a class folder count
    touch_image(tmp_path / "NoTumor" / "c.png")
    (tmp_path / "NoTumor" / "notes.txt").write_text("not an image")  # found now, reported corrupt later
    touch_image(tmp_path / "glioma" / "a.mask.png")  # lesion mask beside its image
    touch_image(tmp_path / "glioma" / ".hidden.png")
    touch_image(tmp_path / "glioma" / ".ipynb_checkpoints" / "x.png")
    (tmp_path / "README.md").write_text("loose file in the root is ignored")

    index = discover(tmp_path)

    assert index.layout == "class-folders"
    assert index.root == tmp_path.resolve()
    assert index.classes == ["glioma", "notumor"]
    assert index.splits == []
    assert [(r.relpath, r.label, r.split) for r in index.records] == [
        ("NoTumor/c.png", "notumor", None),
        ("NoTumor/notes.txt", "notumor", None),
        ("glioma/a.png", "glioma", None),
        ("glioma/deeper/b.png", "glioma", None),
    ]
    assert all(record.path.is_absolute() and record.path.is_file() for record in index.records)


@pytest.mark.parametrize(
    "name", ["no_tumor", "No Tumour", "notumour", "no-tumor", "NO_TUMOUR", " notumor ", "No-Tumour"]
)
def test_no_tumour_spellings_are_one_class(name):
    assert canonical_class(name) == "notumor"


def test_other_class_names_are_lower_cased_and_stripped():
    assert canonical_class(" Glioma ") == "glioma"
    assert canonical_class("tumor") == "tumor"  # not mistaken for "no tumour"


def test_same_class_in_two_spellings_is_merged(tmp_path):
    touch_image(tmp_path / "no_tumor" / "a.png")
    touch_image(tmp_path / "NoTumor" / "b.png")
    touch_image(tmp_path / "glioma" / "c.png")
    index = discover(tmp_path)
    assert index.classes == ["glioma", "notumor"]
    assert sum(record.label == "notumor" for record in index.records) == 2


# --- pre-split ----------------------------------------------------------------------------------------


def test_kaggle_training_testing_layout(tmp_path):
    for split in ("Training", "Testing"):
        for label in ("glioma", "meningioma", "notumor", "pituitary"):
            touch_image(tmp_path / split / label / f"{split[:2]}_{label}.jpg")
    index = discover(tmp_path)
    assert index.layout == "pre-split"
    assert index.splits == ["train", "test"]
    assert index.classes == ["glioma", "meningioma", "notumor", "pituitary"]
    assert {(r.split, r.label) for r in index.records if r.relpath.startswith("Testing/")} == {
        ("test", label) for label in index.classes
    }


@pytest.mark.parametrize(
    ("folder", "split"),
    [
        ("train", "train"),
        ("TRAINING", "train"),
        ("val", "val"),
        ("Valid", "val"),
        ("validation", "val"),
        ("test", "test"),
        ("Testing", "test"),
    ],
)
def test_split_names(folder, split):
    assert canonical_split(folder) == split


def test_train_validation_layout_with_class_spellings(tmp_path):
    touch_image(tmp_path / "train" / "No_Tumor" / "a.png")
    touch_image(tmp_path / "train" / "Glioma" / "b.png")
    touch_image(tmp_path / "validation" / "notumor" / "c.png")
    touch_image(tmp_path / "validation" / "glioma" / "d.png")
    index = discover(tmp_path)
    assert index.splits == ["train", "val"]
    assert index.classes == ["glioma", "notumor"]


def test_split_folders_with_different_classes(tmp_path):
    touch_image(tmp_path / "train" / "glioma" / "a.png")
    touch_image(tmp_path / "train" / "notumor" / "b.png")
    touch_image(tmp_path / "train" / "pituitary" / "c.png")
    touch_image(tmp_path / "test" / "glioma" / "d.png")
    touch_image(tmp_path / "test" / "notumor" / "e.png")
    with pytest.raises(DataError, match="splits have different classes: test lacks pituitary"):
        discover(tmp_path)


def test_two_folders_for_one_split(tmp_path):
    for split in ("train", "Training"):
        touch_image(tmp_path / split / "glioma" / "a.png")
        touch_image(tmp_path / split / "notumor" / "b.png")
    with pytest.raises(DataError, match="two folders name the same split 'train'"):
        discover(tmp_path)


def test_split_folders_mixed_with_other_folders(tmp_path):
    touch_image(tmp_path / "train" / "glioma" / "a.png")
    touch_image(tmp_path / "extra" / "b.png")
    with pytest.raises(DataError, match="mixes split folders"):
        discover(tmp_path)


def test_split_folder_without_class_folders(tmp_path):
    touch_image(tmp_path / "train" / "a.png")
    with pytest.raises(DataError, match="holds no class folders"):
        discover(tmp_path)


# --- CSV ----------------------------------------------------------------------------------------------


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_csv_file(tmp_path):
    touch_image(tmp_path / "images" / "1.png")
    touch_image(tmp_path / "images" / "2.png")
    csv_path = write_csv(tmp_path / "labels.csv", "path,label\nimages/1.png,Glioma\nimages/2.png,no tumour\n")
    index = discover(csv_path)
    assert index.layout == "csv"
    assert index.root == tmp_path.resolve()
    assert [(r.relpath, r.label, r.split) for r in index.records] == [
        ("images/1.png", "glioma", None),
        ("images/2.png", "notumor", None),
    ]


def test_folder_with_one_csv_and_split_column(tmp_path):
    for number in range(4):
        touch_image(tmp_path / "img" / f"{number}.png")
    write_csv(
        tmp_path / "meta.csv",
        "\ufeffPath,Label,Split\nimg/0.png,glioma,Training\nimg/1.png,notumor,train\n"
        "img/2.png,glioma,TEST\nimg/3.png,notumor,testing\n",
    )
    index = discover(tmp_path)
    assert index.layout == "csv"
    assert index.splits == ["train", "test"]
    assert [r.split for r in index.records] == ["train", "train", "test", "test"]


def test_csv_without_needed_columns(tmp_path):
    csv_path = write_csv(tmp_path / "labels.csv", "file,class\na.png,glioma\n")
    with pytest.raises(DataError, match="lacks column\\(s\\) label, path"):
        discover(csv_path)


def test_folder_whose_only_csv_lacks_columns(tmp_path):
    touch_image(tmp_path / "a.png")
    write_csv(tmp_path / "labels.csv", "filename,diagnosis\na.png,glioma\n")
    with pytest.raises(DataError, match="lacks column\\(s\\) label, path: found filename, diagnosis"):
        discover(tmp_path)


def test_csv_naming_missing_files(tmp_path):
    touch_image(tmp_path / "a.png")
    csv_path = write_csv(tmp_path / "labels.csv", "path,label\na.png,glioma\nb.png,notumor\nc.png,notumor\n")
    with pytest.raises(DataError, match="names 2 missing file\\(s\\): b.png, c.png"):
        discover(csv_path)


def test_csv_with_unknown_split(tmp_path):
    touch_image(tmp_path / "a.png")
    csv_path = write_csv(tmp_path / "labels.csv", "path,label,split\na.png,glioma,holdout\n")
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        discover(csv_path)


def test_csv_with_split_on_some_rows_only(tmp_path):
    touch_image(tmp_path / "a.png")
    touch_image(tmp_path / "b.png")
    csv_path = write_csv(tmp_path / "labels.csv", "path,label,split\na.png,glioma,train\nb.png,notumor,\n")
    with pytest.raises(DataError, match="give a split for every row or for none"):
        discover(csv_path)


def test_csv_path_outside_its_folder(tmp_path):
    touch_image(tmp_path / "outside.png")
    csv_path = write_csv(tmp_path / "sub" / "labels.csv", "path,label\n../outside.png,glioma\n")
    with pytest.raises(DataError, match="outside the CSV's folder"):
        discover(csv_path)


# --- errors -------------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "absent")


def test_path_is_a_file_that_is_not_csv(tmp_path):
    image = touch_image(tmp_path / "a.png")
    with pytest.raises(DataError, match="is a file, not a folder or a .csv"):
        discover(image)


def test_empty_folder(tmp_path):
    (tmp_path / ".DS_Store").write_text("")
    with pytest.raises(DataError, match="data folder is empty"):
        discover(tmp_path)


def test_class_folder_with_no_files(tmp_path):
    touch_image(tmp_path / "glioma" / "a.png")
    touch_image(tmp_path / "notumor" / "b.mask.png")  # a mask alone is not an image to classify
    with pytest.raises(DataError, match="class folder notumor/ holds no files"):
        discover(tmp_path)


def test_only_one_class(tmp_path):
    touch_image(tmp_path / "glioma" / "a.png")
    with pytest.raises(DataError, match="only one class found \\(glioma\\)"):
        discover(tmp_path)


def test_unknown_layout_says_what_was_found_and_expected(tmp_path):
    touch_image(tmp_path / "a.png")
    touch_image(tmp_path / "b.png")
    with pytest.raises(
        DataError, match="holds 2 files but no class folders; expected <root>/<class>/<image>"
    ):
        discover(tmp_path)


# --- symbolic links -----------------------------------------------------------------------------------


def test_a_class_folder_linked_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "data"
    touch_image(root / "glioma" / "a.png")
    touch_image(tmp_path / "elsewhere" / "b.png")
    (root / "notumor").symlink_to(tmp_path / "elsewhere")  # as a class folder linked to /etc would be
    with pytest.raises(DataError, match="notumor under .* leads to .*elsewhere, outside the data folder"):
        discover(root)


def test_an_image_linked_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "data"
    touch_image(root / "glioma" / "a.png")
    touch_image(root / "notumor" / "b.png")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the model")
    (root / "notumor" / "c.png").symlink_to(secret)
    with pytest.raises(DataError, match="notumor/c.png under .* outside the data folder"):
        discover(root)


def test_links_that_stay_inside_the_root_are_followed(tmp_path):
    root = tmp_path / "data"
    touch_image(root / "glioma" / "a.png")
    touch_image(root / "shared" / "b.png")
    (root / "notumor").symlink_to(root / "shared")
    found = discover(root)
    assert {record.label for record in found.records} == {"glioma", "notumor", "shared"}
