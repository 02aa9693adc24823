"""Plots of the learned task progress: Fig. 3 (progress along demonstrations with the retry
keyframes and the removed samples) and Fig. 7 (distributional vs regression TD vs t/T on the
same successful trajectory)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class ProgressCurve:
    """One episode's progress and what the filter did with it."""

    rho: np.ndarray
    """(T,) progress per step"""
    keep: np.ndarray | None = None
    """(T,) bool, False where the filter removed the sample"""
    keyframes: list[int] = field(default_factory=list)
    """retry keyframes (dataset steps)"""
    title: str = ""
    flaw: np.ndarray | None = None
    """(T,) ground-truth flaw codes (FLAW_TYPES), drawn as a band under the curve"""


FLAW_COLORS = {"miss": "tab:orange", "drop": "tab:purple", "pause": "tab:gray",
               "creep": "tab:olive", "give_up": "k"}


def _save(fig, out: str | Path) -> Path:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _removed_spans(keep: np.ndarray) -> list[tuple[int, int]]:
    spans, start = [], None
    for t, k in enumerate(list(keep) + [True]):
        if not k and start is None:
            start = t
        elif k and start is not None:
            spans.append((start, t))
            start = None
    return spans


def plot_progress(curves: list[ProgressCurve], out: str | Path, fps: float = 10.0) -> Path:
    """Fig. 3: one panel per episode, progress over time; keyframes dashed, removed shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.2 * n), squeeze=False)
    for ax, c in zip(axes[:, 0], curves):
        t = np.arange(len(c.rho)) / fps
        ax.plot(t, c.rho, color="tab:blue", lw=1.5, label="progress ρ")
        if c.keep is not None:
            for i, (a, b) in enumerate(_removed_spans(np.asarray(c.keep, bool))):
                ax.axvspan(a / fps, b / fps, color="tab:red", alpha=0.2, lw=0,
                           label="removed by the filter" if i == 0 else None)
        for i, m in enumerate(c.keyframes):
            ax.axvline(m / fps, color="k", ls="--", lw=1, label="retry keyframe" if i == 0 else None)
        if c.flaw is not None:
            from bytemini_driver.demonstrator import FLAW_TYPES
            for code in np.unique(c.flaw[c.flaw > 0]):
                name = FLAW_TYPES[int(code)]
                for i, (a, b) in enumerate(_removed_spans(c.flaw != code)):
                    ax.fill_between([a / fps, b / fps], -0.02, 0.04, color=FLAW_COLORS[name],
                                    lw=0, label=f"flaw: {name}" if i == 0 else None)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("ρ")
        ax.set_title(c.title, fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("time (s)")
    return _save(fig, out)


def plot_critic_comparison(curves: dict[str, np.ndarray], out: str | Path, title: str = "",
                           keyframes: list[int] | None = None, fps: float = 10.0) -> Path:
    """Fig. 7: the progress of several critics on the same trajectory, each min-max scaled to
    [0, 1] so that shapes compare (the regression critic is unbounded)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    for name, rho in curves.items():
        rho = np.asarray(rho, float)
        span = rho.max() - rho.min()
        scaled = (rho - rho.min()) / span if span > 1e-9 else np.zeros_like(rho)
        ax.plot(np.arange(len(rho)) / fps, scaled, lw=1.5, label=f"{name} (range {rho.min():.2f}..{rho.max():.2f})")
    for i, m in enumerate(keyframes or []):
        ax.axvline(m / fps, color="k", ls="--", lw=1, label="retry keyframe" if i == 0 else None)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("progress (scaled)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out)


def plot_flaw_evaluation(ev, out: str | Path, title: str = "") -> Path:
    """One figure of a :class:`grrl_critic.flaw_metrics.FlawEvaluation`: ROC of the drop score
    per flaw type, the delta rule's precision and recall, and the calibration of rho."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    for name, (fpr, tpr) in ev.curves.items():
        auc = ev.auroc.get(name)
        a.plot(fpr, tpr, lw=2 if name == "all" else 1.2, color=FLAW_COLORS.get(name, "tab:blue"),
               label=f"{name}: AUROC {auc:.2f}" if auc is not None else name)
    a.plot([0, 1], [0, 1], color="0.7", ls=":", lw=1)
    a.set_xlabel("false-positive rate (clean samples removed)")
    a.set_ylabel("true-positive rate (flawed samples removed)")
    a.set_title("drop score vs ground truth", fontsize=9)
    a.legend(fontsize=7, loc="lower right")
    d = [r["delta"] for r in ev.by_delta]
    b.plot(d, [r["precision"] if r["precision"] is not None else np.nan for r in ev.by_delta],
           "o-", label="precision")
    b.plot(d, [r["recall"] for r in ev.by_delta], "s-", label="recall")
    b.plot(d, [r["removed_fraction"] for r in ev.by_delta], "^--", color="0.5",
           label="removed fraction")
    b.set_xlabel("δ")
    b.set_ylim(-0.02, 1.02)
    b.set_title(f"the δ rule (truth per {ev.config.truth}, {100 * ev.flawed_fraction:.0f}% flawed)",
                fontsize=9)
    b.legend(fontsize=7)
    bins = ev.calibration["bins"]
    c.plot([0, 1], [0, 1], color="0.7", ls=":", lw=1)
    c.plot([r["predicted"] for r in bins], [r["empirical"] for r in bins], "o-")
    c.set_xlabel("predicted progress ρ (bin mean)")
    c.set_ylabel("empirical discounted success")
    c.set_title(f"calibration (ECE {ev.calibration['ece']:.3f})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def plot_episode_progress(t: np.ndarray, rho: np.ndarray, out: str | Path, title: str = "") -> Path:
    """The live task progress of one episode: rho (per action chunk) over its time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 2.6))
    ax.plot(np.asarray(t, float) - float(t[0]), rho, "o-", ms=2.5, lw=1.2, color="tab:blue")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("time since the first chunk (s)")
    ax.set_ylabel("progress ρ")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_selection(rows: list[dict], selected: int, out: str | Path, title: str = "") -> Path:
    """Held-out flaw ROC-AUC of a critic run's checkpoints over training steps, per flaw type."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    steps = [r["step"] for r in rows]
    for name in rows[0]["auroc"]:
        ax.plot(steps, [r["auroc"].get(name) or np.nan for r in rows], "o-",
                lw=2 if name == "all" else 1, color=FLAW_COLORS.get(name, "tab:blue"), label=name)
    ax.axvline(selected, color="k", ls="--", lw=1, label="selected")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out ROC-AUC")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    return _save(fig, out)
