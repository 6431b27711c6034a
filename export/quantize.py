"""Post-training quantization of an exported (portable, fp32) ONNX into an explicitly quantized Q/DQ ONNX.

What TensorRT builds int8 (Orin, Ampere) and fp8 (Hopper, Ada) engines from: QuantizeLinear/DequantizeLinear pairs
around the inputs and weights of the quantized layers, the rest in ``high_precision`` (fp16 for TensorRT, fp32 to
run on a CPU). The Q/DQ insertion and calibration is NVIDIA Model Optimizer's ONNX PTQ
(``modelopt.onnx.quantization.quantize``) with ONNX Runtime's CPU execution provider; see ``docs/export.md``.

Which layers stay in higher precision is measured, not guessed: the quantized graph's layers are grouped by the
model's modules (transformer blocks of each tower, each WCMA layer, SA-MoE, CTDS, the map/score head), and on
held-out normal images

1. if everything quantized already reaches the target below, nothing is kept; otherwise
2. every group's *sensitivity* is measured with only that group quantized (1 − Pearson of scores and of maps
   against fp32), and
3. the smallest number of the most sensitive groups is kept in high precision such that the rest, quantized,
   reaches the gate's score Spearman and a map Pearson of the same value (binary search over that number).

Keeping a group = removing the Q/DQ pairs in front of its layers in the calibrated graph (no re-calibration).

The 1 + groups + log2(groups) candidates of steps 1-3 run on one graph loaded once (:func:`switchable`: every
group's Q/DQ pairs behind a ``Where`` on a boolean input), not on a graph copied, written and loaded per candidate
(on a ViT-L that was 1.8 GB three times over, 25 times). What remains is the inference itself -- runs x held-out
images x seconds per image -- bounded by ``sensitivity_images`` and ``select_budget_s`` (measured in
bench/results/quant_cpu_2core.md). The selection sees Q/DQ as the operators define it; ONNX Runtime's optimized
execution of the written file differs by a few percent of the quantization error, which the gate then measures.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import io
import json
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from wmoe.atomic import atomic_path, atomic_write_text

from .calib import DEFAULT_MAX_IMAGES, CalibrationSet, load_calibration
from .gate import GateThresholds, compare, format_figures, gate, labeled_images, run_session
from .onnx_write import write_model
from wmoe.contract import (HIGH_PRECISIONS, INPUT_FRAMES, ContractError, Decision, ModelMeta, decision_metadata,
                           read_onnx_contract, sha256_file)
from wmoe.contract import QUANTIZED_PRECISIONS as PRECISIONS
from wmoe.errors import QuantizeError  # defined in wmoe.errors; importable from here (its old home)
from wmoe.runtime.session import make_session

DEFAULT_METHOD = {"int8": "entropy", "fp8": "max"}  # Model Optimizer's defaults for each mode
METHODS = ("entropy", "max", "minmax", "percentile", "distribution")
QDQ = ("QuantizeLinear", "DequantizeLinear")


def min_heldout(min_spearman: float) -> int:
    """The fewest images on which a score Spearman of ``min_spearman`` means something.

    Over n images the smallest disorder -- two neighbouring images swapped -- gives rho = 1 - 12 / (n^3 - n).
    With fewer images than returned here that single swap (a near-tie any precision change may flip) already
    fails ``min_spearman``, so the gate cannot tell a harmless near-tie from a reordering; at 2 images rho is +-1
    whatever the model does. 11 for the default 0.99; thresholds above 0.999 (where any swap fails) count as 0.999
    (23 images)."""
    rho = min(float(min_spearman), 0.999)
    n = 3
    while 1.0 - 12.0 / (n ** 3 - n) < rho:
        n += 1
    return n


@dataclass
class QuantizeConfig:
    precision: str = "int8"
    max_images: int = DEFAULT_MAX_IMAGES  # calibration + held-out images drawn from the source
    holdout: int = 16  # of those, kept out of calibration to choose the high-precision layers
    method: Optional[str] = None  # calibration method; None: DEFAULT_METHOD[precision]
    high_precision: str = "fp16"  # what the non-quantized layers run in (fp16: TensorRT; fp32: CPU)
    keep: Union[str, Sequence[str]] = "auto"  # "auto" (measured), "none", or group names to keep
    target: Optional[float] = None  # held-out score Spearman, score Pearson and map Pearson to reach
    # (None: halfway between the gate's min_spearman and 1, a margin for the few held-out images)
    max_groups_per_tower: int = 6  # sensitivity granularity: transformer blocks are grouped into at most this many
    calibrate_per_node: bool = False  # Model Optimizer's low-memory calibration (slower; for big models)
    gate_images: Optional[int] = 200  # labeled images the gate runs on (a seeded subset); None: all
    seed: int = 0
    batch: int = 8  # ONNX Runtime batch for the held-out and gate runs
    sensitivity_images: int = 0  # held-out images the per-group sensitivities use (0: all; the target uses all)
    select_budget_s: Optional[float] = None  # seconds the selection may take: fewer sensitivity images to fit

    def resolved_method(self) -> str:
        return self.method or DEFAULT_METHOD[self.precision]


@dataclass
class QuantizeReport:
    """What the sidecar records: how the file was made and what changed."""

    precision: str
    high_precision: str
    tool: str
    calibration: Dict[str, object]
    quantized_nodes: int
    kept_groups: List[str]
    keep_reason: str
    sensitivity: Dict[str, Dict[str, float]]
    held_out: Dict[str, float]
    gate: Dict[str, object]
    source_onnx: str
    source_sha256: str
    seconds: float
    groups: Dict[str, List[str]] = field(default_factory=dict)  # group -> quantized node names
    recalibration: Dict[str, object] = field(default_factory=dict)  # the decision recalibrated on this model
    timings: Dict[str, float] = field(default_factory=dict)  # seconds: calibration, load, selection, gate
    selection: Dict[str, object] = field(default_factory=dict)  # how the selection ran (runs, images, budget)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


# ------------------------------------------------------------------------------------------------- Q/DQ graph
def _producers(graph) -> Dict[str, object]:
    return {o: n for n in graph.node for o in n.output}


def quantized_nodes(model) -> List[str]:
    """Names of the compute nodes that read a DequantizeLinear output (the layers that run quantized)."""
    prod = _producers(model.graph)
    return [n.name for n in model.graph.node if n.op_type not in QDQ
            and any(getattr(prod.get(i), "op_type", "") == "DequantizeLinear" for i in n.input)]


def _quantized_inputs(node, prod: Dict[str, object]) -> List[Tuple[int, str, str]]:
    """``(index, input, the tensor before quantization)`` of each input of ``node`` read from a Q/DQ pair."""
    out = []
    for k, inp in enumerate(node.input):
        dq = prod.get(inp)
        if getattr(dq, "op_type", "") != "DequantizeLinear":
            continue
        q = prod.get(dq.input[0])
        if getattr(q, "op_type", "") != "QuantizeLinear":
            raise QuantizeError(f"node {node.name}: input {inp} is dequantized from a stored quantized tensor "
                                f"({dq.input[0]}), which cannot be restored to high precision")
        out.append((k, inp, q.input[0]))
    return out


def keep_high_precision(model, node_names: Sequence[str]):
    """A copy of the Q/DQ ``model`` in which ``node_names`` read their inputs before quantization (their Q/DQ pairs
    bypassed); pairs and weights nothing reads any more are removed."""
    m = copy.deepcopy(model)
    g = m.graph
    prod = _producers(g)
    names = set(node_names)
    for n in g.node:
        if n.name in names and n.op_type not in QDQ:
            for k, _, before in _quantized_inputs(n, prod):
                n.input[k] = before
    _prune(m)
    return m


def _prune(m) -> None:
    """Drop nodes whose outputs nothing reads (repeatedly) and unused initializers."""
    g = m.graph
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if n.output and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)


def _scope(node) -> str:
    """The deepest ``model...`` module scope the dynamo exporter recorded for ``node`` ("" if none)."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [s for s in ast.literal_eval(p.value) if isinstance(s, str) and s.startswith("model")]
            except (ValueError, SyntaxError):
                return ""
            return scopes[-1] if scopes else ""
    return ""


