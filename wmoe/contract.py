"""The deployment contract: everything export writes and deployment reads, defined once (standard library + numpy).

Exporters (:mod:`wmoe.export`) write it into ONNX metadata and the TensorRT engine sidecar; the runtime
(:mod:`wmoe.runtime`), the serving and bench code read it back through :class:`ModelMeta` and :class:`EngineSidecar`.
Nothing here imports torch, onnx or onnxruntime, so a runtime-only install (``pip install "wmoe[runtime]"``) has it.

Contents: CLIP mean/std, image file extensions, input/output tensor names, the preprocessing spec, the precision
vocabulary, the ONNX metadata keys (:class:`ModelMeta`), the decision that travels with the model
(:class:`Decision`), and the engine sidecar with its single compatibility check (:func:`check_engine_compat`,
:class:`EngineCompatError`).
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ContractError, WMoEError  # noqa: F401  (ContractError: re-exported, its old home)
from .kernels.stages import plugin_stages, stage_specs

# --- constants ----------------------------------------------------------------------------------------------------

#: OpenAI CLIP normalization (open_clip's OPENAI_DATASET_MEAN / _STD), applied to RGB in [0, 1].
CLIP_MEAN: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: File suffixes treated as images everywhere (data trees, predict folders, the camera loop); compared lower-case.
IMAGE_EXTENSIONS: Tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: Model inputs: ``images`` (N,3,S,S) float32 normalized, or ``frames`` (N,H,W,3) uint8 RGB (preprocessing in-graph).
INPUT_IMAGES = "images"
INPUT_FRAMES = "frames"
INPUT_KINDS: Tuple[str, ...] = (INPUT_IMAGES, INPUT_FRAMES)

#: Model outputs, in order: image scores s_hat (N,), anomaly maps (N,S,S), text scores s_txt (N,).
OUTPUT_SCORES, OUTPUT_MAPS, OUTPUT_TEXT_SCORES = "scores", "maps", "text_scores"
OUTPUT_NAMES: Tuple[str, ...] = (OUTPUT_SCORES, OUTPUT_MAPS, OUTPUT_TEXT_SCORES)

#: Export flavors: ``portable`` (standard ONNX ops) or ``plugin`` (fused stages as TensorRT plugin nodes).
FLAVORS: Tuple[str, ...] = ("portable", "plugin")
#: The plugin flavor's custom nodes = TensorRT plugin names (namespace, op types): written by the exporter
#: (wmoe.export.plugin_graph), registered by the engine build (wmoe.export.trt_plugins), which runs without torch.
#: The op types are those of the stage records (wmoe.kernels.stages: data, no torch), named here for readers.
PLUGIN_DOMAIN = "wmoe"
PLUGIN_OPS: Tuple[str, ...] = tuple(plugin_stages())
PLUGIN_WCMA_OP = stage_specs()["wcma_frequency"].plugin.op  # type: ignore[union-attr]
PLUGIN_MOE_OP = stage_specs()["moe_experts"].plugin.op  # type: ignore[union-attr]

#: The precision vocabulary. Which path supports which is checked where it is used (ONNX export: fp32/fp16;
#: ``wmoe export quantize``: int8/fp8 Q/DQ graphs).
PRECISIONS: Tuple[str, ...] = ("fp32", "fp16", "bf16", "int8", "fp8")
#: Precisions of an explicitly quantized (Q/DQ) ONNX, and what its other layers run in.
QUANTIZED_PRECISIONS: Tuple[str, ...] = ("int8", "fp8")
HIGH_PRECISIONS: Tuple[str, ...] = ("fp16", "fp32")
_PRECISION_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}

#: What a score means (stored with the decision so a deployed model is self-describing).
SCORE_MEANING = ("s_hat = s_txt + max(anomaly map) (paper Eq. 8); unbounded above, higher = more anomalous; "
                 "maps are per-pixel anomaly probabilities in [0, 1]")

#: The one verdict vocabulary, per image, of every path (runtime, Detector, predict, eval, camera, app, gate):
#: ``undecided`` is a non-finite output or no threshold known — a fault is counted, never passed as ``normal``.
VERDICT_ANOMALOUS, VERDICT_NORMAL, VERDICT_UNDECIDED = "anomalous", "normal", "undecided"
VERDICTS: Tuple[str, ...] = (VERDICT_ANOMALOUS, VERDICT_NORMAL, VERDICT_UNDECIDED)

#: Prefix of every metadata key wmoe writes into an ONNX file.
META_PREFIX = "wmoe."


class EngineCompatError(WMoEError, RuntimeError):
    """A TensorRT engine cannot run here (other GPU, other TensorRT, other input shape, missing/damaged sidecar)."""


def parse_precision(name: str) -> str:
    """Canonical precision name (``float16`` -> ``fp16``); a ValueError listing the vocabulary otherwise."""
    n = _PRECISION_ALIASES.get(str(name).lower(), str(name).lower())
    if n not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}: use one of {', '.join(PRECISIONS)}")
    return n


def sha256_file(path: Union[str, Path], chunk: int = 1 << 22) -> str:
    """SHA-256 of a file (how checkpoint, ONNX and weights hashes in metadata and sidecars are computed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(chunk), b""):
            h.update(b)
    return h.hexdigest()


