"""meta.json generators: one internal index format for every supported data-set layout.

The schema is the one AnomalyCLIP and AdaCLIP share::

    {"train": {cls: [entry, ...]}, "test": {cls: [entry, ...]}}
    entry = {"img_path": str, "mask_path": str, "cls_name": str, "specie_name": str, "anomaly": 0 | 1}

Paths are POSIX and relative to the data root; ``mask_path`` is "" for normal images (and for anomalous images of
sets without pixel labels); ``specie_name`` is the defect type ("good" for normal images). Both split keys are
always present; a split lists only the classes that have samples in it. Classes and entries are sorted, so the
same tree always gives the same file.

Every generator checks the files it indexes: a missing root, a class folder without images, or an anomalous test
image whose mask is missing raises :class:`DataError` naming the path.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..atomic import atomic_write_text
from ..image_io import DataError, is_image_file  # torch-free: quantization reads meta.json without torch

PathLike = Union[str, "os.PathLike[str]"]
Entry = Dict[str, object]
Meta = Dict[str, Dict[str, List[Entry]]]
Generator = Callable[..., Meta]

SPLITS: Tuple[str, str] = ("train", "test")
ENTRY_KEYS: Tuple[str, ...] = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")
NORMAL = "good"

#: Format name -> generator ``fn(root: Path, **options) -> meta dict``.
GENERATORS: Dict[str, Generator] = {}


def register_format(*names: str) -> Callable[[Generator], Generator]:
    """Decorator registering a generator under one or more format names."""

    def deco(fn: Generator) -> Generator:
        for n in names:
            GENERATORS[n] = fn
        return fn

    return deco


def list_formats() -> List[str]:
    """Sorted names of the registered formats."""
    return sorted(GENERATORS)


def build_meta(root: PathLike, fmt: str, **options: object) -> Meta:
    """Index the data set at ``root`` laid out as ``fmt`` and return the meta dict (nothing is written)."""
    if fmt not in GENERATORS:
        raise ValueError(f"unknown data-set format {fmt!r}; known: {', '.join(list_formats())}")
    r = Path(root)
    if not r.exists():
        raise DataError(f"data root not found: {r}")
    if not r.is_dir():
        raise DataError(f"data root is not a folder: {r}")
    meta = GENERATORS[fmt](r, **options)
    return _finalize(meta, r)


def write_meta(root: PathLike, fmt: str, out: Optional[PathLike] = None, **options: object) -> Path:
    """Build the meta dict and write it atomically to ``out`` (default ``root/meta.json``); return the path."""
    meta = build_meta(root, fmt, **options)
    path = Path(out) if out is not None else Path(root) / "meta.json"
    atomic_write_text(path, dumps_meta(meta))
    return path


def dumps_meta(meta: Meta) -> str:
    """Stable JSON text for a meta dict (sorted classes, fixed indentation, trailing newline).

    File names that are not UTF-8 (Latin-1 bytes arrive as lone surrogates) are kept as ``\\udcXX`` escapes,
    which ``json.loads`` turns back into the same file name, so the paths still open."""
    try:
        text = json.dumps(meta, indent=2, sort_keys=False, ensure_ascii=False)
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(meta, indent=2, sort_keys=False, ensure_ascii=True)
    return text + "\n"


# --------------------------------------------------------------------------------------------------- helpers
def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _entry(root: Path, img: Path, mask: Optional[Path], cls: str, specie: str, anomaly: int) -> Entry:
    return {
        "img_path": _rel(img, root),
        "mask_path": _rel(mask, root) if mask is not None else "",
        "cls_name": cls,
        "specie_name": specie,
        "anomaly": int(anomaly),
    }


def _subdirs(d: Path) -> List[Path]:
    """Visible sub-folders, sorted by name."""
    return sorted((p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _images(d: Path) -> List[Path]:
    """Image files directly in ``d``, sorted by name."""
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if is_image_file(p)), key=lambda p: p.name)


class _MaskIndex:
    """Caches one directory listing per mask folder (a folder of 10k masks is listed once, not 10k times)."""

    def __init__(self, suffixes: Sequence[str] = ("_mask", "")) -> None:
        self.suffixes = tuple(suffixes)
        self._cache: Dict[Path, Dict[str, List[Path]]] = {}

    def find(self, mask_dir: Path, stem: str) -> Optional[Path]:
        if mask_dir not in self._cache:
            idx: Dict[str, List[Path]] = {}
            for p in _images(mask_dir):
                idx.setdefault(p.stem, []).append(p)
            self._cache[mask_dir] = idx
        idx = self._cache[mask_dir]
        for suf in self.suffixes:
            hits = idx.get(stem + suf)
            if hits:
                if len(hits) > 1:
                    names = ", ".join(str(h) for h in hits)
                    raise DataError(f"ambiguous masks for image {stem!r} in {mask_dir}: {names}")
                return hits[0]
        return None


def _require_mask(index: _MaskIndex, mask_dir: Path, img: Path) -> Path:
    m = index.find(mask_dir, img.stem)
    if m is None:
        sufs = " or ".join(f"{img.stem}{s}.<ext>" for s in index.suffixes)
        raise DataError(f"mask missing for anomalous image {img}: expected {sufs} in {mask_dir}")
    return m


def _class_dirs(root: Path, exclude: Iterable[str] = ()) -> List[Path]:
    ex = set(exclude)
    dirs = [d for d in _subdirs(root) if d.name not in ex]
    if not dirs:
        raise DataError(f"no class folders found in data root: {root}")
    return dirs


def _finalize(meta: Meta, root: Path) -> Meta:
    """Sort classes and entries; drop empty classes; ensure both splits exist; reject an empty index."""
    out: Meta = {}
    for split in SPLITS:
        classes = meta.get(split, {})
        out[split] = {
            c: sorted(classes[c], key=lambda e: (str(e["img_path"]), str(e["mask_path"])))
            for c in sorted(classes)
            if classes[c]
        }
    if not any(out[s] for s in SPLITS):
        raise DataError(f"no images found under data root: {root}")
    return out


def _add(meta: Meta, split: str, cls: str, entries: List[Entry]) -> None:
    meta.setdefault(split, {}).setdefault(cls, []).extend(entries)


# ------------------------------------------------------------------------------------------ MVTec-like sets
def _mvtec_like(
    root: Path,
    normal_names: Sequence[str] = ("good",),
    mask_suffixes: Sequence[str] = ("_mask", ""),
    gt_dir: str = "ground_truth",
) -> Meta:
    """``<cls>/train/<normal>``, ``<cls>/test/<defect>``, ``<cls>/<gt_dir>/<defect>/<stem><suffix>.<ext>``."""
    meta: Meta = {"train": {}, "test": {}}
    index = _MaskIndex(mask_suffixes)
    for cdir in _class_dirs(root):
        cls = cdir.name
        n_found = 0
        for split in SPLITS:
            sdir = cdir / split
            if not sdir.is_dir():
                continue
            for ddir in _subdirs(sdir):
                normal = ddir.name in normal_names
                specie = NORMAL if normal else ddir.name
                entries = []
                for img in _images(ddir):
                    mask = None if normal else _require_mask(index, cdir / gt_dir / ddir.name, img)
                    entries.append(_entry(root, img, mask, cls, specie, 0 if normal else 1))
                n_found += len(entries)
                _add(meta, split, cls, entries)
        if not (cdir / "test").is_dir():
            raise DataError(f"class folder has no test/ folder: {cdir}")
        if n_found == 0:
            raise DataError(f"class folder contains no images under train/ or test/: {cdir}")
    return meta


@register_format("mvtec", "mpdd", "dtd")
def mvtec_meta(root: Path) -> Meta:
    """MVTec AD (and MPDD, DTD-Synthetic, which use the same layout).

    ``<root>/<cls>/train/good/*``, ``<root>/<cls>/test/{good,<defect>}/*``,
    ``<root>/<cls>/ground_truth/<defect>/<stem>_mask.png`` (``<stem>.<ext>`` is accepted too).
    Every non-hidden sub-folder of the root is a class.
    """
    return _mvtec_like(root, normal_names=("good",))


@register_format("btad")
def btad_meta(root: Path) -> Meta:
    """BTAD (BeanTech): ``<root>/<cls>/train/ok/*``, ``<root>/<cls>/test/{ok,ko}/*``,
    ``<root>/<cls>/ground_truth/ko/<stem>.<png|bmp>``. ``ok`` is normal (written as specie "good"), ``ko`` is
    the anomalous specie.
    """
    return _mvtec_like(root, normal_names=("ok", "good"), mask_suffixes=("", "_mask"))


# -------------------------------------------------------------------------------------------------- VisA
VISA_COLUMNS = ("object", "split", "label", "image", "mask")


@register_format("visa")
def visa_meta(root: Path, split_csv: str = "split_csv/1cls.csv") -> Meta:
    """VisA: ``<root>/<cls>/Data/{Images/{Normal,Anomaly},Masks/Anomaly}`` indexed by ``<root>/split_csv/1cls.csv``.

    CSV columns ``object,split,label,image,mask``; ``label`` is ``normal`` or ``anomaly``; paths are relative to
    the root. VisA names no defect types, so ``specie_name`` is "good" or "anomaly".
    """
    csv_path = root / split_csv
    if not csv_path.is_file():
        raise DataError(f"VisA split file not found: {csv_path}")
    try:
        with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"VisA split file cannot be read: {csv_path} ({e})") from None
    missing = [c for c in VISA_COLUMNS if c not in fields]
    if missing:
        raise DataError(f"VisA split file lacks columns {missing} (has {fields}): {csv_path}")
    if not rows:
        raise DataError(f"VisA split file has no rows: {csv_path}")
    meta: Meta = {"train": {}, "test": {}}
    for lineno, raw in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        cls, split, label = row["object"], row["split"], row["label"]
        where = f"{csv_path} line {lineno}"
        if split not in SPLITS:
            raise DataError(f"{where}: split must be 'train' or 'test', got {split!r}")
        if label not in ("normal", "anomaly"):
            raise DataError(f"{where}: label must be 'normal' or 'anomaly', got {label!r}")
        img = root / row["image"]
        if not img.is_file():
            raise DataError(f"{where}: image file not found: {img}")
        mask: Optional[Path] = None
        anomaly = int(label == "anomaly")
        if anomaly:
            if not row["mask"]:
                raise DataError(f"{where}: anomalous image has no mask: {img}")
            mask = root / row["mask"]
            if not mask.is_file():
                raise DataError(f"{where}: mask missing for anomalous image {img}: {mask}")
        _add(meta, split, cls, [_entry(root, img, mask, cls, "anomaly" if anomaly else NORMAL, anomaly)])
    return meta


# ---------------------------------------------------------------------------------------- user's own data
FOLDER_NORMAL_NAMES = ("good",)
FOLDER_MASK_DIRS = ("masks", "ground_truth")


def _folder_split(root: Path, cls: str, sdir: Path, mask_root: Optional[Path], index: _MaskIndex) -> List[Entry]:
    """One flat folder: ``good/``, ``<defect>/`` and an optional ``masks/<defect>/``."""
    entries: List[Entry] = []
    loose = _images(sdir)
    if loose:
        raise DataError(
            f"images directly in {sdir} (e.g. {loose[0].name}); put normal images in good/ and anomalous ones "
            f"in a folder named after the defect"
        )
    for ddir in _subdirs(sdir):
        if ddir.name in FOLDER_MASK_DIRS:
            continue
        normal = ddir.name in FOLDER_NORMAL_NAMES
        mdir = (mask_root / ddir.name) if mask_root is not None else None
        # Masks are optional per defect folder; but if the folder exists every image in that defect needs one,
        # because a half-labelled defect would silently distort the pixel metrics.
        has_masks = mdir is not None and mdir.is_dir() and not normal
        for img in _images(ddir):
            mask = _require_mask(index, mdir, img) if has_masks else None  # type: ignore[arg-type]
            entries.append(_entry(root, img, mask, cls, NORMAL if normal else ddir.name, 0 if normal else 1))
    return entries


def _mask_root(d: Path) -> Optional[Path]:
    found = [d / n for n in FOLDER_MASK_DIRS if (d / n).is_dir()]
    if len(found) > 1:
        raise DataError(f"both masks/ and ground_truth/ exist in {d}; keep one")
    return found[0] if found else None


@register_format("folder")
def folder_meta(root: Path) -> Meta:
    """The user's own images (see docs/data.md, "Your own data").

    Flat (zero-shot evaluation, everything goes to ``test``)::

        <root>/<cls>/good/*                      normal
        <root>/<cls>/<defect>/*                  anomalous, specie = <defect>
        <root>/<cls>/masks/<defect>/<stem>[_mask].<ext>   optional pixel masks

    Split (honoured when ``<cls>/test/`` exists): ``<cls>/train/`` and ``<cls>/test/`` each follow the flat
    layout (``good/``, ``<defect>/``, optional ``masks/<defect>/`` inside the split folder). ``ground_truth/`` is
    accepted as another name for ``masks/``.
    """
    meta: Meta = {"train": {}, "test": {}}
    index = _MaskIndex(("_mask", ""))
    for cdir in _class_dirs(root):
        cls = cdir.name
        subs = {d.name for d in _subdirs(cdir)}
        if "test" in subs:
            others = sorted(subs - {"train", "test"})
            if others:
                # masks/ at class level would be silently unused here: they belong inside train/ and test/
                raise DataError(
                    f"{cdir} mixes train/ test/ split folders with other folders {others}; in a split layout "
                    f"good/, <defect>/ and masks/ go inside train/ and test/"
                )
            for split in SPLITS:
                sdir = cdir / split
                if sdir.is_dir():
                    _add(meta, split, cls, _folder_split(root, cls, sdir, _mask_root(sdir), index))
        elif "train" in subs:
            raise DataError(f"{cdir} has a train/ folder but no test/ folder")
        else:
            _add(meta, "test", cls, _folder_split(root, cls, cdir, _mask_root(cdir), index))
        if not any(meta[s].get(cls) for s in SPLITS):
            raise DataError(f"class folder contains no images: {cdir}")
    return meta


# ---------------------------------------------------------------------------------------- medical sets
def _yes_no(root: Path, cls_name: str, normal_dir: str = "no", anomaly_dir: str = "yes") -> Meta:
    entries: List[Entry] = []
    for sub, anomaly in ((normal_dir, 0), (anomaly_dir, 1)):
        d = root / sub
        if not d.is_dir():
            raise DataError(f"expected folder {sub}/ not found: {d}")
        imgs = _images(d)
        if not imgs:
            raise DataError(f"folder contains no images: {d}")
        entries += [_entry(root, p, None, cls_name, "anomaly" if anomaly else NORMAL, anomaly) for p in imgs]
    return {"train": {}, "test": {cls_name: entries}}


@register_format("brainmri", "br35h")
def yes_no_meta(root: Path, cls_name: str = "brain") -> Meta:
    """BrainMRI / Br35H (Kaggle): ``<root>/no/*`` normal and ``<root>/yes/*`` tumour, image labels only.

    Other folders (Br35H's unlabelled ``pred/``, duplicated copies) are ignored. Everything is ``test``.
    """
    return _yes_no(root, cls_name)


@register_format("headct")
def headct_meta(root: Path, cls_name: str = "brain") -> Meta:
    """HeadCT (Kaggle "head-ct-hemorrhage"): ``<root>/labels.csv`` (columns ``id, hemorrhage``) and the images
    ``<root>/head_ct/<id:03d>.png`` (the archive's nested ``head_ct/head_ct/`` is found too). Image labels only.
    """
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise DataError(f"HeadCT labels file not found: {csv_path}")
    img_dir = next((d for d in (root / "head_ct" / "head_ct", root / "head_ct") if _images(d)), None)
    if img_dir is None:
        raise DataError(f"HeadCT image folder head_ct/ with images not found in {root}")
    entries: List[Entry] = []
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        for lineno, raw in enumerate(csv.DictReader(f), start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            try:
                idx, label = int(row["id"]), int(row["hemorrhage"])
            except (KeyError, ValueError):
                raise DataError(f"{csv_path} line {lineno}: expected integer columns id, hemorrhage") from None
            img = img_dir / f"{idx:03d}.png"
            if not img.is_file():
                raise DataError(f"{csv_path} line {lineno}: image file not found: {img}")
            entries.append(_entry(root, img, None, cls_name, "anomaly" if label else NORMAL, int(label != 0)))
    if not entries:
        raise DataError(f"HeadCT labels file has no rows: {csv_path}")
    return {"train": {}, "test": {cls_name: entries}}


def _segmentation(
    root: Path,
    cls_name: str,
    image_dirs: Sequence[str],
    mask_dirs: Sequence[str],
    mask_suffixes: Sequence[str] = ("", "_mask", "_Segmentation"),
) -> Meta:
    """Image folder + mask folder, masks matched by stem; every image is anomalous (specie "anomaly")."""
    idir = next((root / d for d in image_dirs if (root / d).is_dir()), None)
    mdir = next((root / d for d in mask_dirs if (root / d).is_dir()), None)
    if idir is None:
        raise DataError(f"image folder ({' or '.join(image_dirs)}) not found in {root}")
    if mdir is None:
        raise DataError(f"mask folder ({' or '.join(mask_dirs)}) not found in {root}")
    imgs = _images(idir)
    if not imgs:
        raise DataError(f"folder contains no images: {idir}")
    index = _MaskIndex(mask_suffixes)
    entries = [_entry(root, p, _require_mask(index, mdir, p), cls_name, "anomaly", 1) for p in imgs]
    return {"train": {}, "test": {cls_name: entries}}


@register_format("kvasir", "cvc-clinicdb", "cvc-colondb", "endo", "segmentation")
def segmentation_meta(root: Path, cls_name: str = "colon") -> Meta:
    """Segmentation-only sets (Kvasir-SEG, CVC-ClinicDB, CVC-ColonDB, EndoTect's segmentation part).

    ``<root>/images/*`` with ``<root>/masks/<stem>.<ext>`` (``Original/`` + ``Ground Truth/``, CVC-ClinicDB's
    Kaggle naming, is found too). Every image is anomalous; there are no normal images, so only pixel metrics
    are meaningful. ``cls_name`` defaults to "colon" (AnomalyCLIP's name for the polyp sets).
    """
    return _segmentation(root, cls_name, ("images", "Original"), ("masks", "Ground Truth"))


@register_format("isic")
def isic_meta(root: Path, cls_name: str = "skin") -> Meta:
    """ISIC 2016 part 1 test set: ``<root>/ISBI2016_ISIC_Part1_Test_Data/<id>.jpg`` with
    ``<root>/ISBI2016_ISIC_Part1_Test_GroundTruth/<id>_Segmentation.png`` (``images/`` + ``masks/`` also found).
    Every image is anomalous.
    """
    return _segmentation(
        root,
        cls_name,
        ("ISBI2016_ISIC_Part1_Test_Data", "images"),
        ("ISBI2016_ISIC_Part1_Test_GroundTruth", "masks"),
    )


# ------------------------------------------------------------------------------------ reading and checking
def validate_meta(meta: object, source: str = "meta.json") -> Meta:
    """Check the schema of a loaded meta dict; raise DataError naming ``source`` on the first problem."""
    if not isinstance(meta, dict):
        raise DataError(f"{source}: top level must be a JSON object with 'train'/'test' keys")
    splits = [s for s in SPLITS if s in meta]
    if not splits:
        raise DataError(f"{source}: no 'train' or 'test' key at top level (keys: {sorted(meta)[:10]})")
    for split in splits:
        classes = meta[split]
        if not isinstance(classes, dict):
            raise DataError(f"{source}: '{split}' must map class names to lists of entries")
        for cls, entries in classes.items():
            if not isinstance(entries, list):
                raise DataError(f"{source}: '{split}/{cls}' must be a list of entries")
            for i, e in enumerate(entries):
                if not isinstance(e, dict):
                    raise DataError(f"{source}: '{split}/{cls}' entry {i} is not an object")
                missing = [k for k in ("img_path", "anomaly") if k not in e]
                if missing:
                    raise DataError(f"{source}: '{split}/{cls}' entry {i} lacks keys {missing}")
                if e["anomaly"] not in (0, 1, True, False):
                    raise DataError(f"{source}: '{split}/{cls}' entry {i} has anomaly={e['anomaly']!r} (want 0/1)")
    return meta  # type: ignore[return-value]


def read_meta(path: PathLike) -> Meta:
    """Load and validate a meta.json file; any problem is a DataError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"meta file not found: {p}")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"meta file is not valid JSON: {p} ({e})") from None
    return validate_meta(meta, str(p))
