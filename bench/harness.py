"""Parity (every backend vs the PyTorch fp32 reference) and throughput (images/s, p50/p99 latency, peak memory,
FLOPs per image and the fraction of the device's measured matmul rate), written as JSON, markdown and a PNG plot."""
from __future__ import annotations

import datetime as _dt
import json
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from wmoe import __version__
from wmoe.atomic import atomic_path, atomic_write_text
from wmoe.contract import INPUT_FRAMES, OUTPUT_NAMES, ModelMeta
from wmoe.model.preprocess import frames_to_images

from wmoe.export.gate import GateThresholds

from .backends import MATMUL_PRECISION, Backend, Skip, engine_meta, make_backend
from .matmul import matmul_rates, rate_for


@dataclass
class BenchConfig:
    checkpoint: str
    out: str = "bench_out"
    backends: Sequence[str] = ("torch-fp32", "ort-cpu")
    batches: Sequence[int] = (1, 8, 32)
    sizes: Optional[Sequence[int]] = None  # default: the checkpoint's size
    warmup: int = 3
    repeats: int = 10
    onnx: Optional[str] = None
    engine: Optional[str] = None
    aoti: Optional[str] = None
    parity_data: Optional[str] = None
    parity_images: Optional[int] = None  # a seeded subset of the parity data's test images (None: all)
    qdq: Optional[str] = None  # a quantized Q/DQ ONNX (wmoe export quantize) for the ort-qdq backend
    gate: GateThresholds = field(default_factory=GateThresholds)
    pretrained: Optional[str] = None
    seed: int = 0
    allow_compile: bool = False  # torch.compile on the CPU (minutes for a ViT-L); always allowed on CUDA
    records: List[dict] = field(default_factory=list)
    reference: Optional[str] = None  # a wmoe fit-normal folder: bench the normal-reference mode of ``product``
    product: Optional[str] = None


