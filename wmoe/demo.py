"""The main job (``wmoe demo``): demo data -> training -> zero-shot evaluation -> predictions -> normal-reference
mode -> report.md.

Trains on the demo set's auxiliary categories (their test split, as the peers train on an auxiliary set) and
evaluates on categories the model never saw. With ``--pretrained`` the real ViT-L-14-336 backbone is used; without
it, the tiny random-init backbone, so the job runs anywhere in about a minute on a CPU. The numbers of the tiny
backbone say the pipeline works end to end, not how good WMoE-CLIP is.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from .atomic import atomic_write_text
from .config import ModelConfig


@dataclass
class DemoConfig:
    out: str = "demo_out"
    pretrained: Optional[str] = None
    epochs: int = 20
    batch_size: int = 8
    seed: int = 0
    data_size: int = 256
    image_size: int = 224  # tiny backbone; the full backbone uses 336 (multiple of 14)
    n_test_good: int = 8
    n_test_defect: int = 12
    n_predict: int = 6
    n_train_good: int = 32  # good images per category: the normal-reference section uses k = 1, 4, 16 and all
    device: Optional[str] = None
    max_steps: Optional[int] = None


def run_demo(cfg: DemoConfig) -> Dict[str, object]:
    from .data import DEMO_TEST_CLASSES, DEMO_TRAIN_CLASSES, make_demo_dataset
    from .evaluate import evaluate
    from .predict import predict
    from .report import write_report
    from .train import TrainConfig, train

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    times: Dict[str, float] = {}
    t = time.time()
    print(f"[1/5] demo data -> {out / 'data'}")
    root = make_demo_dataset(out / "data", seed=cfg.seed, image_size=cfg.data_size, n_test_good=cfg.n_test_good,
                             n_test_defect=cfg.n_test_defect, n_train_good=cfg.n_train_good)
    times["data"] = time.time() - t
    if cfg.pretrained:
        model_cfg = ModelConfig(image_size=336)
    else:
        model_cfg = ModelConfig.tiny(image_size=cfg.image_size)
    t = time.time()
    print(f"[2/5] training {model_cfg.backbone} on {', '.join(DEMO_TRAIN_CLASSES)} ({cfg.epochs} epochs)")
    ckpt = train(model_cfg, TrainConfig(str(root), out_dir=str(out / "run"), classes=list(DEMO_TRAIN_CLASSES),
                                        epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                                        device=cfg.device, max_steps=cfg.max_steps,
                                        overwrite=True),  # the demo regenerates everything it owns
                 pretrained=cfg.pretrained)
    times["train"] = time.time() - t
    t = time.time()
    print(f"[3/5] zero-shot evaluation on {', '.join(DEMO_TEST_CLASSES)}")
    table = evaluate(ckpt, root, classes=list(DEMO_TEST_CLASSES), out_dir=out / "eval", pretrained=cfg.pretrained,
                     device=cfg.device, store_threshold=True)
    times["eval"] = time.time() - t
    t = time.time()
    print("[4/5] predictions and report")
    picks = []
    for cls in DEMO_TEST_CLASSES:
        test = root / cls / "test"
        defects = sorted(p for d in sorted(test.iterdir()) if d.name != "good" for p in sorted(d.glob("*.png")))
        goods = sorted((test / "good").glob("*.png"))
        picks += defects[: max(1, cfg.n_predict // (2 * len(DEMO_TEST_CLASSES)))] + goods[:1]
    # MVTec layout: the ground truth of test/<defect>/<name>.png is ground_truth/<defect>/<name>_mask.png
    gt = {str(p): p.parents[2] / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
          for p in picks if p.parent.name != "good"}
    pred = predict(ckpt, picks, out / "predictions", pretrained=cfg.pretrained, device=cfg.device, progress=False,
                   masks=gt)
    times["predict"] = time.time() - t
    from .expert_health import USAGE_FILE
    usage_log = out / "run" / USAGE_FILE
    train_usage = json.loads(usage_log.read_text())["epochs"] if usage_log.is_file() else []
    t = time.time()
    print("[5/5] normal-reference mode on the held-out categories (k = 1, 4, 16, all good images)")
    from .checkpoint import load_model
    from .reference.report import reference_section
    ref_lines = reference_section(out, load_model(ckpt, pretrained=cfg.pretrained).eval(), root,
                                  list(DEMO_TEST_CLASSES))
    times["reference"] = time.time() - t
    report = write_report(out, table, pred, times, model_cfg, cfg, train_usage=train_usage,
                          extra_sections=ref_lines)
    print(table.to_markdown())
    print(f"report: {report}")
    return {"report": str(report), "checkpoint": str(ckpt), "times": times,
            "mean": json.loads(table.to_json())["mean"]}
