"""The page's demo picker: the test images of a data root's ``meta.json`` (what ``wmoe data demo`` writes).

``meta.json`` is the peers' shared format (``{"test": {class: [{img_path, cls_name, specie_name, anomaly}]}}``,
paths relative to the root; docs/data.md). It is read here with the standard library because the full reader
(:mod:`wmoe.data.meta`) lives in a package that imports torch, and the app must run without it; only the fields
the picker shows are used, and a path is served only when it is one of the listed files inside the root.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Union

from ..contract import is_image_name
from ..image_io import DataError

#: at most this many pictures are listed (a full benchmark has thousands; the picker is for a look)
MAX_DEMO_IMAGES = 400


@dataclass(frozen=True)
class DemoImage:
    path: str     # relative to the root, as in meta.json
    cls: str      # class / product (cls_name)
    label: str    # "good" or the defect type (specie_name)


class DemoSet:
    """The listed test images of ``root`` (``root/meta.json``; split ``test``, else ``train``)."""

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root).resolve()
        meta = self.root / "meta.json"
        if not meta.is_file():
            raise DataError(f"{root}: no meta.json (make the demo set with `wmoe data demo DIR`, or one for your "
                            f"images with `wmoe data meta DIR --format ...`)")
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
            split = doc.get("test") or doc.get("train") or {}
            images: List[DemoImage] = []
            for cls in sorted(split):
                for e in split[cls]:
                    rel = str(e["img_path"])
                    if not is_image_name(rel):
                        continue
                    label = "good" if not int(e.get("anomaly", 0)) else str(e.get("specie_name") or "defect")
                    images.append(DemoImage(rel, str(e.get("cls_name") or cls), label))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise DataError(f"{meta}: not a readable meta.json ({type(e).__name__}: {e})") from None
        self.images = images[:MAX_DEMO_IMAGES]
        self._by_path: Dict[str, DemoImage] = {im.path: im for im in self.images}
        if not self.images:
            raise DataError(f"{meta}: lists no test images")

    def resolve(self, rel: str) -> "tuple[Path, DemoImage]":
        """The file of listed image ``rel``; anything not listed (``../`` tricks included) is a DataError."""
        im = self._by_path.get(rel)
        if im is None:
            raise DataError(f"{rel}: not an image of the demo set")
        p = (self.root / im.path).resolve()
        if self.root not in p.parents:
            raise DataError(f"{rel}: outside the demo set's folder")
        return p, im

    def to_json(self) -> List[Dict[str, str]]:
        return [{"path": im.path, "cls": im.cls, "label": im.label} for im in self.images]
