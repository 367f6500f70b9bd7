"""Quickstart: fit y = w*x + b by gradient descent, the SageMaker way.

It reads its data from the `train` channel (SM_CHANNEL_TRAIN), its hyperparameters
from argv (exactly as SageMaker passes them), writes the model to SM_MODEL_DIR and
prints metrics to stdout. Pure Python: runs in a second on any CPU.
"""

import argparse
import csv
import glob
import json
import os


def load(channel_dir):
    xs, ys = [], []
    for path in sorted(glob.glob(os.path.join(channel_dir, "*.csv"))):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                xs.append(float(row["x"]))
                ys.append(float(row["y"]))
    if not xs:
        raise ValueError(f"no training rows found in {channel_dir}")
    return xs, ys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "model"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN", "data"))
    args = parser.parse_args()

    xs, ys = load(args.train)
    w, b, n = 0.0, 0.0, len(xs)
    for epoch in range(1, args.epochs + 1):
        grad_w = sum((w * x + b - y) * x for x, y in zip(xs, ys)) * 2 / n
        grad_b = sum(w * x + b - y for x, y in zip(xs, ys)) * 2 / n
        w, b = w - args.lr * grad_w, b - args.lr * grad_b
        mse = sum((w * x + b - y) ** 2 for x, y in zip(xs, ys)) / n
        if epoch % 10 == 0 or epoch == args.epochs:
            print(f"epoch={epoch} mse={mse:.6f} w={w:.4f} b={b:.4f}")

    os.makedirs(args.model_dir, exist_ok=True)
    with open(os.path.join(args.model_dir, "model.json"), "w") as handle:
        json.dump({"w": w, "b": b, "mse": mse, "rows": n}, handle)
    print(f"saved model to {args.model_dir}/model.json")


if __name__ == "__main__":
    main()