def is_image_name(name: Union[str, Path]) -> bool:
    """True for a visible file name with an image suffix (``._foo.png`` macOS resource forks are not images)."""
    p = Path(name)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


# --- preprocessing spec -------------------------------------------------------------------------------------------

#: The resize this version implements (see :class:`PreprocessSpec`); a model naming another one is refused.
RESIZE_BILINEAR_BOX = "bilinear-box"
RESIZE = RESIZE_BILINEAR_BOX


@dataclass(frozen=True)
class PreprocessSpec:
    """How an RGB uint8 HxWx3 image becomes the model's (3,S,S) input — implemented by :mod:`wmoe.model.preprocess`
    (torch), :mod:`wmoe.runtime.frames` (numpy) and in-graph by the ``frames`` ONNX.

    Squash resize to SxS (no crop: the whole part stays in view), then ``(x / 255 - mean) / std`` per channel.
    ``resize`` names the interpolation; :data:`RESIZE` is the one this version implements, ``bilinear-box``: with
    integer factors ``kh = max(1, H // S)``, ``kw = max(1, W // S)``, bilinear interpolation (half-pixel centres, no
    antialias) to ``(S*kh, S*kw)`` followed by a ``kh x kw`` box average — plain ONNX ``Resize(linear)`` +
    ``AveragePool``, which ONNX Runtime, TensorRT and OpenVINO compute the same way.
    """

    size: int
    resize: str = RESIZE
    mean: Tuple[float, float, float] = CLIP_MEAN
    std: Tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        if int(self.size) <= 0:
            raise ContractError(f"preprocessing size must be positive, got {self.size}")
        if self.resize != RESIZE:
            raise ContractError(f"unknown resize {self.resize!r} (this wmoe implements {RESIZE!r}): "
                                f"re-export the model with this version")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ContractError(f"mean/std must be 3 values with std > 0, got {self.mean} / {self.std}")

    def box_factors(self, h: int, w: int) -> Tuple[int, int]:
        """The integer box-average factors for an HxW input."""
        return max(1, int(h) // self.size), max(1, int(w) // self.size)

    def to_json(self) -> str:
        return json.dumps({"size": self.size, "resize": self.resize, "mean": list(self.mean), "std": list(self.std)},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PreprocessSpec":
        d = json.loads(text)
        return cls(int(d["size"]), d.get("resize", RESIZE), tuple(d["mean"]), tuple(d["std"]))


# --- the decision -------------------------------------------------------------------------------------------------

#: How a decision's image threshold was set (``CalibrationRecord.method``).
METHOD_FALSE_REJECT = "false-reject-rate"  # from good images only: the finite-sample quantile (calibration)
METHOD_F1_MAX = "f1-max"                   # labelled images: the F1-max point of the PR curve
METHOD_DEFECT_RECALL = "defect-recall"     # labelled images: the highest threshold reaching a defect recall
METHOD_GIVEN = "given"                     # a number the user typed (export --threshold, ...)
CALIBRATION_METHODS: Tuple[str, ...] = (METHOD_FALSE_REJECT, METHOD_F1_MAX, METHOD_DEFECT_RECALL, METHOD_GIVEN)


@dataclass
class CalibrationRecord:
    """How a :class:`Decision` was calibrated: the typed view of ``Decision.calibration`` (a JSON object).

    ``method`` is one of :data:`CALIBRATION_METHODS` ("" in files written before it was recorded), ``target`` the
    false-reject rate or defect recall aimed at, ``quantile_rule`` the order-statistic rule in words, ``n_good`` /
    ``n_defective`` the images it was computed from, ``per_class`` the same per product class, ``operating_points``
    every threshold computed (method -> threshold, confusion counts), ``model`` / ``model_sha256`` what scored the
    images. Keys this version does not know (older files: ``rule``, ``data_root``, ...) are kept in ``extra`` and
    written back unchanged.
    """

    method: str = ""
    target: Optional[float] = None
    quantile_rule: str = ""
    n_good: int = 0
    n_defective: int = 0
    pixel_method: str = ""
    pixel_target: Optional[float] = None
    data: str = ""
    model: str = ""
    model_sha256: str = ""
    checkpoint_sha256: str = ""
    created: str = ""
    tool: str = ""
    per_class: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    operating_points: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "extra" and v not in ("", None, {}, 0)}
        return {**self.extra, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CalibrationRecord":
        known = {f.name for f in fields(cls)} - {"extra"}
        rec = cls(**{k: v for k, v in d.items() if k in known},
                  extra={k: v for k, v in d.items() if k not in known})
        if rec.method and rec.method not in CALIBRATION_METHODS:
            raise ContractError(f"unknown calibration method {rec.method!r} (known: {', '.join(CALIBRATION_METHODS)})")
        return rec


def above_threshold(scores: Union[float, np.ndarray], threshold: float) -> np.ndarray:
    """The comparison inside the verdict rule, vectorized: ``score >= threshold`` (a score AT the threshold is
    anomalous). :meth:`Decision.verdict` judges with it; sweeps that only count (calibration's confusion counts, the
    decision plot) call it on whole arrays. A NaN score compares False here: judging goes through the Decision,
    which makes it ``undecided`` first."""
    return np.asarray(scores, np.float64) >= float(threshold)


def _finite(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ContractError(f"decision {name} must be a finite number, got {v!r}")
    return float(v)


@dataclass
class Decision:
    """The decision that travels with a model, written by ``wmoe calibrate`` (or ``wmoe eval --write-threshold``).

    - ``threshold``: image threshold on ``scores`` (anomalous when ``score >= threshold``); with per-class
      thresholds, the one for images of no (or an unlisted) class.
    - ``class_thresholds``: per product class (``{"pcb": 1.28, "screw": 1.52}``), chosen at run time by a class
      name (:meth:`threshold_for`).
    - ``pixel_threshold`` / ``class_pixel_thresholds``: the same on ``maps`` for the defect mask.
    - ``score``: what a score means; ``calibration``: how it was calibrated (:class:`CalibrationRecord` as a dict).

    One serialization (:meth:`to_json` / :meth:`from_json`) is used by every carrier: ``CKPT.threshold.json``, the
    ONNX ``wmoe.decision`` metadata, the engine sidecar (which copies that metadata) and the Triton repository's
    ``config.pbtxt`` parameters (likewise). Empty per-class maps are not written, so a decision without classes
    reads the same as before they existed, and files written before are read unchanged.
    """

    threshold: Optional[float] = None
    pixel_threshold: Optional[float] = None
    score: str = SCORE_MEANING
    calibration: Dict[str, Any] = field(default_factory=dict)
    class_thresholds: Dict[str, float] = field(default_factory=dict)
    class_pixel_thresholds: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("threshold", "pixel_threshold"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, _finite(name, v))
        for name in ("class_thresholds", "class_pixel_thresholds"):
            m = getattr(self, name) or {}
            if not isinstance(m, Mapping):
                raise ContractError(f"decision {name} must map class names to numbers, got {type(m).__name__}")
            setattr(self, name, {str(c): _finite(f"{name}[{c!r}]", v) for c, v in sorted(m.items())})
        if not isinstance(self.calibration, Mapping):
            raise ContractError(f"decision calibration must be a JSON object, got {type(self.calibration).__name__}")
        self.calibration = dict(self.calibration)
        CalibrationRecord.from_dict(self.calibration)  # an unknown method is refused when read, not when used

    @property
    def record(self) -> CalibrationRecord:
        """How this decision was calibrated (typed)."""
        return CalibrationRecord.from_dict(self.calibration)

    @property
    def classes(self) -> List[str]:
        """The classes with their own image or pixel threshold (sorted)."""
        return sorted(set(self.class_thresholds) | set(self.class_pixel_thresholds))

    def check_class(self, class_name: Optional[str]) -> None:
        """Refuse a class name this decision does not know while it has per-class thresholds (a typo would
        otherwise silently judge parts by the global threshold)."""
        if class_name is not None and self.classes and class_name not in self.classes:
            raise ContractError(f"no threshold for class {class_name!r}: this model's decision knows "
                                f"{', '.join(self.classes)} (or give no class for the global threshold)")

    def threshold_for(self, class_name: Optional[str] = None) -> Optional[float]:
        """The image threshold for ``class_name`` (its own, else the global one; None: no threshold known)."""
        if class_name is not None and class_name in self.class_thresholds:
            return self.class_thresholds[class_name]
        return self.threshold

    def pixel_threshold_for(self, class_name: Optional[str] = None) -> Optional[float]:
        if class_name is not None and class_name in self.class_pixel_thresholds:
            return self.class_pixel_thresholds[class_name]
        return self.pixel_threshold

    def verdict(self, score: float, class_name: Optional[str] = None) -> str:
        """THE verdict rule, the only one in wmoe: ``anomalous`` when ``score >= threshold``, else ``normal``;
        ``undecided`` for a non-finite score (a broken model or frame must never pass as normal) or when no
        threshold is known for ``class_name``."""
        t = self.threshold_for(class_name)
        v = float(score)
        if t is None or not math.isfinite(v):
            return VERDICT_UNDECIDED
        return VERDICT_ANOMALOUS if above_threshold(v, t) else VERDICT_NORMAL

    def verdicts(self, scores: np.ndarray, class_names: Union[None, str, Sequence[Optional[str]]] = None
                 ) -> List[str]:
        """:meth:`verdict` per image. ``class_names``: one class for all images or one per image (None: the
        global threshold)."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        names = ([class_names] * len(s) if class_names is None or isinstance(class_names, str)
                 else list(class_names))
        if len(names) != len(s):
            raise ContractError(f"{len(names)} class names for {len(s)} scores")
        return [self.verdict(v, c) for v, c in zip(s, names)]

    def judge(self, scores: np.ndarray, maps: Optional[Sequence[np.ndarray]] = None,
              text_scores: Optional[np.ndarray] = None,
              class_names: Union[None, str, Sequence[Optional[str]]] = None) -> "Tuple[List[str], List[str]]":
        """(verdicts, faults) of a model's outputs: THE NaN policy of every path. An image whose score, text score
        or map is not finite is a fault (``faults[i]`` says what, "" otherwise) and its verdict is ``undecided``:
        counted, never judged, never an exception that would stop a line for one bad part."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        faults = [output_fault(s[i], None if text_scores is None else text_scores[i],
                               None if maps is None else maps[i]) for i in range(len(s))]
        return self.verdicts(np.where([bool(f) for f in faults], np.nan, s), class_names), faults

    def mask(self, amap: np.ndarray, class_name: Optional[str] = None) -> Optional[np.ndarray]:
        """Boolean defect mask ``amap >= pixel threshold`` (None when no pixel threshold is known). Non-finite
        pixels are marked defective: a fault is never hidden."""
        t = self.pixel_threshold_for(class_name)
        if t is None:
            return None
        a = np.asarray(amap)
        return (a >= t) | ~np.isfinite(a)

    def with_overrides(self, threshold: Optional[float] = None,
                       pixel_threshold: Optional[float] = None) -> "Decision":
        """A copy where a given ``threshold`` / ``pixel_threshold`` replaces the stored one for every class (a
        number typed by the user wins over what calibration chose; the record says so)."""
        if threshold is None and pixel_threshold is None:
            return Decision(**self.to_dict())
        d = self.to_dict()
        cal = dict(d.get("calibration", {}))
        if threshold is not None:
            d["threshold"], d["class_thresholds"] = threshold, {}
            cal["overridden"] = sorted(set(cal.get("overridden", [])) | {"threshold"})
        if pixel_threshold is not None:
            d["pixel_threshold"], d["class_pixel_thresholds"] = pixel_threshold, {}
            cal["overridden"] = sorted(set(cal.get("overridden", [])) | {"pixel_threshold"})
        d["calibration"] = cal
        return Decision(**d)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        for k in ("class_thresholds", "class_pixel_thresholds"):
            if not d[k]:
                del d[k]  # files without classes stay readable by versions before them
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "decision") -> "Decision":
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ContractError(f"{source}: unknown decision fields {extra} (known: {sorted(known)})")
        try:
            return cls(**dict(d))
        except ContractError as e:
            raise ContractError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "decision") -> "Decision":
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ContractError(f"{source}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ContractError(f"{source}: expected a JSON object, got {type(d).__name__}")
        return cls.from_dict(d, source)


def output_fault(score: float, text_score: Optional[float] = None, amap: Optional[np.ndarray] = None) -> str:
    """What is wrong with one image's outputs ("" when all are finite): the fault text of :meth:`Decision.judge`."""
    bad = [name for name, a in (("score", score), ("text score", text_score), ("map", amap))
           if a is not None and not np.isfinite(a).all()]
    return f"non-finite {' and '.join(bad)} (a broken model or input): not judged" if bad else ""


def verdict_label(verdict: str) -> str:
    """How a verdict is printed (CLI lines, overlay banners): the vocabulary's word in capitals."""
    if verdict not in VERDICTS:
        raise ContractError(f"unknown verdict {verdict!r} (known: {', '.join(VERDICTS)})")
    return verdict.upper()


def count_verdicts(verdicts: Sequence[str]) -> Dict[str, int]:
    """How many images got each verdict (every word of :data:`VERDICTS`, zero included): undecided images are
    counted, so a report never hides them."""
    out = {v: 0 for v in VERDICTS}
    for v in verdicts:
        out[v] += 1
    return out


def threshold_path(checkpoint: Union[str, Path]) -> Path:
    """Where a checkpoint's decision lives: ``<checkpoint>.threshold.json`` beside it (written by ``wmoe calibrate``
    or ``wmoe eval --write-threshold``)."""
    p = Path(checkpoint)
    return p.with_name(p.name + ".threshold.json")


def read_decision_file(path: Union[str, Path]) -> Decision:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ContractError(f"{p}: no such decision file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ContractError(f"{p}: cannot read the decision file ({e})") from None
    return Decision.from_json(text, str(p))


def decision_for_checkpoint(checkpoint: Union[str, Path], checkpoint_sha256: Optional[str] = None
                            ) -> Optional[Decision]:
    """The decision stored beside ``checkpoint`` (None when there is none). A file calibrated on another
    checkpoint (its recorded SHA-256 differs: the checkpoint was retrained or replaced since) is refused, naming both
    files, so a stale threshold never ships with a model."""
    tp = threshold_path(checkpoint)
    if not tp.is_file():
        return None
    decision = read_decision_file(tp)
    recorded = decision.calibration.get("checkpoint_sha256")
    if recorded:
        actual = checkpoint_sha256 or sha256_file(checkpoint)
        if recorded != actual:
            raise ContractError(f"{tp}: calibrated on another checkpoint (SHA-256 {recorded[:12]}..., {checkpoint} "
                                f"is {actual[:12]}...): re-run wmoe calibrate on it, or give the threshold explicitly")
    return decision


def decision_metadata(decision: Decision) -> Dict[str, str]:
    """The metadata entries that carry a decision (ONNX ``metadata_props``, engine sidecar, Triton parameters):
    ``wmoe.decision`` (:meth:`Decision.to_json`) and, when there is a global threshold, the plain
    ``wmoe.threshold`` a generic tool (Netron, Triton's model config) shows."""
    m = {META_PREFIX + "decision": decision.to_json()}
    if decision.threshold is not None:
        m[META_PREFIX + "threshold"] = repr(decision.threshold)
    return m


#: The metadata keys :func:`decision_metadata` may write (all are replaced when a decision is rewritten).
DECISION_METADATA_KEYS: Tuple[str, ...] = (META_PREFIX + "decision", META_PREFIX + "threshold")


# --- the CPU precision decision -----------------------------------------------------------------------------------

#: What the OpenVINO CPU backend can run (``wmoe.runtime.openvino_backend``): the fp32 graph exactly (``f32``), the
#: fp32 graph in bf16 (CPUs with bf16), or the int8 Q/DQ model of ``wmoe export quantize``.
CPU_PRECISIONS: Tuple[str, ...] = ("f32", "bf16", "int8")


@dataclass
class CpuPrecision:
    """Which precision the OpenVINO CPU backend runs by default, decided once by ``wmoe export cpu-precision``: the
    fastest of :data:`CPU_PRECISIONS` that passed the accuracy gate on the user's images (f32 always passes).

    ``candidates``: per precision its gate figures (``passed``, ``failures``, Spearman, AUROC change, verdict
    agreement) and measured ``images_per_s``; ``int8_model``: the Q/DQ file (a name beside this model) and its
    SHA-256, so a replaced file is never run on an old verdict."""

    choice: str = "f32"
    candidates: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    int8_model: str = ""
    int8_sha256: str = ""
    gate_on: str = ""
    cpu: str = ""
    batch: int = 1

    def __post_init__(self) -> None:
        bad = sorted({self.choice, *self.candidates} - set(CPU_PRECISIONS))
        if bad:
            raise ContractError(f"unknown CPU precision(s) {bad} (known: {', '.join(CPU_PRECISIONS)})")
        if self.choice != "f32" and not self.candidates.get(self.choice, {}).get("passed"):
            raise ContractError(f"CPU precision {self.choice} is stored as the choice but did not pass the gate")

    def order(self) -> List[str]:
        """The precisions to try, in order: the choice, then the others that passed, fastest first; f32 (exact)
        always ends the list."""
        ok = [p for p, c in self.candidates.items() if c.get("passed") or p == self.choice]
        ok.sort(key=lambda p: (p != self.choice, -float(self.candidates[p].get("images_per_s", 0.0))))
        return ok + ([] if "f32" in ok else ["f32"])

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "cpu precision") -> "CpuPrecision":
        try:
            d = json.loads(text)
            known = {f.name for f in fields(cls)}
            if not isinstance(d, dict) or set(d) - known:
                raise ValueError(f"expected an object with fields {sorted(known)}")
            return cls(**d)
        except ContractError as e:
            raise ContractError(f"{source}: {e}") from None
        except (ValueError, TypeError) as e:
            raise ContractError(f"{source}: damaged CPU precision record ({e})") from None


# --- ONNX metadata ------------------------------------------------------------------------------------------------

def wmoe_metadata(meta: Mapping[str, str]) -> Dict[str, str]:
    """The ``wmoe.*`` entries of a model's metadata, verbatim (what an engine sidecar carries); {} for an ONNX file
    that is not a wmoe model. The key prefix is spelt only here and in :class:`ModelMeta`."""
    return {k: v for k, v in meta.items() if k.startswith(META_PREFIX)}


@dataclass
class ModelMeta:
    """The ``wmoe.*`` metadata of an exported model (ONNX ``metadata_props``; copied into the engine sidecar).

    The one place that maps field <-> metadata key and parses values; every reader goes through
    :meth:`from_metadata`.
    """

    image_size: int
    input: str = INPUT_IMAGES
    frame_size: Optional[Tuple[int, int]] = None
    flavor: str = "portable"
    precision: str = "fp32"
    preprocess: Optional[PreprocessSpec] = None
    decision: Decision = field(default_factory=Decision)
    config: str = ""
    checkpoint_sha256: str = ""
    version: str = ""
    exporter: str = ""
    quantization: str = ""  # Q/DQ models: JSON summary (tool, method, images, high precision, kept layer groups)
    reference: str = ""  # normal-reference mode: JSON summary of the product's reference (wmoe.reference.store)
    cpu_precision: Optional[CpuPrecision] = None  # the OpenVINO CPU backend's gated default (wmoe export cpu-precision)

    def __post_init__(self) -> None:
        if self.preprocess is None:
            self.preprocess = PreprocessSpec(int(self.image_size))
        if self.input not in INPUT_KINDS:
            raise ContractError(f"model input must be one of {INPUT_KINDS}, got {self.input!r}")
        if self.flavor not in FLAVORS:
            raise ContractError(f"model flavor must be one of {FLAVORS}, got {self.flavor!r}")
        self.precision = parse_precision(self.precision)
        if self.input == INPUT_FRAMES and not self.frame_size:
            raise ContractError("a frames-input model needs its frame_size (H, W)")

    @property
    def mean(self) -> Tuple[float, float, float]:
        return self.preprocess.mean

    @property
    def std(self) -> Tuple[float, float, float]:
        return self.preprocess.std

    def to_metadata(self) -> Dict[str, str]:
        """``{"wmoe.<field>": str}`` for ONNX ``metadata_props`` (values are JSON where not plain strings)."""
        m = {
            "image_size": str(int(self.image_size)), "input": self.input, "flavor": self.flavor,
            "precision": self.precision, "preprocess": self.preprocess.to_json(),
            "mean": json.dumps(list(self.mean)), "std": json.dumps(list(self.std)),
            "config": self.config,
            "checkpoint_sha256": self.checkpoint_sha256, "version": self.version, "exporter": self.exporter,
        }
        m.update({k[len(META_PREFIX):]: v for k, v in decision_metadata(self.decision).items()})
        if self.frame_size:
            m["frame_size"] = json.dumps([int(v) for v in self.frame_size])
        if self.quantization:
            m["quantization"] = self.quantization
        if self.reference:
            m["reference"] = self.reference
        if self.cpu_precision is not None:
            m["cpu_precision"] = self.cpu_precision.to_json()
        return {META_PREFIX + k: v for k, v in m.items()}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str = "model") -> "ModelMeta":
        """Parse ``wmoe.*`` metadata; a :class:`ContractError` naming ``source`` when it is not a wmoe model."""
        g = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        if "image_size" not in g:
            raise ContractError(f"{source} is not a wmoe model (no {META_PREFIX}image_size metadata; export it with "
                                f"wmoe export onnx)")
        try:
            size = int(g["image_size"])
            spec = (PreprocessSpec.from_json(g["preprocess"]) if "preprocess" in g else
                    PreprocessSpec(size, mean=tuple(json.loads(g.get("mean", json.dumps(CLIP_MEAN)))),
                                   std=tuple(json.loads(g.get("std", json.dumps(CLIP_STD))))))
            decision = Decision.from_json(g["decision"], f"{source} decision") if "decision" in g else Decision()
            fs = tuple(int(v) for v in json.loads(g["frame_size"])) if "frame_size" in g else None
            return cls(image_size=size, input=g.get("input", INPUT_IMAGES), frame_size=fs,
                       flavor=g.get("flavor", "portable"), precision=g.get("precision", "fp32"), preprocess=spec,
                       decision=decision, config=g.get("config", ""), checkpoint_sha256=g.get("checkpoint_sha256", ""),
                       version=g.get("version", ""), exporter=g.get("exporter", ""),
                       quantization=g.get("quantization", ""), reference=g.get("reference", ""),
                       cpu_precision=CpuPrecision.from_json(g["cpu_precision"], f"{source} cpu_precision")
                       if "cpu_precision" in g else None)
        except ContractError as e:
            raise ContractError(f"{source}: {e}") from None
        except (ValueError, TypeError, KeyError) as e:
            raise ContractError(f"{source}: damaged wmoe metadata ({type(e).__name__}: {e})") from None


