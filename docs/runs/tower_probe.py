"""What the demo's synthetic clips let a small supervised video model learn (issue 17, "a video tower that learns").

Trains one model on fold 1's training clips of a `make_synthetic` folder (8 frames, the training transform of
`grace-fast train` unless --no-augment) and prints one JSON line with its test UAR/WAR on fold 1's test clips:
- "cnn": a small 3D CNN on the frames and their differences to frame 0, class-weighted cross-entropy;
- "grid": the demo's VideoMAE tower read out by a linear layer over all its tokens (GridTower), cross-entropy;
- "grace": the demo's GraceModel (model.tiny.demo_config plus --overrides) in the class-prompt mode with GraceLoss,
  AdamW, warm-up and cosine as `grace-fast train`, on one torch thread; no validation split: the last epoch counts.

    python docs/runs/tower_probe.py DATA --model cnn --size 32 --epochs 30 --seed 0 >> docs/runs/tower-probe.jsonl
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from grace_fast.data.datasets import collate
from grace_fast.data.layouts import load_clips
from grace_fast.data.transforms import Normalization
from grace_fast.eval.metrics import classification_metrics
from grace_fast.model.losses import GraceLoss, inverse_frequency_weights
from grace_fast.model.model import GraceModel
from grace_fast.model.tiny import CORPUS, build_tiny_tokenizer, demo_config
from grace_fast.model.video import VideoEncoder
from grace_fast.train.schedule import build_scheduler
from grace_fast.train.task import class_prompts, clip_dataset


class MotionCNN(nn.Module):
    """[B, T, 3, S, S] -> logits [B, C]: 3D convolutions over the frames and their differences to frame 0."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.GELU())

        self.features = nn.Sequential(
            block(6, width),
            nn.MaxPool3d((1, 2, 2)),
            block(width, 2 * width),
            nn.MaxPool3d(2),
            block(2 * width, 4 * width),
            nn.AdaptiveAvgPool3d(1),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = torch.cat([x, x - x[:, :1]], dim=2).transpose(1, 2)  # [B, 6, T, S, S]
        return self.classifier(self.features(x).flatten(1))


class GridTower(nn.Module):
    """[B, T, 3, S, S] -> logits [B, C]: the demo's VideoMAE tower, read out by one linear layer over its whole token
    grid (no pooling), to see whether pooling is where GRACE loses the signal."""

    def __init__(self, config, num_classes: int):
        super().__init__()
        self.video = VideoEncoder(config)
        self.classifier = nn.Linear(math.prod(self.video.grid) * self.video.hidden_size, num_classes)

    def forward(self, x):
        return self.classifier(self.video(x).flatten(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--model", choices=("cnn", "grace", "grid"), default="cnn")
    parser.add_argument("--size", type=int, default=32, help="model input side in pixels")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--crop-scale", type=float, default=0.5, help="smallest area of the random resized crop")
    parser.add_argument("--overrides", type=json.loads, default={}, help="GraceConfig fields (grace)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    train = load_clips("synthetic", args.data, split="train", fold=1)
    test = load_clips("synthetic", args.data, split="test", fold=1)
    classes = len(train.classes)
    if args.model == "grid":
        model = GridTower(demo_config(build_tiny_tokenizer(tempfile.mkdtemp()), image_size=args.size), classes)
        frames = 8
        config = None
    elif args.model == "cnn":
        model = MotionCNN(classes)
        frames = 8
        config = None
    else:
        tokenizer = build_tiny_tokenizer(tempfile.mkdtemp(), 2048, corpus=CORPUS)
        config = demo_config(
            tokenizer,
            num_classes=classes,
            class_prompts=class_prompts(train.classes),
            image_size=args.size,
            **args.overrides,
        )
        model = GraceModel(config)
        loss_fn = GraceLoss(config, inverse_frequency_weights(torch.as_tensor(train.class_counts())))
        frames = config.frames
    probe = SimpleNamespace(frames=frames, image_size=args.size)
    train_set = clip_dataset(train, probe, Normalization(), train=not args.no_augment, seed=args.seed, cache=True)
    train_set.transform = replace(train_set.transform, scale=(args.crop_scale, 1.0))
    test_set = clip_dataset(test, probe, Normalization(), train=False, cache=True)
    weights = inverse_frequency_weights(torch.as_tensor(train.class_counts()))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=args.lr
    )
    steps = args.epochs * -(-len(train_set) // args.batch_size)
    scheduler = build_scheduler(optimizer, round(0.1 * steps), steps)
    generator = torch.Generator().manual_seed(args.seed)
    losses = []
    for epoch in range(args.epochs):
        train_set.set_epoch(epoch)
        model.train()
        order = torch.randperm(len(train_set), generator=generator).tolist()
        total = 0.0
        for i in range(0, len(order), args.batch_size):
            batch = collate([train_set[j] for j in order[i : i + args.batch_size]])
            labels = torch.as_tensor(batch.labels)
            if config is None:
                loss = F.cross_entropy(model(batch.frames), labels, weight=weights)
            else:
                loss = loss_fn(model(batch.frames, None), labels).total
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(labels)
        losses.append(round(total / len(train_set), 4))
        print(
            f"epoch {epoch + 1}: loss {losses[-1]} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True
        )
    model.eval()
    predictions, labels = [], []
    with torch.no_grad():
        for i in range(0, len(test_set), 50):
            batch = collate([test_set[j] for j in range(i, min(i + 50, len(test_set)))])
            logits = model(batch.frames) if config is None else model(batch.frames, None).logits
            predictions += logits.argmax(1).tolist()
            labels += list(batch.labels)
    metrics = classification_metrics(labels, predictions, classes)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        json.dumps(
            {
                "model": args.model,
                "data": args.data,
                "size": args.size,
                "epochs": args.epochs,
                "lr": args.lr,
                "batch_size": args.batch_size,
                "seed": args.seed,
                "augment": not args.no_augment,
                "crop_scale": args.crop_scale,
                "overrides": args.overrides,
                "test_uar": round(100 * metrics.uar, 1),
                "test_war": round(100 * metrics.war, 1),
                "train_loss": losses,
                "seconds": round(time.perf_counter() - start, 1),
                "commit": commit,
                "cpu": f"{platform.machine()}, {os.cpu_count()} cores, 1 torch thread",
                "params": sum(p.numel() for p in model.parameters()),
                "labels_seen": np.bincount(labels, minlength=classes).tolist(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
