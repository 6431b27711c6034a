"""The per-class metrics table with its mean row: markdown (the paper's layout), CSV and JSON, written atomically."""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from ...atomic import atomic_write_text

# (field, markdown header) in the order of the paper's tables
COLUMNS = [
    ("image_auroc", "I-AUROC"), ("image_f1_max", "I-F1max"), ("image_ap", "I-AP"),
    ("pixel_auroc", "P-AUROC"), ("pixel_ap", "P-AP"), ("pixel_pro", "P-PRO"), ("pixel_pro_binned", "P-PRO(binned)"),
]


@dataclass
class MetricsRow:
    name: str
    n_images: int = 0
    n_anomalous: int = 0
    image_auroc: float = math.nan
    image_f1_max: float = math.nan
    image_ap: float = math.nan
    pixel_auroc: float = math.nan
    pixel_ap: float = math.nan
    pixel_pro: float = math.nan
    pixel_pro_binned: float = math.nan
    threshold: float = math.nan


def _nanmean(values: List[float]) -> "tuple[float, int]":
    ok = [v for v in values if v is not None and not math.isnan(v)]
    return (sum(ok) / len(ok) if ok else math.nan), len(ok)


def _json_num(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


@dataclass
class MetricsTable:
    """Rows per class; ``mean`` averages each column over the classes where it is defined (NaN-aware)."""

    rows: List[MetricsRow] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)

    def add_row(self, name: str, metrics: Dict[str, float], n_images: int = 0, n_anomalous: int = 0) -> MetricsRow:
        known = {f.name for f in fields(MetricsRow)}
        row = MetricsRow(name=name, n_images=n_images, n_anomalous=n_anomalous,
                         **{k: float(v) for k, v in metrics.items() if k in known and k not in ("name",)})
        self.rows.append(row)
        return row

    def mean(self) -> MetricsRow:
        row = MetricsRow(name="mean", n_images=sum(r.n_images for r in self.rows),
                         n_anomalous=sum(r.n_anomalous for r in self.rows))
        for key, _ in COLUMNS:
            setattr(row, key, _nanmean([getattr(r, key) for r in self.rows])[0])
        return row

    def to_markdown(self) -> str:
        head = "| class | images | anomalous | " + " | ".join(h for _, h in COLUMNS) + " |"
        sep = "|---|---:|---:|" + "---:|" * len(COLUMNS)
        lines = [head, sep]
        for r in self.rows + [self.mean()]:
            cells = ["–" if math.isnan(getattr(r, k)) else f"{100 * getattr(r, k):.1f}" for k, _ in COLUMNS]
            name = f"**{r.name}**" if r.name == "mean" else r.name
            lines.append(f"| {name} | {r.n_images} | {r.n_anomalous} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        names = [f.name for f in fields(MetricsRow)]
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(names)
        for r in self.rows + [self.mean()]:
            w.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in (getattr(r, n) for n in names)])
        return buf.getvalue()

    def to_json(self) -> str:
        doc = {"rows": [{k: _json_num(v) for k, v in asdict(r).items()} for r in self.rows],
               "mean": {k: _json_num(v) for k, v in asdict(self.mean()).items()},
               "extra": self.extra}
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "MetricsTable":
        doc = json.loads(text)
        rows = [MetricsRow(**{k: (math.nan if v is None else v) for k, v in r.items()}) for r in doc["rows"]]
        return cls(rows=rows, extra=doc.get("extra", {}))

    def write(self, out_dir, stem: str = "metrics", appendix: str = "") -> Dict[str, Path]:
        """``stem``.md (the table, then ``appendix``: further markdown sections), .csv and .json."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "json": out / f"{stem}.json"}
        atomic_write_text(paths["md"], self.to_markdown() + appendix)
        atomic_write_text(paths["csv"], self.to_csv())
        atomic_write_text(paths["json"], self.to_json())
        return paths


def evaluate_class(labels, scores, masks=None, maps=None, pro: bool = True) -> Dict[str, float]:
    """Image metrics (and pixel metrics when masks and maps are given) of one class, with the table's keys."""
    from .image import image_metrics
    from .pixel import pixel_metrics
    im = image_metrics(labels, scores)
    out: Dict[str, float] = {"image_auroc": im["auroc"], "image_ap": im["ap"], "image_f1_max": im["f1_max"],
                             "threshold": im["threshold"]}
    if masks is not None and maps is not None:
        px = pixel_metrics(masks, maps, pro=pro, pro_binned=pro)
        out.update({"pixel_auroc": px["auroc"], "pixel_ap": px["ap"], "pixel_pro": px["pro"],
                    "pixel_pro_binned": px["pro_binned"]})
    return out


def optional_float(v: Optional[float]) -> float:
    return math.nan if v is None else float(v)
