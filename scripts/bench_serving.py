"""Funnel retrieval against exact search: quality on real runs, speed over a Books-sized table.

    .venv/bin/python scripts/bench_serving.py quality --run PHONES_RUN --run VIDEO_RUN --out docs/serving_quality.json
    .venv/bin/python scripts/bench_serving.py speed --run PHONES_RUN --items 368000 --out docs/serving_speed.json
    .venv/bin/python scripts/bench_serving.py plot --quality docs/serving_quality.json --speed docs/serving_speed.json --png docs/serving.png

quality: for each trained run, test recall@20 of exact search at every level and of the funnel
(coarse dim x shortlist N x clusters probed) at the full dimension, over the run's test users
with the same masks as the run's evaluation (mrl4rec: train and validation items; multi-
interest: the history). The exact full-dimension figure must reproduce metrics.json (printed
side by side). Also the overlap of each funnel's top 20 with the exact top 20, which needs no
labels: the default settings are chosen by it, not by test recall.

speed: the run's item table tiled to `--items` rows with noise (so that clusters are not
copies), queried by the run's users; exact d = 64 top-20 against each funnel setting, timed
in the same process, repeated, medians reported; index build time apart.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from distrec import config
from distrec.serve import retrieve, topk

K = 20


def recall(found: np.ndarray, targets: topk.Csr) -> float:
    """Mean over rows of |top-K ∩ targets| / |targets| (rows with targets), as evaluation."""
    indptr, items = targets
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(len(counts)), counts)
    hit = (found[rows] == items[:, None]).any(axis=1)
    per_row = np.bincount(rows, weights=hit, minlength=len(counts))
    keep = counts > 0
    return float((per_row[keep] / counts[keep]).mean())


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean fraction of b's ids per row also in a's."""
    return float(np.mean([(np.isin(x, y)).mean() for x, y in zip(a, b)]))


def test_queries(run: Path, bundle: retrieve.Bundle):
    """(queries, exclude CSR, targets CSR, the run's test recall@20 at the full dim)."""
    cfg = config.load(str(run / "config.yaml"), [])
    metrics = json.loads((run / "metrics.json").read_text())
    reported = metrics["test"][str(bundle.manifest["dim"])].get("recall@20")
    if bundle.multi_interest:
        from distrec.data.sequences import load_sequences

        data = load_sequences(cfg.data)
        users, ends, targets = data.eval_split("test")
        histories = data.segments(users, np.zeros_like(ends), ends)
        queries = retrieve.encode(bundle, histories)
        exclude = histories if cfg.eval.mask_history else None
        return queries, exclude, targets, reported
    inter = bundle.interactions()
    users = np.unique(inter["user"][inter["split"] == retrieve.SPLIT_CODES["test"]])
    targets = retrieve.seen_items(bundle, users, ("test",))  # the test pairs, as user lists
    exclude = retrieve.seen_items(bundle, users, ("train", "valid"))
    return bundle.users[torch.as_tensor(users)], exclude, targets, reported


def quality(args) -> None:
    out = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d"), "k": K, "runs": {}}
    for run in map(Path, args.run):
        bundle = retrieve.load(run, "cpu")
        queries, exclude, targets, reported = test_queries(run, bundle)
        levels, full = bundle.manifest["levels"], bundle.manifest["dim"]
        exact = {d: topk.exact(queries, bundle.items, d, K, exclude) for d in levels}
        ref = exact[full].ids.numpy()
        row = {"items": len(bundle.items), "users": len(queries), "task": bundle.manifest["task"],
               "metrics_json_recall@20": reported,
               "exact": {d: recall(exact[d].ids.numpy(), targets) for d in levels}, "funnel": []}
        print(f"{run}: {len(queries)} test users, {len(bundle.items)} items; exact recall@20 at {full}: "
              f"{row['exact'][full]:.4f} (metrics.json {reported})", flush=True)
        for coarse in args.coarse:
            index = topk.CoarseIndex.build(bundle.items, coarse)
            for n in args.shortlist:
                for frac in args.probes:
                    probes = max(1, round(index.num_clusters * frac))
                    got = topk.funnel(queries, bundle.items, index, n, full, K, exclude, probes).ids.numpy()
                    r = recall(got, targets)
                    row["funnel"].append({"coarse": coarse, "n": n, "clusters": index.num_clusters, "probes": probes,
                                          "probe_fraction": frac, "recall@20": r, "ratio": r / row["exact"][full],
                                          "overlap@20": overlap(got, ref)})
                    print(f"  d={coarse} N={n} probes {probes}/{index.num_clusters}: recall@20 {r:.4f} "
                          f"({r / row['exact'][full]:.3f} of exact), overlap {row['funnel'][-1]['overlap@20']:.3f}", flush=True)
        out["runs"][run.name] = row
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


