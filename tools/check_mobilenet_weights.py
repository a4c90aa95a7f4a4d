"""Does the Keras MobileNetV2 conversion carry real features, and does Keras's padding matter?

Linear probe (logistic regression on the pooled 1280-d features, backbone frozen) on a class-balanced
Fashion-MNIST subset for: the converted weights with Keras "same" padding (what zest-edge builds), the same
weights with torchvision's symmetric padding, and random init. Writes reports/mobilenet_v2_weights/probe.{json,md}.
Usage: python tools/check_mobilenet_weights.py [--train 1000] [--val 1000] [--resolution 160]
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from zest_edge.io import write_json, write_text
from zest_edge.models import build_model
from zest_edge.models.mobilenet import SamePadConv2d
from zest_edge.task import load_task


def symmetric_padding(model: nn.Module) -> nn.Module:
    """torchvision's padding (1 on both sides) in place of Keras's on the stride-2 convs."""
    for m in model.modules():
        for name, child in list(m.named_children()):
            if isinstance(child, SamePadConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                 child.kernel_size[0] // 2, child.dilation, child.groups, child.bias is not None)
                conv.load_state_dict(child.state_dict())
                setattr(m, name, conv)
    return model


@torch.no_grad()
def pooled(model: nn.Module, dataset) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    feats = []
    for s in range(0, len(dataset), 64):
        x = torch.stack([dataset[i][0] for i in range(s, min(s + 64, len(dataset)))])
        feats.append(model.features(x).mean((2, 3)).double().numpy())
    return np.concatenate(feats), dataset.labels


def probe(model, task) -> tuple[float, np.ndarray]:
    """(val accuracy, val features); features are standardised per dimension (scale-free: a random network's
    eval-mode features are ~1e-9 yet still informative)."""
    (xt, yt), (xv, yv) = pooled(model, task.train), pooled(model, task.val)
    mean, std = xt.mean(0), xt.std(0)
    std[std == 0] = 1.0
    clf = LogisticRegression(max_iter=3000, C=1.0).fit((xt - mean) / std, yt)
    return float(clf.score((xv - mean) / std, yv)), xv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--resolution", type=int, default=160)
    ap.add_argument("--out", default="reports/mobilenet_v2_weights")
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = load_task("mobilenet_v2", "fashion_mnist", resolution=args.resolution, limit=args.train, val_limit=args.val)
    variants = {"converted, Keras padding (default)": lambda: build_model("mobilenet_v2", num_classes=10),
                "converted, torchvision padding": lambda: symmetric_padding(build_model("mobilenet_v2", num_classes=10)),
                "random init": lambda: build_model("mobilenet_v2", num_classes=10, weights="random")}
    rows, feats = [], {}
    for name, make in variants.items():
        start = time.perf_counter()
        acc, feats[name] = probe(make(), task)
        rows.append({"variant": name, "val_acc": acc, "seconds": round(time.perf_counter() - start, 1)})
        print(f"{acc:.4f}  {name}")
    keras, tv = feats[next(iter(variants))], feats["converted, torchvision padding"]
    change = float(np.median(np.linalg.norm(tv - keras, axis=1) / np.linalg.norm(keras, axis=1)))
    print(f"padding changes the pooled features by {100 * change:.1f}% (median relative L2 over val examples)")
    record = {"format": "zest-edge/weights-probe", "version": 1, "model": "mobilenet_v2", "data": "fashion_mnist",
              "resolution": args.resolution, "train_examples": len(task.train), "val_examples": len(task.val),
              "probe": "logistic regression on standardised pooled features (C=1)", "rows": rows,
              "padding_feature_change": change}
    out = Path(args.out)
    write_json(out / "probe.json", record)
    lines = ["# MobileNetV2 converted from Keras: linear probe on Fashion-MNIST", "",
             f"{len(task.train)} train / {len(task.val)} val examples (class-balanced), {args.resolution} px, backbone frozen; "
             "logistic regression on the standardised 1280-d pooled features.", "",
             "| weights | val accuracy |", "|---|---:|"] + [f"| {r['variant']} | {100 * r['val_acc']:.1f}% |" for r in rows] + [
             "", f"Padding the stride-2 convolutions like torchvision instead of like Keras changes the pooled features "
             f"by {100 * change:.1f}% (median relative L2 distance over the validation examples)."]
    write_text(out / "probe.md", "\n".join(lines) + "\n")
    print(f"wrote {out}/probe.json and probe.md")


if __name__ == "__main__":
    main()