def signature_problems(meta: ModelMeta, inputs: Mapping[str, Sequence[Any]],
                       outputs: Mapping[str, Sequence[Any]]) -> List[str]:
    """Where a model's input and map shapes (``name -> shape`` with the batch axis first, as an ONNX graph or an
    engine sidecar lists them) contradict its ``wmoe.*`` metadata: ``[]`` when they agree. A dimension that is not
    a fixed size (a dynamic axis: ``-1``, ``None`` or a name) is not compared. Both the engine sidecar and the ONNX
    readers refuse a model with problems at load, so a hand-edited or mixed file never serves frames of one size
    while its contract (threshold, preprocessing, Triton config) says another."""
    def fixed(d: Any) -> bool:
        return isinstance(d, int) and not isinstance(d, bool) and d >= 0

    problems = []
    for name, shape in list(inputs.items())[:1]:
        want = [*meta.frame_size, 3] if meta.input == INPUT_FRAMES else [3, meta.image_size, meta.image_size]
        got = list(shape[1:])
        if len(got) != len(want) or any(fixed(g) and g != w for g, w in zip(got, want)):
            problems.append(f"input {name!r} is {got} per image but its metadata says {want} "
                            f"({meta.input}, image_size {meta.image_size}"
                            + (f", frame_size {list(meta.frame_size)})" if meta.frame_size else ")"))
    maps = outputs.get(OUTPUT_NAMES[1])
    if maps is not None:
        got = list(maps[1:])
        if len(got) != 2 or any(fixed(g) and g != meta.image_size for g in got):
            problems.append(f"output 'maps' is {got} but its metadata says image_size {meta.image_size}")
    return problems