def tiled(items: torch.Tensor, rows: int, seed: int = 0) -> torch.Tensor:
    """`rows` rows: copies of the table plus 30% of each column's spread as noise."""
    g = torch.Generator().manual_seed(seed)
    reps = -(-rows // len(items))
    noise = 0.3 * items.std(0) * torch.randn(rows, items.shape[1], generator=g)
    return (items.repeat(reps, 1)[:rows] + noise).contiguous()


def speed(args) -> None:
    torch.set_num_threads(args.threads) if args.threads else None
    bundle = retrieve.load(args.run[0], "cpu")
    items = tiled(bundle.items, args.items)
    g = torch.Generator().manual_seed(1)
    if bundle.multi_interest:
        queries, _, _, _ = test_queries(Path(args.run[0]), bundle)
    else:
        queries = bundle.users
    queries = queries[torch.randperm(len(queries), generator=g)[: args.queries]]
    full = bundle.manifest["dim"]

    def timed(fn):
        times, result = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        return result, statistics.median(times), times

    out = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "items": len(items),
           "queries": len(queries), "interests": 1 if queries.dim() == 2 else queries.shape[1], "k": K,
           "repeats": args.repeats, "run": str(args.run[0]), "settings": []}
    exact, t_exact, all_exact = timed(lambda: topk.exact(queries, items, full, K))
    out["exact_seconds"], out["exact_all"] = t_exact, all_exact
    print(f"exact d={full}: {t_exact:.2f} s for {len(queries)} queries over {len(items)} items", flush=True)
    for coarse in args.coarse:
        t0 = time.perf_counter()
        index = topk.CoarseIndex.build(items, coarse)
        build = time.perf_counter() - t0
        widest = int((index.offsets[1:] - index.offsets[:-1]).max())
        for n in args.shortlist:
            for frac in args.probes:
                probes = max(1, round(index.num_clusters * frac))
                got, t, all_t = timed(lambda: topk.funnel(queries, items, index, n, full, K, probes=probes))
                row = {"coarse": coarse, "n": n, "clusters": index.num_clusters, "widest": widest, "probes": probes,
                       "probe_fraction": frac, "seconds": t, "all": all_t, "speedup": t_exact / t, "build_seconds": build,
                       "overlap@20": overlap(got.ids.numpy(), exact.ids.numpy())}
                out["settings"].append(row)
                print(f"  d={coarse} N={n} probes {probes}/{index.num_clusters}: {t:.3f} s, {t_exact / t:.1f}x "
                      f"(build {build:.1f} s), overlap {row['overlap@20']:.3f}", flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = json.loads(Path(args.quality).read_text())
    s = json.loads(Path(args.speed).read_text())
    speedup = {(r["coarse"], r["n"], r["probe_fraction"]): r["speedup"] for r in s["settings"]}
    fig, axes = plt.subplots(1, len(q["runs"]), figsize=(6 * len(q["runs"]), 4.5), squeeze=False)
    for ax, (name, run) in zip(axes[0], q["runs"].items()):
        for coarse in sorted({r["coarse"] for r in run["funnel"]}):
            pts = sorted((speedup[(r["coarse"], r["n"], r["probe_fraction"])], r["ratio"], r["n"])
                         for r in run["funnel"] if r["coarse"] == coarse and (r["coarse"], r["n"], r["probe_fraction"]) in speedup)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=f"coarse d = {coarse}")
        ax.axhline(0.98, color="grey", ls="--", lw=1)
        ax.axvline(4, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xticks([2, 3, 4, 6, 8, 12], labels=["2x", "3x", "4x", "6x", "8x", "12x"])
        ax.minorticks_off()
        ax.set_xlabel(f"speed-up over exact d = 64 ({s['items']:,} items, {s['queries']} queries)")
        ax.set_ylabel("test recall@20 / exact d = 64")
        ax.set_title(f"{name} ({run['items']:,} items, {run['users']:,} test users)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("quality", "speed", "plot"))
    p.add_argument("--run", action="append", default=[])
    p.add_argument("--coarse", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--shortlist", type=int, nargs="+", default=[100, 200, 500, 1000])
    p.add_argument("--probes", type=float, nargs="+", default=[1 / 32, 1 / 16, 1 / 8, 1 / 4])
    p.add_argument("--items", type=int, default=368_000)
    p.add_argument("--queries", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out")
    p.add_argument("--quality")
    p.add_argument("--speed")
    p.add_argument("--png")
    args = p.parse_args()
    {"quality": quality, "speed": speed, "plot": plot}[args.mode](args)


if __name__ == "__main__":
    main()