_BLOCK = re.compile(r"^model\.backbone\.clip\.(visual\.)?transformer\.resblocks\.(\d+)")


def group_name(scope: str, blocks_per_group: Dict[str, int]) -> str:
    """The module group of a scope: transformer blocks of each tower in runs of ``blocks_per_group[tower]``,
    every other module by its top-level name under the model (``wcma.2``, ``samoe``, ``ctds``)."""
    m = _BLOCK.match(scope)
    if m:
        tower = "image" if m.group(1) else "text"
        k = blocks_per_group.get(tower, 1)
        a = int(m.group(2)) // k * k
        return f"{tower} blocks {a}" if k == 1 else f"{tower} blocks {a}-{a + k - 1}"
    parts = scope.split(".")[1:]
    if not parts:
        return "head (maps, scores)"
    if parts[0] == "backbone":
        if len(parts) > 2 and parts[2] == "visual":
            return "image tower (embed, proj)"
        if len(parts) > 1:
            return "text tower (embed, proj)"
        return "feature taps"
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0]


def node_groups(source, qmodel, max_groups_per_tower: int = 6) -> Dict[str, List[str]]:
    """Quantized node names of ``qmodel`` by module group (scopes read from the un-quantized ``source``, whose
    node names Model Optimizer keeps)."""
    scopes = {n.name: _scope(n) for n in source.graph.node}
    layers: Dict[str, int] = {}
    for s in scopes.values():
        m = _BLOCK.match(s)
        if m:
            t = "image" if m.group(1) else "text"
            layers[t] = max(layers.get(t, 0), int(m.group(2)) + 1)
    per = {t: -(-n // max(1, max_groups_per_tower)) for t, n in layers.items()}
    out: Dict[str, List[str]] = {}
    for name in quantized_nodes(qmodel):
        out.setdefault(group_name(scopes.get(name, ""), per), []).append(name)
    return out


# -------------------------------------------------------------------------------------------- Model Optimizer
def _modelopt_quantize(src: Path, calib: np.ndarray, input_name: str, cfg: QuantizeConfig, out: Path) -> str:
    try:
        import modelopt
        from modelopt.onnx.quantization import quantize
    except ImportError as e:
        raise QuantizeError(f"NVIDIA Model Optimizer is not installed ({e}): pip install 'wmoe[quantize]' "
                            f"(see docs/export.md)") from None
    # Model Optimizer and ONNX Runtime's calibrator print a progress bar per tensor: captured, and shown only
    # when quantization fails
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            quantize(onnx_path=str(src), quantize_mode=cfg.precision, calibration_data={input_name: calib},
                     calibration_method=cfg.resolved_method(), calibration_eps=["cpu"],
                     high_precision_dtype=cfg.high_precision, calibrate_per_node=cfg.calibrate_per_node,
                     output_path=str(out), log_level="WARNING")
    except Exception as e:  # noqa: BLE001 - any failure inside Model Optimizer, reported with its output
        raise QuantizeError(f"Model Optimizer failed on {src}: {type(e).__name__}: {e}\n"
                            f"{buf.getvalue()[-2000:]}") from e
    if not out.is_file():
        raise QuantizeError(f"Model Optimizer wrote no output for {src}")
    return f"nvidia-modelopt {modelopt.__version__} (ONNX PTQ, ONNX Runtime CPU calibration)"


# ------------------------------------------------------------------------------------------ layer selection
FLAG_PREFIX = "wmoe_quantize_"  # the switchable graph's boolean inputs, one per layer group


def switchable(model, groups: Dict[str, List[str]]):
    """One graph for every choice of groups kept in high precision: each quantized input of a group's layers is
    routed through ``Where(wmoe_quantize_<i>, DQ(Q(x)), x)``, with one boolean scalar input per group (in the
    order of ``groups``). Feeding ``True`` runs the group quantized (Q/DQ in float: the simulated quantization
    TensorRT and Model Optimizer rank layers with), ``False`` runs it on the unquantized tensor exactly as
    :func:`keep_high_precision` would.

    Why: the selection needs 1 + groups + log2(groups) candidate graphs. Built one by one, each was a deep copy,
    a write and an ONNX Runtime session of the whole model (1.8 GB for a ViT-L, ~25 of them); this graph is
    loaded once and every candidate is a different feed.
    """
    from onnx import TensorProto, helper
    m = copy.deepcopy(model)
    g = m.graph
    prod = _producers(g)
    flags = [f"{FLAG_PREFIX}{i}" for i in range(len(groups))]
    member = {n: i for i, ns in enumerate(groups.values()) for n in ns}
    made: Dict[Tuple[str, int], str] = {}
    nodes = []
    for n in g.node:
        i = member.get(n.name)
        if i is not None and n.op_type not in QDQ:
            for k, inp, before in _quantized_inputs(n, prod):
                if (inp, i) not in made:
                    made[(inp, i)] = f"{inp}__{FLAG_PREFIX}{i}"
                    # placed right before its reader: the node list stays topologically sorted
                    nodes.append(helper.make_node("Where", [flags[i], inp, before], [made[(inp, i)]],
                                                  name=f"{FLAG_PREFIX}{i}_{len(made)}"))
                n.input[k] = made[(inp, i)]
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    for f in flags:
        g.input.append(helper.make_tensor_value_info(f, TensorProto.BOOL, []))
    return m


class _Switch:
    """The switchable graph in one ONNX Runtime session: runs the held-out images with a chosen set of groups
    quantized, with a progress bar (runs and ETA) and a time budget."""

    def __init__(self, model, groups: Dict[str, List[str]], workdir: Path, batch: int, progress: bool) -> None:
        self.names = list(groups)
        path = workdir / "switchable.onnx"
        write_model(switchable(model, groups), path)
        self.session = make_session(path)
        path.unlink(missing_ok=True)  # ONNX Runtime holds the graph; the file is 1.8 GB for a ViT-L
        self.input = self.session.get_inputs()[0].name
        self.batch, self.runs, self.images, self.seconds = batch, 0, 0, 0.0
        self.bar = None
        if progress:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(desc="layer selection", unit="run", dynamic_ncols=True)
            except ImportError:  # pragma: no cover - tqdm is a dependency of the export side
                self.bar = None

    def expect(self, runs: int) -> None:
        """Tell the progress bar how many runs are left to go (for its ETA)."""
        if self.bar is not None:
            self.bar.total = self.runs + runs
            self.bar.refresh()

    def run(self, quantized: Sequence[str], x: np.ndarray) -> Dict[str, np.ndarray]:
        """All outputs with exactly the groups ``quantized`` quantized (the others unquantized)."""
        on = set(quantized)
        flags = {f"{FLAG_PREFIX}{i}": np.array(g in on) for i, g in enumerate(self.names)}
        names = [o.name for o in self.session.get_outputs()]
        parts: Dict[str, List[np.ndarray]] = {n: [] for n in names}
        t = time.perf_counter()
        for i in range(0, len(x), self.batch):
            for n, v in zip(names, self.session.run(None, {self.input: x[i:i + self.batch], **flags})):
                parts[n].append(v)
        self.seconds += time.perf_counter() - t
        self.runs += 1
        self.images += len(x)
        if self.bar is not None:
            self.bar.update(1)
        return {n: np.concatenate(v) for n, v in parts.items()}

    def seconds_per_image(self) -> float:
        return self.seconds / max(1, self.images)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.session = None


def _heldout_error(ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray]) -> Dict[str, float]:
    f = compare(ref, got)
    f["sensitivity"] = (1.0 - f["pearson_scores"]) + (1.0 - f["pearson_maps"])
    return f


def _heldout_ok(f: Dict[str, float], target: float) -> bool:
    return min(f["spearman_scores"], f["pearson_scores"], f["pearson_maps"]) >= target


NEGLIGIBLE = 1e-6  # a group whose sensitivity is below this never changes the outcome: not searched over
MIN_SENSITIVITY_IMAGES = 4  # a Pearson over fewer images ranks groups by noise


def _select_keep(sw: _Switch, held: np.ndarray, ref: Dict[str, np.ndarray], target: float,
                 say: Callable[[str], None], budget_s: Optional[float] = None, sensitivity_images: int = 0,
                 ) -> Tuple[List[str], Dict[str, Dict[str, float]], Dict[str, float], str, Dict[str, object]]:
    """The measured choice of groups kept in high precision (see the module docstring), on the switchable graph.

    ``sensitivity_images``: held-out images the per-group sensitivities are measured on (0: all); ``budget_s``:
    seconds the selection may take -- after the first run it fewers the sensitivity images (to no fewer than
    :data:`MIN_SENSITIVITY_IMAGES`) so the projected time fits, and says so. The held-out target itself is always
    checked on every held-out image (the Spearman needs them). Returns (kept, sensitivities, held-out figures of
    the choice, reason, selection record)."""
    t0 = time.perf_counter()
    order: List[str] = list(sw.names)
    G = len(order)
    cache: Dict[int, Dict[str, float]] = {}

    def trial(k: int) -> Dict[str, float]:
        if k not in cache:
            cache[k] = _heldout_error(ref, sw.run(order[k:], held))
            say(f"  keeping the {k} most sensitive group(s): score Spearman {cache[k]['spearman_scores']:.4f}, "
                f"Pearson {cache[k]['pearson_scores']:.4f}, map Pearson {cache[k]['pearson_maps']:.4f}")
        return cache[k]

    search_runs = max(1, (G + 1).bit_length())
    sw.expect(1 + G + search_runs)
    record: Dict[str, object] = {"groups": G}
    sens: Dict[str, Dict[str, float]] = {}
    if _heldout_ok(trial(0), target):  # nothing to keep: the per-group measurement is not needed
        record.update(runs=sw.runs, seconds=round(time.perf_counter() - t0, 1), sensitivity_images=0)
        sw.expect(0)
        return [], sens, cache[0], "every layer quantized meets the held-out target (no group needs keeping)", record
    n_sens = len(held) if sensitivity_images <= 0 else max(min(MIN_SENSITIVITY_IMAGES, len(held)),
                                                             min(int(sensitivity_images), len(held)))
    if budget_s is not None:
        per_img = sw.seconds_per_image()
        left = budget_s - (time.perf_counter() - t0) - search_runs * len(held) * per_img
        fit = int(left / max(per_img * G, 1e-9))
        if fit < n_sens:
            n_sens = max(min(MIN_SENSITIVITY_IMAGES, len(held)), fit)
            say(f"  time budget {budget_s:.0f} s at {per_img:.2f} s/image: sensitivities on {n_sens} of "
                f"{len(held)} held-out images")
    sub = slice(0, n_sens)
    ref_sub = {k: v[sub] for k, v in ref.items()}
    for i, gname in enumerate(order):
        f = _heldout_error(ref_sub, sw.run([gname], held[sub]))
        sens[gname] = {k: f[k] for k in ("sensitivity", "spearman_scores", "pearson_maps", "max_map_diff")}
        say(f"  sensitivity {i + 1}/{G} {gname}: {f['sensitivity']:.2e}")
    order.sort(key=lambda g: -sens[g]["sensitivity"])
    cache = {0: cache[0]}  # trial(0) does not depend on the order
    n_sig = sum(sens[g]["sensitivity"] >= NEGLIGIBLE for g in order)
    record.update(sensitivity_images=n_sens, negligible=G - n_sig)
    lo, hi = 0, n_sig  # trial(lo) fails; find the smallest passing k in (lo, hi]
    sw.expect(search_runs)
    if n_sig == 0 or not _heldout_ok(trial(hi), target):
        lo, hi = n_sig, G  # the negligible groups do matter together: search them too
        if not _heldout_ok(trial(hi), target):
            record.update(runs=sw.runs, seconds=round(time.perf_counter() - t0, 1))
            sw.expect(0)
            return order, sens, cache[hi], ("no partial quantization meets the held-out target: every quantized "
                                            "layer kept (the high-precision dtype alone fails it)"), record
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _heldout_ok(trial(mid), target):
            hi = mid
        else:
            lo = mid
    record.update(runs=sw.runs, seconds=round(time.perf_counter() - t0, 1))
    sw.expect(0)
    return order[:hi], sens, cache[hi], (f"the {hi} most sensitive of {G} groups (measured one by one on "
                                         f"held-out normal images) kept to reach the held-out target"), record


class _Evaluator:
    """Runs one candidate graph with ONNX Runtime (the project's session factory)."""

    def __init__(self, workdir: Path, batch: int) -> None:
        self.workdir, self.batch, self.calls = workdir, batch, 0

    def run(self, model, x: np.ndarray) -> Dict[str, np.ndarray]:
        path = self.workdir / f"candidate{self.calls}.onnx"
        self.calls += 1
        write_model(model, path)
        try:
            return run_session(make_session(path), x, self.batch)
        finally:
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------------ main
def quantize_onnx(onnx_path: Union[str, Path], calib: Union[str, Path, CalibrationSet], out: Union[str, Path],
                  cfg: QuantizeConfig = QuantizeConfig(), *, gate_data: Optional[Union[str, Path]] = None,
                  thresholds: GateThresholds = GateThresholds(), allow_gate_failure: bool = False,
                  progress: bool = True, recalibrate: Optional[Union[str, Path]] = None) -> QuantizeReport:
    """Quantize ``onnx_path`` (a portable fp32 export) on the normal images of ``calib`` and write ``out`` and its
    report ``<out stem>.quant.json``; return the report.

    The accuracy gate runs on the test split of ``gate_data`` (a data root with a meta.json; labeled) or, without
    it, on the held-out normal images (score Spearman only: no AUROC without labels). A failed gate raises
    :class:`QuantizeError` and writes nothing, unless ``allow_gate_failure`` (then it warns loudly and the report
    says the gate failed).

    The decision: the fp32 model's threshold was calibrated on fp32 scores. The gate measures how the verdicts
    agree at it (``min_verdict_agreement``) and the quantized model carries it marked ``inherited_from``; with
    ``recalibrate`` (a folder of good images or a data root, as ``wmoe calibrate`` takes), the quantized model is
    recalibrated the way the fp32 decision was (:func:`wmoe.evaluation.calibration.recalibration_config`) and
    ships its own thresholds instead — then verdict agreement at the old threshold is reported, not gated.
    """
    import onnx
    t0 = time.time()
    timings: Dict[str, float] = {}  # seconds per phase, in the report
    say = print if progress else (lambda s: None)
    src = Path(onnx_path)
    out = Path(out)
    if cfg.precision not in PRECISIONS:
        raise QuantizeError(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    if cfg.high_precision not in HIGH_PRECISIONS:
        raise QuantizeError(f"high_precision must be one of {HIGH_PRECISIONS}, got {cfg.high_precision!r}")
    if cfg.resolved_method() not in METHODS:
        raise QuantizeError(f"calibration method must be one of {METHODS}, got {cfg.method!r}")
    try:
        meta = read_onnx_contract(src)  # names the file when it is not one
    except ContractError as e:
        raise QuantizeError(str(e)) from None
    if meta.flavor != "portable":
        raise QuantizeError(f"{src}: the {meta.flavor} flavor has custom nodes ONNX Runtime cannot calibrate; "
                            f"quantize the portable export")
    if meta.precision != "fp32":
        raise QuantizeError(f"{src}: is {meta.precision}; quantize the fp32 export (the layers kept in higher "
                            f"precision are converted to --high-precision)")
    size, input_name = meta.image_size, meta.input
    frame = meta.frame_size if input_name == INPUT_FRAMES else None
    cs = calib if isinstance(calib, CalibrationSet) else load_calibration(
        calib, size, max_images=cfg.max_images, seed=cfg.seed, frame_size=frame,  # type: ignore[arg-type]
        exclude=gate_test_paths(gate_data) if gate_data is not None else ())
    cal_x, held_x = cs.split(cfg.holdout)
    auto = isinstance(cfg.keep, str) and cfg.keep == "auto"
    need = min_heldout(thresholds.min_spearman)
    if (auto or gate_data is None) and len(held_x) < need:
        use = "choose the layers kept in high precision (--keep auto)" if auto else "run the accuracy gate"
        raise QuantizeError(
            f"{len(held_x)} held-out normal image(s) (--holdout {cfg.holdout}, at most half of the {len(cs.inputs)} "
            f"drawn from {cs.source}) cannot {use}: a score Spearman >= {thresholds.min_spearman} needs at least "
            f"{need} images to mean something (below that one swap of two near-tied images fails it alone; over 2 "
            f"it is always +-1). Use --holdout {need} or more with at least {2 * need} normal images"
            + ("" if gate_data is not None else ", or give labeled images with --gate-data") + ".")
    say(f"calibrating {cfg.precision} on {len(cal_x)} normal images of {cs.source} "
        f"({len(held_x)} held out, {cs.available} available)")
    with tempfile.TemporaryDirectory(prefix="wmoe-quant-") as tmp:
        work = Path(tmp)
        # Model Optimizer writes its shape-inferred graph back over the file it is given (seen: +6,390 bytes on a
        # 1.8 GB ViT-L, not atomic): it gets a copy, the user's file is only read
        import shutil
        scratch = work / "source.onnx"
        shutil.copyfile(src, scratch)
        t = time.perf_counter()
        tool = _modelopt_quantize(scratch, cal_x, input_name, cfg, work / "all.onnx")
        timings["calibration_s"] = round(time.perf_counter() - t, 1)
        say(f"calibrated in {timings['calibration_s']:.0f} s (Model Optimizer)")
        scratch.unlink()
        t = time.perf_counter()
        source = onnx.load(str(src))
        qmodel = onnx.load(str(work / "all.onnx"))
        groups = node_groups(source, qmodel, cfg.max_groups_per_tower)
        props = {p.key: p.value for p in source.metadata_props}
        del source  # a ViT-L graph is 1.8 GB
        say(f"{sum(map(len, groups.values()))} layers quantized in {len(groups)} groups")
        ev = _Evaluator(work, cfg.batch)
        ref_sess = make_session(src)
        timings["load_s"] = round(time.perf_counter() - t, 1)
        sens: Dict[str, Dict[str, float]] = {}
        selection: Dict[str, object] = {}
        if auto:
            t = time.perf_counter()
            ref_held = run_session(ref_sess, held_x, cfg.batch)
            sw = _Switch(qmodel, groups, work, cfg.batch, progress)
            selection["load_s"] = round(time.perf_counter() - t, 1)
            try:
                kept, sens, held_fig, reason, rec = _select_keep(
                    sw, held_x, ref_held, (1 + thresholds.min_spearman) / 2 if cfg.target is None else cfg.target,
                    say, budget_s=cfg.select_budget_s, sensitivity_images=cfg.sensitivity_images)
            finally:
                sw.close()
            del sw  # its session holds the whole switchable graph
            selection.update(rec, sessions=1, simulated="Q/DQ in float (Where-switched groups, one session)")
            timings["selection_s"] = round(time.perf_counter() - t, 1)
            say(f"layer selection in {timings['selection_s']:.0f} s ({rec['runs']} runs of one session)")
        else:
            kept = [] if cfg.keep in ("none", "", None) else list(cfg.keep)
            unknown = [g for g in kept if g not in groups]
            if unknown:
                raise QuantizeError(f"unknown layer group(s) {', '.join(map(repr, unknown))}; this model's groups "
                                    f"(one --keep each): {', '.join(map(repr, sorted(groups)))}")
            reason = "chosen by the user" if kept else "nothing kept (keep='none')"
            held_fig = {}
        final = keep_high_precision(qmodel, [n for g in kept for n in groups[g]])
        # the source's metadata (the contract's keys), with what this file now is
        from dataclasses import replace
        qmeta = replace(meta, precision=cfg.precision, quantization=json.dumps(
            {"tool": tool, "method": cfg.resolved_method(), "calibration_images": len(cal_x),
             "high_precision": cfg.high_precision, "kept_groups": kept}, sort_keys=True))
        props.update(qmeta.to_metadata())
        del final.metadata_props[:]
        for k, v in sorted(props.items()):
            final.metadata_props.add(key=k, value=v)
        # the gate: labeled images when given, else the held-out normal images
        # (verdict agreement at the decision the quantized model ships with: the fp32 one, copied; reported only
        # when the quantized model gets its own, recalibrated)
        if recalibrate is not None:
            from dataclasses import replace as _replace
            thresholds = _replace(thresholds, min_verdict_agreement=float("-inf"))
        t = time.perf_counter()
        if gate_data is not None:
            gx, gy, gm = labeled_images(gate_data, size, cfg.gate_images, cfg.seed, frame_size=frame)
            say(f"accuracy gate on {len(gx)} labeled test images of {gate_data}")
            gate_res = gate(run_session(ref_sess, gx, cfg.batch), ev.run(final, gx), gy, gm, meta.decision,
                            thresholds=thresholds)
            gate_on = f"{len(gx)} labeled test images of {gate_data}"
        else:
            gate_res = gate(run_session(ref_sess, held_x, cfg.batch), ev.run(final, held_x), decision=meta.decision,
                            thresholds=thresholds)
            gate_on = f"{len(held_x)} held-out normal images (no labels: image AUROC not measured)"
        timings["gate_s"] = round(time.perf_counter() - t, 1)
        why = gate_res["failures"]
        gate_fig = {k: v for k, v in gate_res.items() if k not in ("passed", "failures", "thresholds")}
        gate_doc = {"passed": not why, "failures": why, "on": gate_on, "thresholds": thresholds.to_dict(), **gate_fig}
        say(f"accuracy gate {'passed' if not why else 'FAILED'}: {format_figures(gate_fig)}")
        if meta.decision.threshold is not None or meta.decision.class_thresholds:
            # the threshold was calibrated on the fp32 model's scores: say so in the record, with the agreement
            qdec = Decision(**meta.decision.to_dict())
            qdec.calibration["inherited_from"] = {
                "precision": meta.precision, "onnx_sha256": sha256_file(src),
                "verdict_agreement": gate_fig.get("verdict_agreement"), "gate_on": gate_on,
                "note": f"threshold calibrated on the {meta.precision} model; recalibrate with wmoe calibrate "
                        f"(or wmoe export quantize --recalibrate DATA)"}
            props.update(decision_metadata(qdec))
            del final.metadata_props[:]
            for k, v in sorted(props.items()):
                final.metadata_props.add(key=k, value=v)
        report = QuantizeReport(
            precision=cfg.precision, high_precision=cfg.high_precision, tool=tool,
            calibration={"source": cs.source, "method": cfg.resolved_method(), "images": len(cal_x),
                         "held_out": len(held_x), "available": cs.available, "skipped": len(cs.skipped),
                         "seed": cfg.seed},
            quantized_nodes=len(quantized_nodes(final)), kept_groups=kept, keep_reason=reason, sensitivity=sens,
            held_out=held_fig, gate=gate_doc, source_onnx=str(src), source_sha256=sha256_file(src),
            seconds=round(time.time() - t0, 1), groups=groups, timings=timings, selection=selection)
        if why and not allow_gate_failure:
            raise QuantizeError(f"{out}: not written, the quantized model fails the accuracy gate ("
                                + "; ".join(why) + f"; {format_figures(gate_fig)}). Keep more layers in high "
                                "precision (--keep), calibrate on more images, or pass --allow-gate-failure")
        if why:
            import warnings
            warnings.warn("\n" + "!" * 78 + f"\nQUANTIZED MODEL FAILS THE ACCURACY GATE ({'; '.join(why)}); "
                          f"written anyway because of --allow-gate-failure: {out}\n" + "!" * 78,
                          RuntimeWarning, stacklevel=2)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as t:
            write_model(final, t)
        if recalibrate is not None:
            from wmoe.evaluation.calibrate import calibrate
            from wmoe.evaluation.calibration import recalibration_config
            rcfg = recalibration_config(meta.decision)
            say(f"recalibrating the {cfg.precision} model on {recalibrate} ({rcfg.method})")
            new_dec, _ = calibrate(out, recalibrate, rcfg, progress=progress)
            report.recalibration = {"data": str(recalibrate), "method": rcfg.method,
                                    "threshold_before": meta.decision.threshold, "threshold": new_dec.threshold,
                                    "class_thresholds": new_dec.class_thresholds,
                                    "pixel_threshold": new_dec.pixel_threshold}
        atomic_write_text(report_path(out), report.to_json())
    return report


def gate_test_paths(root: Union[str, Path]) -> List[Path]:
    """The test images of the gate's data set (excluded from calibration)."""
    from wmoe.data import read_meta
    root = Path(root)
    return [(root / str(e["img_path"])).resolve() for entries in read_meta(root / "meta.json").get("test", {}).values()
            for e in entries]


def report_path(out: Union[str, Path]) -> Path:
    """The quantization report beside a Q/DQ ONNX: ``model.qdq.onnx`` -> ``model.qdq.quant.json``."""
    return Path(out).with_suffix(".quant.json")
