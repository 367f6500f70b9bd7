"""Fit y = w * x + b by gradient descent: a small, dependency-free training script.

Run by smtk's ``train`` inside the example image (see README.md). Reads:

- hyperparameters as arguments: ``--epochs`` (default 200), ``--learning-rate`` (default 0.1);
- the ``train`` channel (``SM_CHANNEL_TRAIN``): CSV files of ``x,y`` lines; without one, it
  fits points of y = 3x + 1;

and writes ``model.json`` (w, b, final loss) to ``SM_MODEL_DIR`` and the loss curve to
``SM_OUTPUT_DATA_DIR``. A bad hyperparameter raises ``ValueError``, whose message is then the
first line of ``/opt/ml/output/failure``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def load_points(channel: str | None) -> list[tuple[float, float]]:
    if channel and Path(channel).is_dir():
        points = []
        for csv in sorted(Path(channel).glob("*.csv")):
            for line in csv.read_text().splitlines():
                if line.strip():
                    x, y = line.split(",")
                    points.append((float(x), float(y)))
        if points:
            return points
    return [(i / 10, 3 * (i / 10) + 1) for i in range(20)]


def fit(points: list[tuple[float, float]], epochs: int, rate: float) -> tuple[float, float, list[float]]:
    w = b = 0.0
    losses = []
    n = len(points)
    for _ in range(epochs):
        grad_w = sum(2 * (w * x + b - y) * x for x, y in points) / n
        grad_b = sum(2 * (w * x + b - y) for x, y in points) / n
        w -= rate * grad_w
        b -= rate * grad_b
        losses.append(sum((w * x + b - y) ** 2 for x, y in points) / n)
    return w, b, losses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    args, _ = parser.parse_known_args()
    if args.learning_rate <= 0:
        raise ValueError(f"learning-rate must be positive, got {args.learning_rate}")

    points = load_points(os.environ.get("SM_CHANNEL_TRAIN"))
    w, b, losses = fit(points, args.epochs, args.learning_rate)
    print(f"trained on {len(points)} points, {args.epochs} epochs: w={w:.4f} b={b:.4f} loss={losses[-1]:.6f}")

    model_dir = Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    (model_dir / "model.json").write_text(json.dumps({"w": w, "b": b, "loss": losses[-1]}))
    output_dir = Path(os.environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "losses.txt").write_text("\n".join(f"{loss:.6f}" for loss in losses) + "\n")


if __name__ == "__main__":
    main()
