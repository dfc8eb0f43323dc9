"""Loss curves from metrics.jsonl as a PNG."""
import json


def plot_metrics(metrics_path: str, png_path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_path) if line.strip()]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "ce", "kd", "hidden"):
        if any(r.get(key) for r in rows):
            ax.plot(steps, [r.get(key, 0.0) for r in rows], label=key, linewidth=1)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def tensorboard_writer(out_dir: str, start_step: int = 0):
    """A TensorBoard SummaryWriter on ``out_dir``/tensorboard when tensorboard is installed (the
    ``tensorboard`` extra), else None. Events after ``start_step`` (a resumed run) are purged."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    import os
    return SummaryWriter(os.path.join(out_dir, "tensorboard"),
                         purge_step=start_step + 1 if start_step else None)


def log_scalars(writer, step: int, metrics: dict) -> None:
    """The numeric entries of one metrics.jsonl line as TensorBoard scalars train/<name>."""
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(f"train/{key}", value, step)
