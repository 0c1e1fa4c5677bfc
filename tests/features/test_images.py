"""Image sources (sklearn digits, Hugging Face datasets, class folders) and their preparation: stable ids, decoded
images, and the bad input a user brings (unreadable files, an empty class folder, one class)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from features.core.cross_modal import prepare_images
from features.core.prepare import PrepareError, SplitConfig
from features.sources.images import DIGITS_SIDE, ImageSourceError, decode, load_images, png

SPLIT = SplitConfig(test_size=0.2, seed=42, event_timestamp="2025-01-01T00:00:00Z")


def picture(seed: int, side: int = 12) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8))


def class_folder(root: Path, classes: dict[str, int], suffix: str = ".png") -> Path:
    """Distinct pictures, the same in every process: preparation keeps one of identical images, and hash() of a
    string changes with PYTHONHASHSEED."""
    seed = 0
    for label, count in classes.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            picture(seed).save(root / label / f"{i}{suffix}")
            seed += 1
    return root


def test_digits_are_the_bundled_ten_classes_upscaled_with_stable_content_ids() -> None:
    rows = load_images("sklearn:digits")
    assert len(rows) == 1797 and sorted(rows["raw_label"].unique()) == list(range(10))
    first = decode(rows["image"].iloc[0])
    assert first.size == (DIGITS_SIDE, DIGITS_SIDE) and first.mode == "RGB"
    assert rows["image"].iloc[0].startswith(b"\x89PNG")
    assert rows["image_id"].iloc[0] == hashlib.sha256(rows["image"].iloc[0]).hexdigest()[:16]
    assert rows["image_id"].tolist() == load_images("sklearn:digits")["image_id"].tolist()


def test_a_class_folder_labels_each_image_by_its_subfolder(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "pets", {"cat": 3, "dog": 4})
    (root / "README.txt").write_text("not read: files beside the class folders belong to no class")
    (root / "cat" / ".DS_Store").write_bytes(b"\x00hidden")
    rows = load_images(f"folder:{root}")
    assert rows["raw_label"].value_counts().to_dict() == {"dog": 4, "cat": 3}
    assert all(decode(data).size == (12, 12) for data in rows["image"])


def test_unreadable_files_are_all_counted_the_first_few_named_with_the_fix(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "pets", {"cat": 3, "dog": 3})
    for i in range(7):
        (root / "dog" / f"broken{i}.jpg").write_bytes(b"not an image " * i)
    with pytest.raises(ImageSourceError) as caught:
        load_images(f"folder:{root}")
    message = str(caught.value)
    assert f"folder:{root}: 7 of 13 images cannot be read as images" in message
    assert str(root / "dog" / "broken0.jpg") in message and "and 2 more" in message
    assert "convert them to an image format (PNG, JPEG) or remove them" in message


def test_an_empty_class_folder_is_refused_by_name(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
    (root / "bird").mkdir()
    with pytest.raises(ImageSourceError, match="class folder 'bird' holds no image file: add its images or remove"):
        load_images(f"folder:{root}")


def test_a_hugging_face_dataset_reads_the_named_fields_without_decoding(tmp_path: Path) -> None:
    import datasets

    images = [picture(i) for i in range(6)]
    ds = datasets.Dataset.from_dict({"img": images, "fine_label": [0, 1, 2] * 2, "coarse_label": [0] * 6},
                                    features=datasets.Features({"img": datasets.Image(),
                                                                "fine_label": datasets.Value("int64"),
                                                                "coarse_label": datasets.Value("int64")}))
    ds.save_to_disk(tmp_path / "cifar")
    rows = load_images(f"hf:{tmp_path / 'cifar'}", image_field="img", label_field="fine_label")
    assert rows["raw_label"].tolist() == [0, 1, 2] * 2
    assert np.array_equal(np.asarray(decode(rows["image"].iloc[4])), np.asarray(images[4]))
    with pytest.raises(ImageSourceError, match=r"has no field \['image'\]; it has \['img', 'fine_label'"):
        load_images(f"hf:{tmp_path / 'cifar'}", label_field="fine_label")


def test_prepared_images_keep_their_bytes_sampled_and_split_like_texts() -> None:
    rows = load_images("sklearn:digits")
    frame = prepare_images(rows, "digits", SPLIT, max_rows=200)
    assert 190 <= len(frame) <= 200 and set(frame["label"]) == set(range(10))  # each class its share, rounded down
    assert frame.groupby("label")["split"].apply(lambda s: (s == "test").sum()).min() >= 3
    by_id = rows.drop_duplicates("image_id").set_index("image_id")["image"]
    assert all(by_id[i] == data for i, data in zip(frame["text"], frame["image"], strict=True))
    assert frame["text_id"].str.startswith("digits-").all()
    again = prepare_images(rows.sample(frac=1, random_state=1), "digits", SPLIT, max_rows=200)
    assert again["text_id"].tolist() == frame["text_id"].tolist()  # row order does not move the sample


def test_a_dataset_with_one_class_is_refused_by_name(tmp_path: Path) -> None:
    rows = load_images(f"folder:{class_folder(tmp_path / 'pets', {'cat': 4})}")
    with pytest.raises(PrepareError, match=r"dataset 'pets' needs images of two or more classes; its source holds "
                                           r"'cat': 4 images"):
        prepare_images(rows, "pets", SPLIT)
    with pytest.raises(PrepareError, match="dataset 'pets' has one class only"):
        prepare_images(rows, "pets", SPLIT, labels=["cat", "dog"])


def test_identical_images_under_two_labels_are_dropped() -> None:
    same = png(picture(0))
    others = [f"i{n}" for n in range(10)]
    rows = pd.DataFrame({"image_id": ["a", "a", *others], "image": [same, same, *(i.encode() for i in others)],
                         "raw_label": [0, 1] + [0, 1] * 5})
    frame = prepare_images(rows, "toy", SPLIT)
    assert sorted(frame["text"]) == sorted(others)
    assert dict(zip(frame["text"], frame["image"], strict=True))["i3"] == b"i3"
