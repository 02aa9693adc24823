"""``grrl-reproduce``: the paper's whole ladder in the simulator, in one resumable command.

    grrl-reproduce --out runs/reproduce [--size default|small|smoke] [--observation state|images]
                   [--publish docs/results/reproduce] [--ship checkpoints/grrl_sim]

1. collect flawed demonstrations (the demonstrator of ``bytemini_driver.demonstrator``), half
   of them (``dart_demos``) executed with DART noise, and merge them;
2. train the task-progress critic (TD3+BC, section 3.1) and filter the data with it;
3. behaviour cloning on all / filtered / filtered + mirrored data (section 3.2; the three BC
   runs train side by side, ``parallel`` at a time);
4. online steering RL of the filtered + mirrored policy (section 3.3): critic warm-up rollouts,
   then rounds of steered episodes and updates;
5. evaluation of every rung on the same held-out seeds (Wilson 95% intervals, stage funnel),
   the offline rungs once per ``offline_noise`` σ (ε = 0 and ε ~ N(0, I) by default);
6. the results table, the ladder (Fig. 5 left), the online curve (Fig. 5 right) and the stage
   funnel (Fig. 6) in ``OUT/results`` (and ``--publish``); ``--ship`` copies the policy of the
   best measured rung (the later one on a tie: normally the online-RL policy).

Every stage resumes: a killed run continues where it stopped when the same command is run again
(collection skips stored episodes, training resumes from its last checkpoint, finished
evaluations are read back).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from grrl_critic.filtering import FilterConfig
from grrl_tools.config_cli import add_arguments, from_args

LOG = logging.getLogger("grrl-reproduce")
RUNGS = ("BC all", "BC filtered", "BC filtered + mirror", "+ online RL")
RUNTIME = ("device", "workers", "parallel", "offline_noise")
"""settings a resumed reproduction may change: where it runs, and which further evaluations of
the offline rungs it makes (each evaluation is reused only with its own settings)"""
LEGACY = {"warmup_noise": 1.0, "explore_std": 0.3}
"""what a reproduction saved before these settings existed did"""


@dataclass
class ReproduceConfig:
    """Sizes of a reproduction (``--size`` picks a row of :data:`SIZES`; flags given win)."""

    preset: str = "tiny-state-task"
    """model preset of critic and policies (grrl_policy.model.preset)"""
    demos: int = 300
    """flawed demonstrations to collect (seeds 0..demos-1)"""
    dart_demos: int = 300
    """further flawed demonstrations executed with DART noise (seeds demos..demos+dart_demos-1;
    the recorded targets are the demonstrator's, the executed ones carry a smooth offset), merged
    with the others (not with ``--data``, which is used as given); 0 = none. BC all went from
    9/100 (300 plain, 8,000 steps) to 38/100 with 300 + 300 DART at 16,000 steps (56/100 at
    24,000), held out (docs/results/ladder)"""
    dart_noise_std: float = 0.005
    """execution noise of the DART demonstrations (rad; CollectConfig.execution_noise_std)"""
    left_bias: float = 0.8
    """share of demonstrations that lace the left end (what mirroring has to make up for)"""
    critic_preset: str = "tiny-state"
    """model preset of the filtering critic (with --observation images: the policies' preset).
    The chosen critic of docs/results/critic: 'tiny-state' (width 64) with normalised state"""
    critic_model: str = '{"state_norm": true}'
    """JSON overrides of the critic's preset"""
    critic_steps: int = 1000
    """gradient steps of the critic (1,000: where the held-out flaw AUROC peaked,
    docs/results/critic; later checkpoints fit the demonstrations and rank the flaws worse)"""
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
    bc_model: str = '{"action_mode": "delta", "action_norm": "per_step", "state_norm": true}'
    """JSON overrides of the preset for the BC policies: the imitation recipe (chunk-relative
    actions, per-step action statistics, normalised state; docs/results/imitation)"""
    bc_steps: int = 24000
    """optimizer steps of the BC runs on all and on filtered data (held out, docs/results/ladder:
    BC all on 300 + 300 DART demonstrations 38/100 at 16,000 steps, 56/100 at 24,000)"""
    mirror_steps_factor: float = 1.0
    """the filtered + mirror run trains round(factor x bc_steps) steps. Mirroring doubles the
    distinct samples: on the 300 plain demonstrations at 8,000 steps it needed twice the steps
    (16/100; 45/100 at 16,000); on 300 + 300 DART it reached 49/100 at 16,000. At 24,000 steps the
    default keeps it equal to the other runs (what a run costs on a 2-core CPU; 2.0 is not
    measured there)"""
    bc_lr: float = 5e-4
    """peak learning rate of the BC runs"""
    bc_batch_size: int = 128
    """samples per BC step"""
    batch_size: int = 256
    """samples per critic step"""
    parallel: int = 2
    """BC runs trained at once (one torch thread each)"""
    eval_episodes: int = 100
    """evaluation episodes per rung (the same seeds for every rung)"""
    eval_first_seed: int = 10_000
    """first evaluation seed (held out from the demonstrations)"""
    online_episodes: int = 144
    """online RL episodes (the paper's target: within 150)"""
    episodes_per_round: int = 12
    """online episodes between two rounds of updates"""
    updates_per_round: int = 50
    """online gradient updates per round"""
    warmup_episodes: int = 48
    """critic warm-up rollouts of the offline policy before steering"""
    warmup_updates: int = 300
    """critic updates on the warm-up rollouts"""
    warmup_noise: float = 0.3
    """σ of the warm-up rollouts' initial noise ε ~ N(0, σ²I) (RolloutConfig.unsteered_noise:
    0.3, the online exploration around ε = 0; 1 gave an online rung of 68 instead of 91/100)"""
    explore_std: float = 0.3
    """exploration around the steered ε in online episodes (RolloutConfig.explore_std)"""
    offline_noise: tuple[float, ...] = (0.0, 1.0)
    """σ of the initial noise ε ~ N(0, σ²I) the offline rungs act with in their evaluations, a
    ladder per σ (the steered online rung closes each). The first is the headline (``rungs``,
    ladder.png, the shipped best rung): 0 = the flow's central chunk, where the online stage
    starts and where the offline policies do best (BC filtered + mirror: 82 vs 56/100 at σ = 1);
    1 = the flow's training noise, the paper's sampling"""
    workers: int = 2
    """simulation worker processes (collection, rollouts, evaluation)"""
    time_limit: float = 40.0
    """simulated seconds per online RL episode (the longest demonstration takes 28 s)"""
    eval_time_limit: float = 60.0
    """simulated seconds per evaluation episode: grrl-eval's default (EvalConfig.time_limit),
    the limit of every held-out number in docs/results, so the rungs compare with them"""
    device: str = "cpu"
    """torch device of the training stages (critic, BC, online learner); rollouts and
    evaluations run on CPU worker processes"""
    observation: str = "state"
    """'state' (simulator state) or 'images' (three 128x128 cameras: the image model)"""
    seed: int = 0
    """training seed of every stage"""


SIZES: dict[str, dict[str, Any]] = {
    "default": {},
    "small": dict(demos=60, dart_demos=60, critic_steps=600, bc_steps=800, eval_episodes=30, online_episodes=24,
                  warmup_episodes=12, warmup_updates=60, updates_per_round=20, eval_time_limit=40.0),
    # (5 demonstrations: the critic needs a success among them, and seeds 0-2 all fail)
    "smoke": dict(demos=5, dart_demos=2, critic_steps=4, bc_steps=4, eval_episodes=2, online_episodes=2,
                  episodes_per_round=1, updates_per_round=2, warmup_episodes=1, warmup_updates=2,
                  batch_size=16, bc_batch_size=16, time_limit=2.0, eval_time_limit=2.0, workers=1,
                  parallel=1, mirror_steps_factor=2.0),      # (so that the test sees the factor applied)
}


def bc_steps(cfg: ReproduceConfig, variant: str) -> int:
    """Optimizer steps of the BC run of ``variant`` ('all', 'filtered', 'filtered_mirror')."""
    factor = cfg.mirror_steps_factor if variant == "filtered_mirror" else 1.0
    return max(1, round(cfg.bc_steps * factor))


def _bc_job(args: tuple[str, str, Any]) -> str:
    """One BC run in a worker process (one torch thread: the runs share the cores)."""
    import torch

    from grrl_trainer.offline.bc import train_bc
    torch.set_num_threads(1)
    data, run_dir, cfg = args
    return str(train_bc(data, run_dir, cfg, progress=False))


def ladder_name(sigma: float) -> str:
    """The key of the ladder whose offline rungs act with ε ~ N(0, σ²I): 'sigma=0', 'sigma=1'."""
    return f"sigma={sigma:g}"


def eval_dir(variant: str, sigma: float) -> str:
    """The evaluation directory of an offline rung at σ (σ = 1 keeps the name it always had)."""
    return f"eval_{variant}" if sigma == 1.0 else f"eval_{variant}_sigma{sigma:g}"


def _evaluate(ckpt: str, edir: Path, cfg: ReproduceConfig, steer: bool, progress: bool,
              noise_scale: float = 1.0) -> dict:
    from grrl_policy.controller import ControllerConfig
    from grrl_trainer.evaluation.evaluate import EvalConfig, evaluate_or_reuse
    ecfg = EvalConfig(episodes=cfg.eval_episodes, first_seed=cfg.eval_first_seed,
                      workers=cfg.workers, time_limit=cfg.eval_time_limit,
                      controller=ControllerConfig(steer=steer, noise_scale=noise_scale),
                      out_dir=str(edir))
    return evaluate_or_reuse(ckpt, ecfg, progress)


def plot_funnel(reports: dict[str, dict], out: Path) -> Path:
    """Share of episodes reaching each stage, per rung (the paper's Fig. 6)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    stages = list(next(iter(reports.values()))["funnel"])
    width = 0.8 / len(reports)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, (name, r) in enumerate(reports.items()):
        ax.bar(np.arange(len(stages)) + i * width, [100 * r["funnel"][s] for s in stages],
               width, label=name)
    ax.set_xticks(np.arange(len(stages)) + width * (len(reports) - 1) / 2, stages)
    ax.set_ylabel("episodes reaching the stage (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def machine() -> dict[str, Any]:
    import torch
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "system": f"{platform.system()} {platform.release()}"}


def reproduce(out: str | Path, cfg: ReproduceConfig, data: str | Path | None = None,
              progress: bool = True) -> dict[str, Any]:
    from grrl_critic.td3bc import TD3BCConfig
    from grrl_trainer.offline.bc import VARIANTS, BCConfig
    from grrl_trainer.data.collect import CollectConfig, collect
    from grrl_trainer.data.merge import merge_datasets
    from grrl_trainer.offline.critic_train import CriticRunConfig, train_critic
    from grrl_trainer.offline.pipeline import filter_config, filter_once, plot_ladder, rung_table
    from grrl_trainer.offline.run_utils import config_diff
    from grrl_trainer.online.trainer import OnlineConfig, RolloutConfig, run_online

    if not cfg.offline_noise or len(set(cfg.offline_noise)) < len(cfg.offline_noise) or \
            not all(0.0 <= s < float("inf") for s in cfg.offline_noise):
        raise ValueError(f"offline_noise needs distinct finite σ >= 0, got {cfg.offline_noise}")
    if not cfg.mirror_steps_factor > 0:
        raise ValueError(f"mirror_steps_factor must be > 0, got {cfg.mirror_steps_factor}")
    if cfg.observation not in ("state", "images"):
        raise ValueError(f"observation must be 'state' or 'images', got {cfg.observation!r}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "reproduce_config.json"
    # through JSON, so that a tuple field compares equal to the list it was saved as
    diff = config_diff({**LEGACY, **json.loads(saved.read_text())},
                       json.loads(json.dumps(dataclasses.asdict(cfg))), RUNTIME) if saved.exists() else []
    if diff:
        raise ValueError(f"{out} holds a reproduction with another configuration "
                         f"({'; '.join(diff)}; see {saved}): use another --out or the same "
                         f"settings")
    saved.write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    # wall seconds per stage, summed over the runs that resumed this reproduction
    timing_file = out / "timings.json"
    timings: dict[str, float] = json.loads(timing_file.read_text()) if timing_file.exists() else {}

    def spent(name: str, since: float) -> None:
        timings[name] = timings.get(name, 0.0) + time.time() - since
        timing_file.write_text(json.dumps(timings, indent=1))

    def stage(name: str):
        LOG.info("== %s", name)
        return time.time()

    # 1. demonstrations
    t = stage("demonstrations")
    ccfg = CollectConfig(images=cfg.observation == "images", left_bias=cfg.left_bias,
                         time_limit=max(cfg.time_limit, CollectConfig.time_limit))
    # --data: the plain demonstrations go there (topped up to ``demos``), as before; the DART
    # half is collected only for a reproduction that owns its data
    parts = [(Path(data).resolve() if data else out / "demos", ccfg, range(cfg.demos))]
    if cfg.dart_demos and not data:
        parts.append((out / "demos_dart", replace(ccfg, execution_noise_std=cfg.dart_noise_std),
                      range(cfg.demos, cfg.demos + cfg.dart_demos)))
    for part, pcfg, seeds in parts:
        if not (part / "info.json").exists() or \
                len(list((part / "episodes").glob("*"))) < len(seeds):
            collect(part, pcfg, list(seeds), cfg.workers, progress=progress)
    data = parts[0][0]
    if len(parts) > 1:
        data = out / "demos_all"
        if not (data / "info.json").exists():
            shutil.rmtree(data, ignore_errors=True)     # links of a merge cut short
            merge_datasets(data, [p for p, _, _ in parts])
    spent("demonstrations", t)

    # 2. critic and filter
    t = stage("critic")
    critic = train_critic(data, out / "critic", CriticRunConfig(
        preset=cfg.critic_preset, model=json.loads(cfg.critic_model or "{}"), steps=cfg.critic_steps,
        batch_size=cfg.batch_size, seed=cfg.seed, td3bc=TD3BCConfig(), device=cfg.device),
        progress=progress)
    spent("critic", t)
    t = stage("filter")
    filt, summary = filter_once(critic, data, out / "filter.npz", filter_config(cfg),
                                out / "fig3_progress_filter.png", progress)
    spent("filter", t)

    # 3. behaviour cloning, the three variants side by side
    t = stage("behaviour cloning")
    steps = {v: bc_steps(cfg, v) for v in VARIANTS}
    order = sorted(VARIANTS, key=lambda v: -steps[v])   # the longest first: it bounds the stage
    jobs = [(str(data), str(out / f"bc_{v}"), BCConfig(
        preset=cfg.preset, model=json.loads(cfg.bc_model or "{}"), variant=v,
        filter=str(filt) if v != "all" else "", steps=steps[v], lr=cfg.bc_lr,
        batch_size=cfg.bc_batch_size, seed=cfg.seed, workers=0, threads=1, device=cfg.device))
        for v in order]
    if cfg.parallel > 1:
        with cf.ProcessPoolExecutor(cfg.parallel, mp_context=mp.get_context("spawn")) as pool:
            policies = dict(zip(order, pool.map(_bc_job, jobs)))
    else:
        policies = {v: _bc_job(j) for v, j in zip(order, jobs)}
    spent("bc", t)

    # 4. online steering RL from the filtered + mirrored policy
    t = stage("online RL")
    online = run_online(policies["filtered_mirror"], out / "online", OnlineConfig(
        episodes_per_round=cfg.episodes_per_round, updates_per_round=cfg.updates_per_round,
        warmup_episodes=cfg.warmup_episodes, warmup_updates=cfg.warmup_updates, seed=cfg.seed,
        device=cfg.device), RolloutConfig(episodes=cfg.online_episodes, workers=cfg.workers,
                                          time_limit=cfg.time_limit, explore_std=cfg.explore_std,
                                          unsteered_noise=cfg.warmup_noise), progress=progress)
    spent("online", t)

    # 5. every rung on the same held-out seeds
    t = stage("evaluation")
    online_report = _evaluate(online["final_checkpoint"], out / "eval_online", cfg, True, progress)
    ladders: dict[str, dict[str, dict]] = {}
    for sigma in cfg.offline_noise:
        ladder = ladders[ladder_name(sigma)] = {}
        for name, variant in zip(RUNGS[:3], VARIANTS):
            ladder[name] = _evaluate(policies[variant], out / eval_dir(variant, sigma), cfg,
                                     False, progress, sigma)
        ladder[RUNGS[3]] = online_report
    reports = ladders[ladder_name(cfg.offline_noise[0])]
    spent("evaluation", t)

    # 6. results
    res = out / "results"
    res.mkdir(exist_ok=True)
    tables = {}
    for i, (sigma, (lname, ladder)) in enumerate(zip(cfg.offline_noise, ladders.items())):
        tables[lname] = rung_table(ladder)
        plot_ladder(ladder, res / ("ladder.png" if i == 0 else f"ladder_sigma{sigma:g}.png"),
                    f"offline rungs at {lname}; {cfg.eval_episodes} held-out seeds from "
                    f"{cfg.eval_first_seed}; 95% Wilson intervals")
    table = "\n\n".join(f"offline rungs acting with ε ~ N(0, σ²I), {n}:\n\n{t}"
                         for n, t in tables.items())
    plot_funnel(reports, res / "funnel.png")
    shutil.copy(out / "online" / "online.png", res / "online_curve.png")
    shutil.copy(out / "online" / "online.csv", res / "online.csv")
    if (out / "fig3_progress_filter.png").exists():
        shutil.copy(out / "fig3_progress_filter.png", res / "fig3_progress_filter.png")
    results = {
        "config": dataclasses.asdict(cfg), "machine": machine(), "timings_s": timings,
        "total_s": sum(timings.values()), "filter": summary,
        "online": {"episodes": online["episodes"], "version": online["version"],
                   "warmup_success": online.get("warmup_success"),
                   "success_during_training": sum(e["success"] for e in online["log"]) / max(1, len(online["log"]))},
        "rungs": {k: _summary(v) for k, v in reports.items()},
        "headline": ladder_name(cfg.offline_noise[0]),
        "ladders": {n: {k: _summary(v) for k, v in ladder.items()} for n, ladder in ladders.items()},
        "checkpoints": {**{RUNGS[i]: str(Path(policies[v]).relative_to(out))
                           for i, v in enumerate(VARIANTS)},
                        RUNGS[3]: str(Path("online", "checkpoints", Path(online["final_checkpoint"]).name))},
        "table": table,
    }
    # the policy worth running: the best measured rung (the later one on a tie)
    best = max(reversed(RUNGS), key=lambda n: reports[n]["success_rate"])
    results["best_rung"] = best
    # how to act it: steered (the online rung), or the offline rung's headline σ
    results["best_noise_scale"] = None if best == RUNGS[3] else cfg.offline_noise[0]
    (res / "results.json").write_text(json.dumps(_portable(results, out, data), indent=1))
    (res / "results.md").write_text(table + "\n")
    return results


def _summary(report: dict) -> dict:
    return {key: report[key] for key in ("success_rate", "success_ci95", "successes", "episodes",
                                         "funnel", "failure_reasons")}


def _portable(obj: Any, out: Path, data: Path) -> Any:
    """``obj`` with this machine's paths made relative ("OUT/...", "DATA/..."): results are
    published into repositories."""
    if isinstance(obj, dict):
        return {k: _portable(v, out, data) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_portable(v, out, data) for v in obj]
    if isinstance(obj, str):
        for root, name in ((out, "OUT"), (data, "DATA")):
            if obj == str(root) or obj.startswith(str(root) + os.sep):
                return name + obj[len(str(root)):]
    return obj


def ship(checkpoint: str | Path, dest: str | Path) -> Path:
    """Copy a checkpoint (NAME.safetensors + NAME.json) to ``dest`` (a NAME path), verified."""
    from grrl_policy.checkpoint import verify_files
    src, dest = Path(checkpoint), Path(dest)
    verify_files(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src.with_suffix(".safetensors"), dest.with_suffix(".safetensors"))
    # provenance paths of this machine (training data, filter) are reduced to their names
    meta = json.loads(src.with_suffix(".json").read_text())
    meta["extra"] = {k: Path(v).name if isinstance(v, str) and os.path.isabs(v) else v
                     for k, v in meta.get("extra", {}).items()}
    dest.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    verify_files(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grrl-reproduce", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run directory (resumed if it holds a run)")
    p.add_argument("--size", choices=sorted(SIZES), default="default",
                   help="default: about 5 h on a 2-core CPU (estimated: three BC runs of "
                        "24,000 steps, two at a time on one core each; --device cuda shortens "
                        "that stage); small: a quarter hour; smoke: a minute (the defaults "
                        "shown below are the default size's; a size replaces them, flags given "
                        "win)")
    p.add_argument("--data", default="", help="use these demonstrations instead of collecting")
    p.add_argument("--publish", default="", help="also copy OUT/results to this directory")
    p.add_argument("--ship", default="", help="copy the final policy to this checkpoint path")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_arguments(p, ReproduceConfig(), given_only=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    cfg = from_args(args, replace(ReproduceConfig(), **SIZES[args.size]))
    if cfg.observation == "images" and not hasattr(args, "preset"):
        cfg = replace(cfg, preset="tiny-task")          # the image model, unless one is named
    if cfg.observation == "images" and not hasattr(args, "critic_preset"):
        cfg = replace(cfg, critic_preset=cfg.preset,    # an image critic: no simulator state
                      critic_model=getattr(args, "critic_model", "{}"))
    try:
        results = reproduce(args.out, cfg, args.data or None, progress=not args.quiet)
    except KeyboardInterrupt:
        print("grrl-reproduce: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"grrl-reproduce: error: {exc}", file=sys.stderr)
        return 2
    res = Path(args.out) / "results"
    if args.publish:
        shutil.copytree(res, args.publish, dirs_exist_ok=True)
    if args.ship:
        best = results["best_rung"]
        final = Path(args.out).resolve() / results["checkpoints"][best]
        how = "steer:=true" if results["best_noise_scale"] is None \
            else f"noise_scale:={results['best_noise_scale']:g}"
        print(f"shipped {ship(final, args.ship)} ({best}, the best measured rung; act it with "
              f"{how})")
    print(f"reproduction done in {results['total_s'] / 3600:.2f} h")
    print(results["table"])
    print(f"results: {res}" + (f" (published to {args.publish})" if args.publish else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
