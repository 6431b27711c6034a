"""``wmoe export cpu-precision``: decide once, on the user's images, which precision the OpenVINO CPU backend runs.

Every candidate the CPU can run — ``f32``, ``bf16`` (CPUs with bf16), ``int8`` (the Q/DQ model of ``wmoe export
quantize``, when given) — runs the images under OpenVINO; the accuracy gate (:mod:`wmoe.export.gate`, the same one
``wmoe export quantize`` and ``wmoe bench`` apply) compares each with the fp32 model under ONNX Runtime; the batch
the line runs is timed (median of ``repeats`` after a warm-up). The fastest candidate that passes becomes the
default, stored in the model's contract metadata (:class:`wmoe.contract.CpuPrecision`, rewritten in place without
parsing the graph, atomically) with every candidate's figures, so the runtime never guesses: ``Runtime.open(path,
provider="openvino")`` runs it, and falls back (saying why) on a CPU that cannot.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import numpy as np

from wmoe.contract import CPU_PRECISIONS, INPUT_FRAMES, CpuPrecision, ModelMeta, read_onnx_contract, sha256_file
from wmoe.onnx_meta import write_onnx_metadata

from .gate import GateThresholds, compare, failures, format_figures, labeled_images, run_session
from wmoe.errors import CpuPrecisionError  # defined in wmoe.errors; importable from here (its old home)


def _outputs(be, x: np.ndarray, batch: int) -> Dict[str, np.ndarray]:
    parts = [be.run(x[i:i + batch]) for i in range(0, len(x), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _speed(be, x: np.ndarray, repeats: int) -> float:
    be.run(x)
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        be.run(x)
        t.append(time.perf_counter() - t0)
    return len(x) / float(np.median(t))


def choose_cpu_precision(onnx_path: Union[str, Path], *, qdq: Optional[Union[str, Path]] = None,
                         gate_data: Optional[Union[str, Path]] = None, calib: Optional[Union[str, Path]] = None,
                         gate_images: Optional[int] = 200, thresholds: GateThresholds = GateThresholds(),
                         batch: int = 1, repeats: int = 5, seed: int = 0, write: bool = True,
                         progress: bool = True) -> CpuPrecision:
    """Measure every CPU precision of ``onnx_path`` (see the module doc) and return the decision; with ``write``
    store it in the model's metadata (and beside nothing else). ``gate_data``: a labeled data root (meta.json;
    AUROC change, Spearman, verdicts); else ``calib``: normal images only (Spearman and verdicts)."""
    from wmoe.runtime.openvino_backend import OpenVinoBackend, cpu_capabilities, cpu_name
    from wmoe.runtime.session import make_session
    say: Callable[[str], None] = print if progress else (lambda s: None)
    src = Path(onnx_path)
    meta = read_onnx_contract(src)
    if meta.flavor != "portable" or meta.precision != "fp32":
        raise CpuPrecisionError(f"{src}: is a {meta.flavor} {meta.precision} model; the CPU precision is chosen on "
                                f"the portable fp32 export (wmoe export onnx)")
    if (gate_data is None) == (calib is None):
        raise CpuPrecisionError("give the images the gate runs on: --gate-data (labeled) or --calib (normal images)")
    frame = meta.frame_size if meta.input == INPUT_FRAMES else None
    qpath = Path(qdq) if qdq else None
    if qpath is not None:
        qm = read_onnx_contract(qpath)
        if qm.precision != "int8":
            raise CpuPrecisionError(f"{qpath}: is {qm.precision}, not an int8 Q/DQ model (wmoe export quantize "
                                    f"--precision int8 --high-precision fp32)")
        if (qm.input, qm.frame_size, qm.image_size) != (meta.input, meta.frame_size, meta.image_size) or (
                qm.checkpoint_sha256 and meta.checkpoint_sha256 and qm.checkpoint_sha256 != meta.checkpoint_sha256):
            raise CpuPrecisionError(f"{qpath}: was not quantized from {src} (other checkpoint or input)")
    if gate_data is not None:
        x, y, m = labeled_images(gate_data, meta.image_size, gate_images, seed, frame_size=frame)
        on = f"{len(x)} labeled test images of {gate_data}"
    else:
        from .calib import load_calibration
        from .quantize import min_heldout
        cs = load_calibration(calib, meta.image_size, max_images=gate_images or 10 ** 9, seed=seed,  # type: ignore
                              frame_size=frame, min_images=min_heldout(thresholds.min_spearman))
        x, y, m = cs.inputs, None, None
        on = f"{len(x)} normal images of {calib} (no labels: image AUROC not measured)"
    caps = cpu_capabilities()
    say(f"CPU {cpu_name()} ({', '.join(caps)}); gate on {on}")
    ref = run_session(make_session(src), x)
    bx = x[:batch] if len(x) >= batch else np.concatenate([x] * (-(-batch // len(x))))[:batch]
    cands: Dict[str, Dict[str, object]] = {}
    for p in CPU_PRECISIONS:
        if p == "bf16" and "BF16" not in caps:
            say("bf16: not measured, this CPU has no bf16")
            continue
        if p == "int8" and qpath is None:
            say("int8: not measured, no --qdq model (wmoe export quantize --high-precision fp32)")
            continue
        be = OpenVinoBackend(qpath if p == "int8" else src, precision=p, batch=batch, allow_ungated=True)
        # verdict agreement at the threshold the model carries (the runtime judges every precision by it)
        fig = compare(ref, _outputs(be, x, max(batch, 8)), y, m, decision=meta.decision)
        why = failures(fig, thresholds)
        ips = _speed(be, bx, repeats)
        be.close()
        cands[p] = {"passed": not why, "failures": why, "images_per_s": round(ips, 4),
                    **{k: v for k, v in fig.items() if isinstance(v, (int, float))}}
        say(f"{p}: {ips:.2f} img/s at batch {batch}, gate {'passed' if not why else 'FAILED (' + '; '.join(why) + ')'}"
            f": {format_figures(fig)}")
    passing = [p for p, c in cands.items() if c["passed"]]
    if "f32" not in passing:  # f32 is the exact path: failing it means the images or the model are broken
        raise CpuPrecisionError(f"{src}: OpenVINO f32 fails the gate against ONNX Runtime fp32 "
                                f"({'; '.join(cands['f32']['failures'])}): not storing a decision")
    choice = max(passing, key=lambda p: float(cands[p]["images_per_s"]))  # type: ignore[arg-type]
    rec = CpuPrecision(choice=choice, candidates=cands, gate_on=on, cpu=cpu_name(), batch=int(batch),
                       int8_model=os.path.relpath(qpath, src.parent) if qpath else "",
                       int8_sha256=sha256_file(qpath) if qpath else "")
    if write:
        from dataclasses import replace
        write_onnx_metadata(src, replace(meta, cpu_precision=rec).to_metadata())
    say(f"CPU precision: {choice} (fastest that passed the gate)" + (f"; stored in {src}" if write else ""))
    return rec
