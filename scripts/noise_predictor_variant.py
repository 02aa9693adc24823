#!/usr/bin/env python3
"""A steerable checkpoint with another noise predictor: the learner's Polyak-averaged target, or
the mean weights of the live predictors of several saved learner states.

The ablation of "deploy the averaged predictor instead of the last one" (issue 17,
docs/results/ladder/README.md): online RL publishes the live predictor pi_theta' after each
round; its Polyak target (rate ``tau`` every ``policy_delay`` updates) is saved with the learner in
RUN/online_state.pt. ``--mean`` averages the live predictors of the given learner states (copies
of online_state.pt taken after consecutive rounds). Everything else of CHECKPOINT is kept:

    . ./env.sh
    python scripts/noise_predictor_variant.py runs/online_s2b/checkpoints/v0014 \\
        runs/online_s2b/v14_polyak --polyak runs/online_s2b/online_state.pt
"""
from __future__ import annotations

import argparse
import sys

import torch

from grrl_policy.checkpoint import load_checkpoint, save_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a steerable checkpoint (an online run's version)")
    p.add_argument("out", help="where to write the variant")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--polyak", metavar="STATE", help="online_state.pt: use its target predictor")
    how.add_argument("--mean", metavar="STATE", nargs="+",
                     help="learner states: use the mean of their live predictors")
    args = p.parse_args(argv)
    model, meta = load_checkpoint(args.checkpoint)
    if not meta.extra.get("steerable"):
        raise SystemExit(f"{args.checkpoint} is not steerable: it has no trained noise predictor")
    if args.polyak:
        learner = torch.load(args.polyak, weights_only=True)["learner"]
        live = learner["heads"]["noise_predictor"]
        if not all(torch.equal(v, model.noise_predictor.state_dict()[k]) for k, v in live.items()):
            raise SystemExit(f"{args.polyak} is not the learner that wrote {args.checkpoint} "
                             "(their live noise predictors differ)")
        state, what = learner["noise_target"], "polyak target"
    else:
        states = [torch.load(s, weights_only=True)["learner"]["heads"]["noise_predictor"]
                  for s in args.mean]
        state = {k: sum(s[k] for s in states) / len(states) for k in states[0]}
        what = f"mean of {len(states)} live predictors"
    model.noise_predictor.load_state_dict(state)
    out = save_checkpoint(model, args.out, meta.version,
                          {**meta.extra, "noise_predictor": what, "variant_of": meta.sha256})
    print(f"{args.out}: v{meta.version} of {args.checkpoint} with the {what}; "
          f"sha256 {out.sha256[:12]}…")
    return 0


if __name__ == "__main__":
    sys.exit(main())