def device_info() -> Dict[str, str]:
    info = {"host": platform.node(), "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "wmoe": __version__, "date": _dt.datetime.now().isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    else:
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   platform.processor())
        info["device"] = f"CPU: {cpu} ({torch.get_num_threads()} threads)"
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import openvino
        info["openvino"] = openvino.get_version()
        info["cpu_capabilities"] = ", ".join(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except ImportError:
        pass
    try:
        info["loadavg"] = open("/proc/loadavg").read().split(" ", 3)[:3]  # other jobs on the machine
    except OSError:
        pass
    return info


def module_flops(module: torch.nn.Module, *inputs: torch.Tensor) -> float:
    """FLOPs of one call as the model really computes them, counted by torch's FlopCounterMode (matmuls,
    convolutions, attention). Counted with nn.MultiheadAttention's fused fast path off and attention on SDPA's math
    backend: FlopCounterMode counts neither the fast path's ``_native_multi_head_attention`` nor the CPU flash
    kernel, which undercounted the ViT-L-14-336 image tower by ~39% (233 instead of ~382 GFLOP)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc, torch.no_grad():
            module(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return float(fc.get_total_flops())


def count_flops(model: torch.nn.Module, size: int) -> float:
    """FLOPs of one image of ``size`` px through the whole model (:func:`module_flops`)."""
    return module_flops(model.float().cpu(), torch.randn(1, 3, size, size))


class PeakMemory:
    """Peak memory of one backend's runs, from where that backend's memory lives: PyTorch's allocator for the
    PyTorch backends on CUDA; the device itself (``cudaMemGetInfo`` via ``torch.cuda.mem_get_info``: TensorRT,
    ONNX Runtime CUDA/TensorRT allocate outside PyTorch) for the others, sampled after every run, less what was in
    use before the backend was built; the process's peak RSS on the CPU."""

    def __init__(self, name: str, device: str) -> None:
        self.device = device
        self.torch = name.startswith("torch") or name == "aoti"  # aoti: the package allocates through PyTorch
        self.baseline = self._device_used() if device == "cuda" and not self.torch else 0
        self.peak = 0

    @property
    def source(self) -> str:
        return ("process peak RSS" if self.device != "cuda" else
                "PyTorch allocator peak" if self.torch else "device used (cudaMemGetInfo) - baseline")

    @staticmethod
    def _device_used() -> int:
        free, total = torch.cuda.mem_get_info()
        return total - free

    def reset(self) -> None:
        if self.device == "cuda" and self.torch:
            torch.cuda.reset_peak_memory_stats()

    def sample(self) -> None:
        if self.device == "cuda" and not self.torch:
            self.peak = max(self.peak, self._device_used() - self.baseline)

    def mb(self) -> float:
        if self.device != "cuda":
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB
        if self.torch:
            return torch.cuda.max_memory_allocated() / 2**20
        return self.peak / 2**20


def _model_factory(cfg: BenchConfig, size: int):
    from wmoe.model.checkpoint import load_model, read_checkpoint
    from wmoe.model.wmoe_clip import WMoECLIP

    def build():
        m = load_model(cfg.checkpoint, pretrained=cfg.pretrained)
        if size != m.image_size:  # same trainable weights, another input size (position embedding resized)
            from dataclasses import replace
            m2 = WMoECLIP(replace(m.cfg, image_size=size), pretrained=cfg.pretrained)
            m2.load_state_dict(read_checkpoint(cfg.checkpoint)[1], strict=False)
            m = m2
        if cfg.reference:  # the normal-reference mode: the same model plus one product's memory (wmoe.reference)
            from wmoe.reference import NormalReference, ReferenceModel
            ref = NormalReference.load(cfg.reference, cfg.checkpoint)
            m = ReferenceModel(m, ref.get(cfg.product), ref.config)
        return m.eval()
    return build


_EXPORTED: Dict[tuple, Path] = {}


def _make(cfg: BenchConfig, name: str, factory, base_size: bool, size: int = 0) -> Backend:
    """One backend; the given ONNX/AOTI files are built for the checkpoint's size only (other sizes export anew,
    once per size and run, or skip)."""
    work = Path(cfg.out) / "work"

    def export() -> Path:
        key = (str(work), cfg.checkpoint, size)
        if key not in _EXPORTED or not _EXPORTED[key].is_file():
            from wmoe.export.onnx_export import export_onnx
            _EXPORTED[key] = export_onnx(factory(), work / f"model_{size or 'base'}.onnx")
        return _EXPORTED[key]
    return make_backend(name, factory, onnx_path=Path(cfg.onnx) if cfg.onnx and base_size else None,
                        engine_path=Path(cfg.engine) if cfg.engine else None,
                        aoti_path=Path(cfg.aoti) if cfg.aoti and base_size else None,
                        qdq_path=Path(cfg.qdq) if cfg.qdq and base_size else None,
                        allow_compile=cfg.allow_compile, workdir=work, export=export)


def run_bench(cfg: BenchConfig, progress: bool = True) -> Dict[str, object]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    from wmoe.model.checkpoint import read_checkpoint
    base_size = read_checkpoint(cfg.checkpoint)[0].config.image_size
    sizes = list(cfg.sizes or [base_size])
    info = device_info()
    rates = matmul_rates()
    records: List[dict] = []
    skipped: Dict[str, str] = {}
    rng = np.random.default_rng(cfg.seed)
    for size in sizes:
        factory = _model_factory(cfg, size)
        flops = count_flops(factory(), size)
        ref_be = make_backend("torch-fp32", factory)
        feeds = Feeds(ref_be, size, max(cfg.batches), rng)
        for name in cfg.backends:
            if name == "trt-engine" and cfg.engine:
                eng = engine_meta(Path(cfg.engine))
                if eng.image_size != size:  # an engine is built for one image size
                    skipped[f"{name} @ {size}px"] = (f"the engine {cfg.engine} is built for {eng.image_size} px "
                                                     f"images (its sidecar); build one per size with wmoe export trt")
                    continue
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            mem = PeakMemory(name, "cuda" if torch.cuda.is_available() else "cpu")
            try:
                be = ref_be if name == "torch-fp32" else _make(cfg, name, factory, size == base_size, size)
            except Skip as e:
                skipped[name] = str(e)
                continue
            mem.device = be.device
            feed = feeds.get(be.meta)
            got = be.run(feed.x)
            prec = MATMUL_PRECISION.get(name, "fp16" if be.device == "cuda" else "fp32")
            rate, rate_by = rate_for(rates, prec)
            parity = {f"max_abs_{k}": float(np.abs(got[k] - feed.ref[k]).max()) for k in OUTPUT_NAMES}
            for b in cfg.batches:
                x = feed.batch(b)
                mem.reset()
                for _ in range(cfg.warmup):
                    be.run(x)
                    be.sync()
                    mem.sample()
                times = []
                from .tegrastats import PowerSampler
                with PowerSampler() as power:  # Jetson only: board power while the repeats run
                    for _ in range(cfg.repeats):
                        t0 = time.perf_counter()
                        be.run(x)
                        be.sync()
                        times.append(time.perf_counter() - t0)
                        mem.sample()
                t = np.array(times)
                ips = b / float(np.median(t))
                rec = {"backend": name, "size": size, "batch": b, "input": feed.describe, "images_per_s": ips,
                       "latency_p50_ms": float(np.percentile(t, 50) * 1e3),
                       "latency_p99_ms": float(np.percentile(t, 99) * 1e3), "peak_mem_mb": mem.mb(),
                       "peak_mem_source": mem.source,
                       "flops_per_image": flops, "fraction_of_matmul_rate": ips * flops / rate,
                       "matmul_precision": prec, "matmul_rate_by": rate_by, "description": be.description,
                       "warmup": cfg.warmup, "repeats": cfg.repeats, **parity}
                if power.mean_watts:
                    rec["power_w"] = power.mean_watts
                    rec["images_per_joule"] = ips / power.mean_watts
                records.append(rec)
                if progress:
                    print(f"{name:12s} {size}px batch {b:3d}: {ips:8.1f} img/s, p50 {rec['latency_p50_ms']:.1f} ms, "
                          f"maps |diff| {parity['max_abs_maps']:.1e}", flush=True)
    doc = {"device": info, "matmul_rates": rates, "records": records, "skipped": skipped,
           "checkpoint": cfg.checkpoint}
    if cfg.reference:
        m = factory()
        doc["reference"] = {"path": cfg.reference, **m.ref.summary(), "fusion_weight": m.weight}
    if cfg.parity_data:
        doc["auroc_parity"] = auroc_parity(cfg, skipped)
        doc["gate"] = cfg.gate.to_dict()
    try:
        doc["device"]["loadavg_after"] = open("/proc/loadavg").read().split(" ", 3)[:3]
    except OSError:
        pass
    atomic_write_text(out / "bench.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out / "bench.md", to_markdown(doc))
    plot(doc, out / "bench.png")
    return doc


@dataclass
class Feed:
    """One input kind of the model contract in a bench run: the parity batch ``x`` as the backend takes it, the
    torch-fp32 outputs on the same pixels (``ref``), and more batches of that kind."""

    x: np.ndarray
    ref: Dict[str, np.ndarray]
    make: Callable[[int], np.ndarray]
    describe: str

    def batch(self, b: int) -> np.ndarray:
        return self.x[:b] if b <= len(self.x) else self.make(b)


class Feeds:
    """What each backend is fed, from its model contract (:attr:`Backend.meta`): normalized float images (N,3,S,S)
    for PyTorch and images-input exports; seeded uint8 camera frames (N,H,W,3) at the contract's frame size for a
    frames-input export (the CLI's default), whose reference is torch-fp32 on those frames preprocessed as the graph
    does (:func:`wmoe.model.preprocess.frames_to_images`), so parity compares the same pixels."""

    def __init__(self, ref_be: Backend, size: int, n: int, rng: np.random.Generator) -> None:
        self.ref_be, self.size, self.n, self.rng = ref_be, size, n, rng
        self.cache: Dict[object, Feed] = {}
        self.get(None)  # the images feed first: the seeded draws of a run without frames backends are unchanged

    def get(self, meta: Optional[ModelMeta]) -> Feed:
        if meta is not None and meta.image_size != self.size:
            raise ValueError(f"a {meta.image_size} px model in a {self.size} px bench run")
        frames = meta is not None and meta.input == INPUT_FRAMES
        key = tuple(meta.frame_size) if frames else None
        if key not in self.cache:
            if frames:
                h, w = key
                make = lambda b: self.rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)  # noqa: E731
                x = make(self.n)
                with torch.no_grad():
                    ref = self.ref_be.run(frames_to_images(torch.from_numpy(x), meta.preprocess).numpy())
                self.cache[key] = Feed(x, ref, make, f"frames uint8 {h}x{w}")
            else:
                s = self.size
                make = lambda b: self.rng.standard_normal((b, 3, s, s)).astype(np.float32)  # noqa: E731
                x = make(self.n)
                self.cache[key] = Feed(x, self.ref_be.run(x), make, f"images float32 {s}x{s}")
        return self.cache[key]


def auroc_parity(cfg: BenchConfig, skipped: Dict[str, str]) -> Dict[str, dict]:
    """The accuracy gate of every backend against torch-fp32 on a labeled data set (e.g. the demo set): image and
    pixel AUROC and their change, score Spearman, map differences, and whether the gate
    (:mod:`wmoe.export.gate`: AUROC drop <= ``cfg.gate.max_image_auroc_drop``, Spearman >= ``min_spearman``)
    passes."""
    from wmoe.model.checkpoint import read_checkpoint
    from wmoe.export.gate import compare, failures, labeled_images
    size = read_checkpoint(cfg.checkpoint)[0].config.image_size
    factory = _model_factory(cfg, size)
    ref_be = _make(cfg, "torch-fp32", factory, True, size)

    def run_all(be: Backend, x: np.ndarray) -> Dict[str, np.ndarray]:
        parts = [be.run(x[i:i + 8]) for i in range(0, len(x), 8)]
        return {k: np.concatenate([o[k] for o in parts]) for k in parts[0]}

    feeds: Dict[object, tuple] = {}  # frame size (None: images) -> (inputs, torch-fp32 outputs, labels, masks)

    def feed(meta: Optional[ModelMeta]) -> tuple:
        """The labeled images as this backend's contract takes them (frames for a frames-input export) and the
        reference on the same pixels."""
        fs = tuple(meta.frame_size) if meta is not None and meta.input == INPUT_FRAMES else None
        if fs not in feeds:
            x, y, m = labeled_images(cfg.parity_data, size, cfg.parity_images, cfg.seed, frame_size=fs)
            with torch.no_grad():
                ref_x = x if fs is None else frames_to_images(torch.from_numpy(x), meta.preprocess).numpy()
            feeds[fs] = (x, run_all(ref_be, ref_x), y, m)
        return feeds[fs]

    res: Dict[str, dict] = {}
    for name in cfg.backends:
        if name in skipped:
            continue
        try:
            be = ref_be if name == "torch-fp32" else _make(cfg, name, factory, True, size)
        except Skip as e:
            skipped[name] = str(e)
            continue
        x, ref, y, m = feed(be.meta)
        # verdict agreement at the threshold the exported model carries (none for PyTorch)
        fig = compare(ref, run_all(be, x), y, m, decision=be.meta.decision if be.meta is not None else None)
        why = failures(fig, cfg.gate)
        res[name] = {"image_auroc": fig.get("image_auroc", float("nan")),
                     "pixel_auroc": fig.get("pixel_auroc", float("nan")),
                     "delta_image_auroc": fig.get("image_auroc_change", float("nan")),
                     "delta_pixel_auroc": fig.get("pixel_auroc_change", float("nan")),
                     **{k: fig[k] for k in ("n_images", "spearman_scores", "max_map_diff", "mean_map_diff",
                                            "verdict_agreement", "verdict_flips") if k in fig},
                     "gate_passed": not why, "gate_failures": why}
    return res


def to_markdown(doc: Dict) -> str:
    d = doc["device"]
    rates = {k: v for k, v in doc.get("matmul_rates", {}).items() if not k.startswith("_")}
    gate = doc.get("auroc_parity", {})
    eager = {(r["size"], r["batch"]): r["images_per_s"] for r in doc["records"] if r["backend"] == "torch-fp32"}
    lines = [f"# wmoe bench — {d['device']}", "",
             f"{d['date']}, torch {d['torch']}, onnxruntime {d.get('onnxruntime', '-')}, openvino "
             f"{d.get('openvino', '-')}, wmoe {d['wmoe']}; load average {' '.join(d.get('loadavg', ['?']))} before, "
             f"{' '.join(d.get('loadavg_after', ['?']))} after (other jobs share the machine: compare ratios within "
             f"this run only)", "",
             "Measured matmul rate per precision (the fastest GEMM available in this run):", ""]
    lines += [f"- {p}: {v['flops_per_s'] / 1e9:.1f} G{'OP' if p == 'int8' else 'FLOP'}/s by {v['by']} (all: "
              + ", ".join(f"{k} {x / 1e9:.1f}" for k, x in v.get("all", {}).items()) + ")" for p, v in rates.items()]
    lines += ["", "| backend | size | batch | images/s | vs torch-fp32 | p50 ms | p99 ms | peak MB | GFLOP/img | "
              "% matmul rate (precision) | max\\|Δ\\| maps | max\\|Δ\\| scores | gate |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["records"]:
        e = eager.get((r["size"], r["batch"]))
        g = gate.get(r["backend"])
        verdict = "–" if g is None else "pass" if g["gate_passed"] else "FAIL"
        lines.append(f"| {r['backend']} | {r['size']} | {r['batch']} | {r['images_per_s']:.2f} | "
                     f"{r['images_per_s'] / e if e else float('nan'):.2f}× | "
                     f"{r['latency_p50_ms']:.2f} | {r['latency_p99_ms']:.2f} | {r['peak_mem_mb']:.0f} | "
                     f"{r['flops_per_image'] / 1e9:.3f} | {100 * r['fraction_of_matmul_rate']:.1f} "
                     f"({r.get('matmul_precision', 'fp32')}) | "
                     f"{r['max_abs_maps']:.1e} | {r['max_abs_scores']:.1e} | {verdict} |")
    descr = {r["backend"]: r.get("description", "") for r in doc["records"]}
    lines += ["", "Backends: " + "; ".join(f"{k} = {v}" for k, v in descr.items() if v) + "."]
    if doc.get("auroc_parity"):
        lines += ["", "Accuracy gate vs torch-fp32 (image AUROC drop ≤ "
                  f"{100 * doc.get('gate', {}).get('max_image_auroc_drop', 0.005):.1f} pt, score Spearman ≥ "
                  f"{doc.get('gate', {}).get('min_spearman', 0.99)}):", "",
                  "| backend | images | image AUROC | pixel AUROC | Δ image (pt) | Δ pixel (pt) | Spearman | "
                  "max\\|Δ\\| map | mean\\|Δ\\| map | gate |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for k, v in doc["auroc_parity"].items():
            lines.append(f"| {k} | {v['n_images']} | {v['image_auroc']:.4f} | {v['pixel_auroc']:.4f} | "
                         f"{100 * v['delta_image_auroc']:+.2f} | {100 * v['delta_pixel_auroc']:+.2f} | "
                         f"{v['spearman_scores']:.4f} | {v['max_map_diff']:.1e} | {v['mean_map_diff']:.1e} | "
                         f"{'pass' if v['gate_passed'] else 'FAIL: ' + '; '.join(v['gate_failures'])} |")
    if doc.get("reference"):
        r = doc["reference"]
        lines += ["", f"Normal-reference mode: product {r['class']!r}, k = {r['k']} good images, memory "
                  f"{r['memory_rows']} rows x {r['feature_dim']} = {r['memory_bytes'] / 1024:.0f} KiB (a constant of "
                  f"the ONNX), fusion weight {r['fusion_weight']}."]
    sources = sorted({r.get("peak_mem_source", "") for r in doc["records"]} - {""})
    if sources:
        lines += ["", "Peak MB from: " + "; ".join(sources) + "."]
    if doc["skipped"]:
        lines += ["", "Skipped backends:", ""] + [f"- {k}: {v}" for k, v in doc["skipped"].items()]
    return "\n".join(lines) + "\n"


def plot(doc: Dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    keys = sorted({(r["backend"], r["size"]) for r in doc["records"]})
    for be, size in keys:
        rs = sorted((r for r in doc["records"] if r["backend"] == be and r["size"] == size), key=lambda r: r["batch"])
        ax.plot([r["batch"] for r in rs], [r["images_per_s"] for r in rs], marker="o", label=f"{be} {size}px")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch")
    ax.set_ylabel("images/s")
    ax.set_title(doc["device"]["device"][:60], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
