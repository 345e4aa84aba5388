"""Prints ringway against sockudo from ringway-load's push or room summaries: one line per
round and server, then the medians over the rounds and their ratios. Per server core-second =
deliveries per second divided by the share of its core the server kept busy.

Usage: fanout-compare.py RINGWAY.json[,MORE...] SOCKUDO.json[,MORE...]"""
import json
import statistics
import sys


def per_core(d):
    return d["deliveries_per_second"] / max(d["server_cores_busy"] or 0, 1e-9)


def line(name, d):
    l = d["latency_us"]
    return (f"{name:8} {d['deliveries_per_second']:>10.0f} deliveries/s  sent {d['pushes_accepted']:>7} "
            f"(refused {d['pushes_refused']})  delivered {d['deliveries']}/{d['deliveries_expected']}  "
            f"p50 {l['p50']:>7} us  p99 {l['p99']:>7} us  server core busy "
            f"{100 * (d['server_cores_busy'] or 0):.0f}%  {per_core(d):>10.0f} per core-second")


runs = {name: [json.load(open(p)) for p in arg.split(",")]
        for name, arg in (("ringway", sys.argv[1]), ("sockudo", sys.argv[2]))}
for i, (r, s) in enumerate(zip(runs["ringway"], runs["sockudo"])):
    print(f"round {i + 1}")
    print("  " + line("ringway", r))
    print("  " + line("sockudo", s))
med = {name: {"rate": statistics.median(d["deliveries_per_second"] for d in ds),
              "core": statistics.median(per_core(d) for d in ds),
              "p99": statistics.median(d["latency_us"]["p99"] for d in ds),
              "lost": sum(d["deliveries_expected"] - d["deliveries"] for d in ds)}
       for name, ds in runs.items()}
for name, m in med.items():
    print(f"median {name:8} {m['rate']:>10.0f} deliveries/s  {m['core']:>10.0f} per core-second  "
          f"p99 {m['p99']:>7.0f} us  not delivered {m['lost']}")
r, s = med["ringway"], med["sockudo"]
print(f"ratios ringway/sockudo (medians): deliveries/s {r['rate'] / s['rate']:.2f}x, "
      f"per core-second {r['core'] / s['core']:.2f}x, p99 {r['p99'] / max(1, s['p99']):.2f}x")
