"""Image dataset sources, resolved through a registry keyed by the source kind (as text sources are).

Specs:
  `sklearn:digits`           scikit-learn's bundled 8x8 handwritten digits (10 classes, offline), upscaled
  `hf:<id>[:<config>]`       a Hugging Face dataset (hub, cache or a `save_to_disk` folder); `hf_parquet:` reads
                             the hub's parquet conversion; `image_field` (default `image`) and `label_field`
                             (default `label`; CIFAR-100's fine classes are `fine_label`)
  `folder:<dir>`             one subfolder per class, image files inside: how users bring their own

Each loader returns one row per image: `image_id` (the SHA-256 of its bytes: stable across runs, machines and
row orders), `image` (encoded bytes) and `raw_label`. The bytes are the source's own file (a JPEG stays a JPEG:
re-encoding thousands of photos as PNG would multiply their memory for nothing), or PNG where the source holds
pixels (digits). Every image is decoded once here, so an unreadable one fails before a model loads.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from features.errors import SaefsError
from features.sources.datasets import HUB_KINDS, source_rows

DIGITS_SIDE = 64  # 8x8 digits upscaled without smoothing, so the image processor's resize does not blur 8 pixels
SHOWN = 5  # unreadable images listed by name in an error (all are counted)


class ImageSourceError(SaefsError):
    """An image source that cannot be read as configured; the message names the source and the fix."""


@dataclass(frozen=True)
class ImageSpec:
    location: str
    split: str = "train"
    image_field: str = "image"
    label_field: str = "label"


ImageLoader = Callable[[ImageSpec], pd.DataFrame]


def png(image: Any) -> bytes:
    """A PIL image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode(data: bytes) -> Any:
    """Encoded bytes -> an RGB PIL image (what VLM processors take)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _rows(images: Sequence[bytes], labels: Sequence[Any], names: Sequence[str], where: str, fix: str) -> pd.DataFrame:
    """The loader's frame, refusing images that do not decode: each counted, the first few named."""
    bad = []
    for index, data in enumerate(images):
        try:
            decode(data)
        except Exception:  # PIL raises many types for damaged or foreign files
            bad.append(index)
    if bad:
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        listed = ", ".join(names[i] for i in bad[:SHOWN]) + more
        raise ImageSourceError(f"{where}: {len(bad)} of {len(images)} images cannot be read as images: {listed}; {fix}")
    ids = [hashlib.sha256(data).hexdigest()[:16] for data in images]
    return pd.DataFrame({"image_id": ids, "image": list(images), "raw_label": list(labels)})


def load_sklearn(spec: ImageSpec) -> pd.DataFrame:
    """`sklearn:digits`: the 1,797 bundled 8x8 digits (16 grey levels) as PNG, upscaled to DIGITS_SIDE pixels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    if spec.location != "digits":
        raise ImageSourceError(f"sklearn:{spec.location}: scikit-learn bundles one image set here, 'sklearn:digits'")
    digits = load_digits()
    images = [png(Image.fromarray(np.rint(pixels * 255 / 16).astype(np.uint8), mode="L")
                  .resize((DIGITS_SIDE, DIGITS_SIDE), Image.Resampling.NEAREST)) for pixels in digits.images]
    return _rows(images, digits.target.tolist(), [f"digit {i}" for i in range(len(images))], "sklearn:digits",
                 "the scikit-learn install is damaged: reinstall it")


def _image_bytes(value: Any) -> bytes | None:
    """An image cell of a Hugging Face frame as encoded bytes: the datasets `Image` feature's {bytes, path}, raw
    bytes, or a path; None for anything else."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        return data if data is not None else Path(path).read_bytes() if path else None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and Path(value).is_file():
        return Path(value).read_bytes()
    return None


def load_hf(spec: ImageSpec, kind: str = "hf") -> pd.DataFrame:
    """A split of a Hugging Face image dataset, images as stored (the `Image` feature is not decoded by
    datasets; it is checked here)."""
    where = f"{kind}:{spec.location}"
    frame = source_rows(where, spec.split)
    missing = [f for f in (spec.image_field, spec.label_field) if f not in frame.columns]
    if missing:
        raise ImageSourceError(f"{where} (split {spec.split!r}) has no field {missing}; it has {list(frame.columns)}: "
                               "set image_field / label_field for this dataset")
    images = [_image_bytes(value) for value in frame[spec.image_field]]
    if (absent := [i for i, data in enumerate(images) if data is None]):
        raise ImageSourceError(f"{where}: field {spec.image_field!r} holds no image in {len(absent)} rows (e.g. "
                               f"row {absent[0]}: {type(frame[spec.image_field].iloc[absent[0]]).__name__}); name "
                               "the image column with image_field")
    return _rows(cast(list[bytes], images), frame[spec.label_field].tolist(),
                 [f"row {i}" for i in range(len(frame))], f"{where} (split {spec.split!r})",
                 "drop those rows from the dataset or fix their images")


def load_folder(spec: ImageSpec) -> pd.DataFrame:
    """`folder:<dir>`: each subfolder a class (its name the raw label), every file under it an image; files
    directly in <dir>, and hidden files and folders, are not read."""
    root, where = Path(spec.location), f"folder:{spec.location}"
    if not root.is_dir():
        raise ImageSourceError(f"{where}: no such folder; point it at a folder with one subfolder per class")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ImageSourceError(f"{where} holds no class subfolder: put each class's images in a subfolder named "
                               "after the class")
    files, labels = [], []
    for folder in classes:
        found = sorted(p for p in folder.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if not found:
            raise ImageSourceError(f"{where}: class folder {folder.name!r} holds no image file: add its images or "
                                   "remove the folder")
        files += found
        labels += [folder.name] * len(found)
    return _rows([path.read_bytes() for path in files], labels, [str(path) for path in files], where,
                 "convert them to an image format (PNG, JPEG) or remove them from the class folders")


IMAGE_LOADERS: dict[str, ImageLoader] = {"sklearn": load_sklearn, "folder": load_folder,
                                         **{kind: partial(load_hf, kind=kind) for kind in HUB_KINDS}}
IMAGE_SOURCE_KINDS = tuple(IMAGE_LOADERS)


def load_images(source: str, **fields: str | None) -> pd.DataFrame:
    """Load `source` (`<kind>:<location>`) with the given split and field names; see `ImageSpec`."""
    kind, _, location = source.partition(":")
    if kind not in IMAGE_LOADERS or not location:
        raise ImageSourceError(f"{source!r}: not an image source; expected '<kind>:<location>' with kind one of "
                               f"{list(IMAGE_LOADERS)}, e.g. 'sklearn:digits' or 'folder:<dir>'")
    return IMAGE_LOADERS[kind](ImageSpec(location, **{k: v for k, v in fields.items() if v is not None}))
