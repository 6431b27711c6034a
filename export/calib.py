"""Calibration images for post-training quantization: the user's *normal* images, read with wmoe's data layer.

A source is a folder of images (searched recursively) or a meta.json, of which the ``good`` (``anomaly == 0``)
images of every split are used. Images are decoded by :func:`wmoe.data.images.load_image` and preprocessed exactly
as the data set does (:func:`wmoe.data.images.preprocess`: squash resize, CLIP normalization), so the calibrated
ranges are those the model sees at evaluation. A model exported with in-graph preprocessing (input ``frames``,
uint8 at the camera's size) is calibrated on frames of that size instead.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from wmoe.data.meta import read_meta
from wmoe.image_io import DataError, is_image_file, load_image

DEFAULT_MAX_IMAGES = 256  # "a few hundred": more barely moves max/entropy ranges and costs calibration time


@dataclass
class CalibrationSet:
    """Preprocessed calibration inputs and where they came from."""

    inputs: np.ndarray  # (N,3,S,S) float32 normalized, or (N,H,W,3) uint8 frames
    paths: List[str]
    source: str
    available: int  # normal images found at the source (before sub-sampling)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable files

    def split(self, holdout: int) -> Tuple[np.ndarray, np.ndarray]:
        """(calibration, held-out) inputs: the last ``holdout`` images (at most half) are kept out of calibration
        and used to measure which layers to keep in higher precision."""
        k = min(int(holdout), len(self.inputs) // 2)
        if k <= 0:
            return self.inputs, self.inputs[:0]
        return self.inputs[:-k], self.inputs[-k:]


def normal_image_paths(source: Union[str, os.PathLike]) -> List[Path]:
    """The normal images of ``source``: every image file under a folder (a folder holding a meta.json is read as
    that meta.json), or the ``good`` entries of a meta.json (paths relative to its folder). Sorted and absolute,
    so the same source always gives the same list."""
    src = Path(source)
    if not src.exists():
        raise DataError(f"calibration source not found: {src}")
    if src.is_dir():
        meta = src / "meta.json"
        if not meta.is_file():
            paths = sorted(p.resolve() for p in src.rglob("*") if is_image_file(p))
            if not paths:
                raise DataError(f"calibration folder has no images (searched recursively): {src}")
            return paths
        src = meta
    if src.suffix.lower() != ".json":
        raise DataError(f"calibration source must be a folder of normal images or a meta.json, got file: {src}")
    meta_dict = read_meta(src)  # DataError names the file
    root = src.parent
    paths = sorted({(root / str(e["img_path"])).resolve() for split in meta_dict.values() for entries in split.values()
                    for e in entries if not int(e["anomaly"])})
    if not paths:
        raise DataError(f"{src}: has no normal ('good', anomaly 0) images to calibrate on")
    return paths


def _pick(paths: Sequence[Path], n: int, seed: int) -> List[Path]:
    """``n`` of ``paths`` drawn without replacement (seeded), in their sorted order: covers every class of a
    multi-class set in proportion instead of the first class only."""
    if len(paths) <= n:
        return list(paths)
    idx = np.sort(np.random.default_rng(seed).choice(len(paths), size=n, replace=False))
    return [paths[i] for i in idx]


def as_model_input(rgb: np.ndarray, image_size: int, frame_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """One decoded RGB image as the exported model's input: a (3,S,S) float32 normalized image, or, for a model
    with in-graph preprocessing (``frame_size`` (H, W)), a uint8 (H,W,3) frame as a camera would deliver it."""
    if frame_size is None:
        # the data set's own preprocessing (torch's resize), so the ranges are those the model sees at evaluation;
        # a model with in-graph preprocessing (frames) needs no torch at all
        from wmoe.data.images import preprocess
        return preprocess(rgb, image_size).numpy()
    from PIL import Image
    h, w = frame_size
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)


def load_calibration(source: Union[str, os.PathLike], image_size: int, *, max_images: int = DEFAULT_MAX_IMAGES,
                     seed: int = 0, frame_size: Optional[Tuple[int, int]] = None,
                     min_images: int = 8, exclude: Sequence[Union[str, os.PathLike]] = ()) -> CalibrationSet:
    """Read up to ``max_images`` normal images of ``source`` as model inputs.

    Unreadable files are skipped with a warning naming them (a line camera's dump often holds a few truncated
    files); fewer than ``min_images`` readable images is an error. ``exclude``: images never to calibrate on
    (the accuracy gate's test images, so the gate does not score images the ranges were fitted to).
    """
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    paths = normal_image_paths(source)
    if exclude:
        ex = {Path(p).resolve() for p in exclude}
        paths = [p for p in paths if p not in ex]
        if not paths:
            raise DataError(f"{source}: every normal image is also a gate test image; calibrate on other images")
    chosen = _pick(paths, max_images, seed)
    arrays, used, skipped = [], [], []
    try:
        from tqdm import tqdm
        it = tqdm(chosen, desc="calibration images", unit="img", leave=False)
    except ImportError:  # pragma: no cover
        it = chosen
    for p in it:
        try:
            rgb = load_image(p)
        except DataError as e:
            skipped.append((str(p), str(e)))
            continue
        arrays.append(as_model_input(rgb, image_size, frame_size))
        used.append(str(p))
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable calibration image(s): "
                      + "; ".join(f"{p} ({r})" for p, r in skipped[:5]) + (" ..." if len(skipped) > 5 else ""),
                      RuntimeWarning, stacklevel=2)
    if len(used) < min(min_images, max_images):
        raise DataError(f"{source}: only {len(used)} readable normal image(s), need at least "
                        f"{min(min_images, max_images)} to calibrate")
    return CalibrationSet(np.stack(arrays), used, str(source), len(paths), skipped)