def read_onnx_contract(path: Union[str, Path]) -> ModelMeta:
    """The :class:`ModelMeta` of an exported ONNX, refused (:class:`ContractError` naming the file and the fields)
    when it is not a wmoe model or its graph's input or map shapes contradict it: every reader that serves or
    scores an ONNX opens it here (the typed reader: no other module parses ``wmoe.*`` keys). Standard library only
    (:mod:`wmoe.onnx_meta` walks the protobuf; no onnx package)."""
    from .onnx_meta import read_onnx_io, read_onnx_metadata
    meta = ModelMeta.from_metadata(read_onnx_metadata(path), str(path))
    inputs, outputs = read_onnx_io(path)
    problems = signature_problems(meta, inputs, outputs)
    if problems:
        raise ContractError(f"{path}: its metadata contradicts its graph: {'; '.join(problems)}; re-export it "
                            "(wmoe export onnx) instead of editing its metadata")
    return meta


# --- TensorRT engine sidecar --------------------------------------------------------------------------------------

def major_minor(v: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


@dataclass
class EngineSidecar:
    """The JSON written beside a TensorRT engine (``model.engine`` -> ``model.json``): what it was built for, and
    the exported model's ``wmoe.*`` metadata (:class:`ModelMeta`, with the decision) copied verbatim."""

    engine: str
    onnx_sha256: str
    checkpoint_sha256: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    inputs: Dict[str, List[int]] = field(default_factory=dict)  # name -> shape with -1 for the batch
    outputs: Dict[str, List[int]] = field(default_factory=dict)
    batch_ranges: List[List[int]] = field(default_factory=list)  # one [min, opt, max] per optimization profile
    flavor: str = "portable"
    host: str = field(default_factory=platform.machine)
    metadata: Dict[str, str] = field(default_factory=dict)  # the ONNX's wmoe.* metadata
    engine_sha256: str = ""  # the engine's bytes this sidecar describes ("" in sidecars of wmoe < 0.1 round 2)

    @staticmethod
    def path_for(engine: Union[str, Path]) -> Path:
        return Path(engine).with_suffix(".json")

    @property
    def model_meta(self) -> ModelMeta:
        return ModelMeta.from_metadata(self.metadata, f"engine sidecar of {self.engine}")

    def write(self, path: Union[str, Path]) -> Path:
        from .atomic import atomic_write_text
        atomic_write_text(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return Path(path)

    def check_engine(self, engine: Union[str, Path], data: Optional[bytes] = None) -> bool:
        """Refuse an engine whose bytes are not the ones this sidecar was written for (a sidecar copied or left
        beside another engine would hand it another model's threshold and contract), naming both. ``data``: the
        engine's bytes when already read. False when the sidecar predates the hash (nothing to check)."""
        if not self.engine_sha256:
            return False
        got = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(engine)
        if got != self.engine_sha256:
            raise EngineCompatError(f"{engine}: its sidecar {EngineSidecar.path_for(engine)} was written for another "
                                    f"engine ({self.engine}, SHA-256 {self.engine_sha256[:12]}...; this file is "
                                    f"{got[:12]}...): rebuild the engine with wmoe export trt, or put its own "
                                    "sidecar beside it")
        return True

    def check_contract(self, source: Union[str, Path]) -> None:
        """The engine's input and map shapes must be the ones its metadata (the exported model's contract) says: a
        sidecar edited or mixed by hand is refused at load, naming the fields."""
        if f"{META_PREFIX}image_size" not in self.metadata:  # no contract to contradict (model_meta refuses it)
            return
        meta = ModelMeta.from_metadata(self.metadata, f"{source}")
        problems = signature_problems(meta, self.inputs, self.outputs)
        if problems:
            raise EngineCompatError(f"{source}: the sidecar contradicts itself: {'; '.join(problems)}; rebuild the "
                                    "engine (wmoe export trt) instead of editing its sidecar")

    @classmethod
    def read(cls, path: Union[str, Path]) -> "EngineSidecar":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
            side = cls(**d)
        except FileNotFoundError:
            raise EngineCompatError(f"{path}: engine sidecar missing (it is written next to the engine by "
                                    f"wmoe export trt)") from None
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            raise EngineCompatError(f"{path}: damaged engine sidecar ({e})") from None
        try:
            side.check_contract(path)
        except ContractError as e:
            raise EngineCompatError(str(e)) from None
        return side


def check_engine_compat(sidecar: EngineSidecar, gpu_name: str, tensorrt_version: str,
                        input_shape: Optional[Sequence[int]] = None) -> None:
    """The one engine compatibility check: raise :class:`EngineCompatError` naming the mismatch. Engines are tied to
    a GPU model and a TensorRT major.minor; with ``input_shape`` also its rank, fixed dims and batch ranges."""
    if sidecar.gpu_name != gpu_name:
        raise EngineCompatError(f"engine {sidecar.engine} was built for {sidecar.gpu_name!r}, this GPU is "
                                f"{gpu_name!r}: rebuild it here (wmoe export trt)")
    if major_minor(sidecar.tensorrt_version) != major_minor(tensorrt_version):
        raise EngineCompatError(f"engine {sidecar.engine} was built with TensorRT {sidecar.tensorrt_version}, "
                                f"this is TensorRT {tensorrt_version}: rebuild it (engines do not move across "
                                f"versions)")
    if input_shape is not None:
        if not sidecar.inputs:
            raise EngineCompatError(f"engine {sidecar.engine}: its sidecar lists no inputs (damaged?)")
        want = next(iter(sidecar.inputs.values()))
        n = input_shape[0]
        ok_batch = any(lo <= n <= hi for lo, _, hi in sidecar.batch_ranges) if sidecar.batch_ranges else True
        if len(want) != len(input_shape) or any(w not in (-1, g) for w, g in zip(want, input_shape)) or not ok_batch:
            raise EngineCompatError(f"input shape {tuple(input_shape)} does not fit engine {sidecar.engine}: "
                                    f"expects {want} with batch in {sidecar.batch_ranges}")


# --- the decision's carriers: one reader, one writer ----------------------------------------------------------------

ENGINE_SUFFIXES: Tuple[str, ...] = (".engine", ".plan")


def decision_carrier(path: Union[str, Path]) -> str:
    """Which file holds the decision of the model at ``path``: ``onnx`` (its metadata), ``engine`` (the sidecar's
    copy of that metadata), ``file`` (a decision JSON such as ``CKPT.threshold.json``) or ``checkpoint`` (the
    ``<checkpoint>.threshold.json`` beside it)."""
    p = Path(path)
    if p.suffix == ".onnx":
        return "onnx"
    if p.suffix in ENGINE_SUFFIXES:
        return "engine"
    if p.suffix == ".json":
        return "file"
    return "checkpoint"


def read_decision(path: Union[str, Path]) -> Decision:
    """The decision of a model (ONNX, engine, checkpoint) or a decision file; an empty :class:`Decision` for a
    checkpoint without one. Every reader of a stored decision goes through here or :class:`ModelMeta`."""
    kind = decision_carrier(path)
    if kind == "onnx":
        from .onnx_meta import read_onnx_metadata
        return ModelMeta.from_metadata(read_onnx_metadata(path), str(path)).decision
    if kind == "engine":
        return EngineSidecar.read(EngineSidecar.path_for(path)).model_meta.decision
    if kind == "file":
        return read_decision_file(path)
    return decision_for_checkpoint(path) or Decision()


def write_decision(path: Union[str, Path], decision: Decision, out: Optional[Union[str, Path]] = None) -> Path:
    """Store ``decision`` with the model at ``path``; return the file written. Atomic: written beside, then renamed,
    so a reader sees the old decision or the new one, never a torn file.

    - checkpoint: ``<checkpoint>.threshold.json`` (``out``: another file name);
    - ONNX: its ``wmoe.decision`` / ``wmoe.threshold`` metadata entries are replaced, the graph copied byte for byte
      (``out``: write the result to another ONNX file and leave ``path`` as it is);
    - engine: the sidecar's copy of that metadata (TensorRT engines cannot carry metadata themselves).

    A Triton repository takes the decision of the ONNX / engine / checkpoint it is written from.
    """
    from .atomic import atomic_write_text
    kind = decision_carrier(path)
    if kind == "onnx":
        from .onnx_meta import write_onnx_metadata
        return write_onnx_metadata(path, decision_metadata(decision), remove=DECISION_METADATA_KEYS, out=out)
    if kind == "engine":
        side_path = EngineSidecar.path_for(path)
        side = EngineSidecar.read(side_path)
        meta = {k: v for k, v in side.metadata.items() if k not in DECISION_METADATA_KEYS}
        side.metadata = {**meta, **decision_metadata(decision)}
        side.model_meta  # noqa: B018 - the result must still parse
        return side.write(out or side_path)
    target = Path(out) if out is not None else (Path(path) if kind == "file" else threshold_path(path))
    atomic_write_text(target, json.dumps(decision.to_dict(), indent=2, sort_keys=True) + "\n")
    return target
