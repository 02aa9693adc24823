#!/usr/bin/env python3
"""The offline policy inside a steerable (online) checkpoint, as a fresh offline checkpoint.

Online steering RL trains only the heads (Q_phi, Q_phi', the noise predictor pi_theta'); the
flow it steers (backbone, action expert, normalizer) stays as the offline stage left it. This
writes that flow with freshly initialised heads (torch seed ``--seed``) and no ``steerable``
mark, so ``grrl-online --policy OUT`` starts a new online run from the same offline policy
(its predictor's output zeroed: pi_theta'(s) = 0) — e.g. to replicate an online run when only
the shipped online checkpoint is at hand:

    . ./env.sh; python scripts/offline_base.py checkpoints/grrl_sim_state runs/base/policy
"""
from __future__ import annotations

import argparse
import sys

import torch

from grrl_policy.checkpoint import load_checkpoint, save_checkpoint
from grrl_policy.model import GRRLModel

FLOW = ("backbone.", "action_expert.", "normalizer.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a steerable checkpoint (an online run's policy)")
    p.add_argument("out", help="where to write the offline checkpoint")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the fresh heads")
    args = p.parse_args(argv)
    src, meta = load_checkpoint(args.checkpoint)
    if not meta.extra.get("steerable"):
        raise SystemExit(f"{args.checkpoint} is not steerable: it already is an offline policy")
    torch.manual_seed(args.seed)
    fresh = GRRLModel(src.cfg)
    flow = {k: v for k, v in src.state_dict().items() if k.startswith(FLOW)}
    heads = set(fresh.state_dict()) - set(flow)
    fresh.load_state_dict({**fresh.state_dict(), **flow}, strict=True)
    out = save_checkpoint(fresh, args.out, 1, {"role": "policy", "offline_of": meta.sha256,
                                               "offline_of_version": meta.version,
                                               "heads_seed": args.seed})
    print(f"{args.out}: the flow of {args.checkpoint} (v{meta.version}, {meta.sha256[:12]}…), "
          f"{len(flow)} tensors kept, {len(heads)} head tensors fresh; sha256 {out.sha256[:12]}…")
    return 0


if __name__ == "__main__":
    sys.exit(main())
