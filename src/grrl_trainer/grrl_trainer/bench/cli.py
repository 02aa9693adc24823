"""``grrl-bench NAME [args]``: run a benchmark registered by any GR-RL package.

Packages register benchmarks as entry points in the group ``grrl.benchmarks``
(``sim = bytemini_driver.bench:main``). Benchmarks print ratios measured side by side in
one run; they are not tests.
"""
from __future__ import annotations

import sys
from importlib.metadata import entry_points

GROUP = "grrl.benchmarks"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    benches = {ep.name: ep for ep in entry_points(group=GROUP)}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in benches:
        print(f"usage: grrl-bench {{{','.join(sorted(benches))}}} [args]\n\n{__doc__}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return int(benches[argv[0]].load()(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
