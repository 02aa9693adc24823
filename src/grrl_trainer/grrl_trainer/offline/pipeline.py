"""``grrl-offline``: the whole offline stage in one resumable command — critic (TD3+BC) →
progress filter → behaviour cloning on all / filtered / filtered + mirrored data → evaluation of
each in the simulator — ending with the three success rates side by side (the first three rungs
of the paper's ladder).

    grrl-offline --data data/demos300 --out runs/offline [--critic-steps 3000] [--bc-steps 4000]
                 [--eval-episodes 100] [--delta 0.05] [--quiet]

Every stage writes into ``OUT/<stage>`` and is skipped when its result is already there, so an
interrupted run continues where it stopped (the training stages also resume mid-way).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from grrl_critic.filtering import FilterConfig
from grrl_critic.td3bc import DivergedError, TD3BCConfig
from grrl_policy.checkpoint import CheckpointError
from grrl_tools.config_cli import add_arguments, from_args
from grrl_trainer.offline.bc import VARIANTS, BCConfig, TrainingDiverged, train_bc
from grrl_trainer.offline.critic_train import (FIG3_EPISODES, CriticRunConfig, plot_filtered,
                                               train_critic)
from grrl_trainer.data.dataset import DatasetError
from grrl_trainer.evaluation.evaluate import EvalConfig, evaluate_or_reuse
from grrl_trainer.offline.progress_filter import run_filter

LOG = logging.getLogger("grrl-offline")


@dataclass
class OfflineConfig:
    """Sizes of the offline stage (defaults fit a 2-core CPU in about an hour and a half; those
    that are the stages' own defaults are taken from their configs)."""

    preset: str = BCConfig.preset
    """model preset of critic and policies (grrl_policy.model.preset)"""
    critic_steps: int = 1000
    """gradient steps of the critic (where the held-out flaw AUROC peaked, docs/results/critic)"""
    critic_kind: str = TD3BCConfig.kind
    """the critic: 'distributional' (the paper), 'regression' (scalar TD) or 'time' (t/T)"""
    target_actions: str = TD3BCConfig.target_actions
    """what supplies a' in the critic's TD target: 'actor' (TD3+BC) or 'dataset'"""
    gamma: float = TD3BCConfig.gamma
    """discount per step (eq. 1)"""
    delta: float = FilterConfig.delta
    """filter threshold on the progress drop within rho_{t:t+k}"""
    drop: str = FilterConfig.drop
    """how the filter measures a drop (grrl_critic.filtering.FilterConfig.drop)"""
    keep_stages: tuple[int, ...] = (0,)
    """task stages the filter never removes (FilterConfig.keep_stages); the reach-and-pick stage:
    held out, BC filtered so gets 27/100 against 3/100 without and 9/100 on all data
    (docs/results/critic)"""
    max_removed_fraction: float = FilterConfig.max_removed_fraction
    """the filter removes at most this fraction of each progress band (FilterConfig's field)"""
    bc_steps: int = 4000
    """optimizer steps of each BC run"""
    batch_size: int = BCConfig.batch_size
    """samples per step, critic and BC"""
    eval_episodes: int = EvalConfig.episodes
    """evaluation episodes per policy"""
    eval_first_seed: int = EvalConfig.first_seed
    """first evaluation seed (held out from the demonstrations)"""
    eval_workers: int = EvalConfig.workers
    """evaluation worker processes"""
    time_limit: float = EvalConfig.time_limit
    """simulated seconds before an evaluation episode counts as a failure"""
    seed: int = BCConfig.seed
    """training seed of critic and policies"""


def rung_table(reports: dict[str, dict]) -> str:
    """Markdown table of the evaluated rungs."""
    lines = ["| policy | success | 95% CI | " + " | ".join(next(iter(reports.values()))["funnel"]) + " |",
             "|---|---|---|" + "---|" * len(next(iter(reports.values()))["funnel"])]
    for name, r in reports.items():
        lo, hi = r["success_ci95"]
        lines.append(f"| {name} | {r['successes']}/{r['episodes']} = {100 * r['success_rate']:.1f}% | "
                     f"{100 * lo:.1f}-{100 * hi:.1f}% | "
                     + " | ".join(f"{100 * v:.0f}%" for v in r["funnel"].values()) + " |")
    return "\n".join(lines)


def plot_ladder(reports: dict[str, dict], out: Path, title: str) -> Path:
    """Success rate per rung with its 95% interval (the paper's Fig. 5, left)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(reports)
    rates = [100 * reports[n]["success_rate"] for n in names]
    err = [[r - 100 * reports[n]["success_ci95"][0] for n, r in zip(names, rates)],
           [100 * reports[n]["success_ci95"][1] - r for n, r in zip(names, rates)]]
    fig, ax = plt.subplots(figsize=(1.8 * len(names) + 2, 3.5))
    ax.bar(names, rates, yerr=err, capsize=5, color="tab:blue")
    for i, (n, r) in enumerate(zip(names, rates)):     # above the interval, readable
        ax.text(i, 100 * reports[n]["success_ci95"][1] + 2, f"{r:.1f}%", ha="center", fontsize=9)
    ax.set_ylim(0, 105)
    ax.set_ylabel("success (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def filter_config(cfg: Any) -> FilterConfig:
    """The filter rule of a stage config that carries FilterConfig's delta, drop, keep_stages and
    max_removed_fraction (OfflineConfig, ReproduceConfig); k and gamma come from the critic."""
    return FilterConfig(cfg.delta, drop=cfg.drop, keep_stages=cfg.keep_stages,
                        max_removed_fraction=cfg.max_removed_fraction)


def filter_once(critic: Path, data: Path, filt: Path, cfg: FilterConfig, plot: Path,
                progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """The data filter of ``critic`` by ``cfg`` into ``filt`` (+ its Fig. 3 ``plot``), unless
    ``filt`` already holds one with the same rule (every field but k and gamma, which come from
    the critic); returns it and its summary."""
    done = filt.with_suffix(".json")
    rule = {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items() if k not in ("horizon", "gamma")}
    same = filt.exists() and done.exists() and all(
        json.loads(done.read_text())["config"].get(k) == v for k, v in rule.items())
    if not same:
        filt, _ = run_filter(critic, data, filt, cfg, progress=progress)
        plot_filtered(data, filt, FIG3_EPISODES, plot)
    return filt, json.loads(done.read_text())


def run_offline(data: str | Path, out: str | Path, cfg: OfflineConfig, progress: bool = True) -> dict[str, Any]:
    data, out = Path(data).resolve(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    timings: dict[str, float] = {}

    # 1. the task-progress critic (section 3.1)
    t = time.time()
    critic = train_critic(data, out / "critic", CriticRunConfig(
        preset=cfg.preset, steps=cfg.critic_steps, batch_size=cfg.batch_size, seed=cfg.seed,
        td3bc=TD3BCConfig(kind=cfg.critic_kind, gamma=cfg.gamma, target_actions=cfg.target_actions)),
        progress=progress)
    timings["critic"] = time.time() - t

    # 2. the filter
    t = time.time()
    filt, summary = filter_once(critic, data, out / "filter.npz",
                                filter_config(cfg), out / "filter.png", progress)
    timings["filter"] = time.time() - t
    LOG.info("filter kept %.1f%% of %d samples", 100 * summary["kept_fraction"], summary["samples"])

    # 3. behaviour cloning, three variants (section 3.2)
    policies = {}
    for variant in VARIANTS:
        t = time.time()
        policies[variant] = train_bc(data, out / f"bc_{variant}", BCConfig(
            preset=cfg.preset, variant=variant, filter=str(filt) if variant != "all" else "",
            steps=cfg.bc_steps, batch_size=cfg.batch_size, seed=cfg.seed), progress=progress)
        timings[f"bc_{variant}"] = time.time() - t

    # 4. evaluation of each on the same held-out seeds
    reports = {}
    for variant, ckpt in policies.items():
        t = time.time()
        ecfg = EvalConfig(episodes=cfg.eval_episodes, first_seed=cfg.eval_first_seed,
                          workers=cfg.eval_workers, time_limit=cfg.time_limit,
                          out_dir=str(out / f"eval_{variant}"))
        report = evaluate_or_reuse(str(ckpt), ecfg, progress)
        reports[f"BC {variant.replace('_', ' + ')}"] = report
        timings[f"eval_{variant}"] = time.time() - t
    table = rung_table(reports)
    plot = plot_ladder(reports, out / "ladder_offline.png",
                       f"offline rungs, {cfg.eval_episodes} held-out seeds from {cfg.eval_first_seed}")
    results = {"config": dataclasses.asdict(cfg), "data": str(data), "filter": summary, "timings_s": timings,
               "total_s": time.time() - t0,
               "rungs": {k: {key: v[key] for key in ("success_rate", "success_ci95", "successes",
                                                     "episodes", "funnel")} for k, v in reports.items()},
               "table": table, "plot": str(plot)}
    (out / "offline_results.json").write_text(json.dumps(results, indent=1))
    (out / "offline_results.md").write_text(table + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grrl-offline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset directory (grrl-data collect)")
    parser.add_argument("--out", required=True, help="run directory (resumed if it holds a run)")
    add_arguments(parser, OfflineConfig())
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        cfg = from_args(args, OfflineConfig())
        results = run_offline(args.data, args.out, cfg, progress=not args.quiet)
    except (ValueError, DatasetError, DivergedError, TrainingDiverged, CheckpointError, FileNotFoundError) as exc:
        print(f"grrl-offline: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("grrl-offline: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    print(f"offline stage done in {results['total_s'] / 60:.1f} min; filter kept "
          f"{100 * results['filter']['kept_fraction']:.1f}% of the samples")
    print(results["table"])
    for name, r in results["rungs"].items():
        lo, hi = r["success_ci95"]
        print(f"{name:<24} {100 * r['success_rate']:5.1f}%  (95% CI {100 * lo:.1f}-{100 * hi:.1f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
