"""Training speed with ratios measured in the same run: distrec against the machine's memory
ceiling, a minimal plain-PyTorch trainer and the CPU library teams pick (`implicit`).

    .venv/bin/python scripts/bench.py --preset books --out docs/bench/books [--eval-run runs/books]

Rows (one per distrec configuration and batch size, each `scripts/bench_scale.py` under torchrun):
- `mrl_m`: the default MRL-M step (MNS, 5 levels x 16 candidates), and `bpr_uniform`
  (full-dimension BPR, one uniform negative: the same work as `implicit`'s BPR), at every
  `--batches` size (default 2,048 and 32,768);
- on 1 rank with 2 threads and on 2 ranks with 1 thread each, at the same global batch;
- `multi_interest`: REMI with configs/remi_video.yaml's settings on the preset's pairs read as
  sequences (`bench_scale.py --task multi_interest`), at every `--remi-batches` size, with its
  whole test evaluation's seconds.
Each MF row has its plain-PyTorch reference and memory ceiling at the same batch.
References, measured in this process with 2 threads, at each batch size:
- (a) the memory ceiling: a bare `index_select` of every row a step reads and an `index_add_` of
  every row it updates, over tables of the same shape;
- (b) plain PyTorch MRL-M: `nn.Embedding(sparse=True)` tables with sparse Adagrad, the same
  sampler, candidates, hard-negative choice, loss and L2, in one process;
- (c) `implicit`'s BPR (64 factors, one epoch over the same training pairs), if it is installed
  (it is not a dependency of distrec; `pip install implicit` in the benchmark's environment).
With `--eval-run`, `scripts/bench_eval.py` adds evaluation users/s and the ratio to the best
`torch.mm` on that trained model. Writes DIR/bench.json and DIR/bench.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distrec import config  # noqa: E402
from distrec.nn import counters, losses, samplers  # noqa: E402
from distrec.data import load_dataset  # noqa: E402

MODELS = {"mrl_m": [], "bpr_uniform": ["train.loss=bpr", "train.sampler=uniform"]}
LAYOUTS = ((1, 2), (2, 1))  # (ranks, threads per rank) on 2 cores


def distrec_row(preset: str, model: str, ranks: int, threads: int, steps: int, extra: tuple[str, ...] = ()) -> dict:
    task = ["--task", "multi_interest"] if model == "multi_interest" else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           str(ROOT / "scripts" / "bench_scale.py"), "--preset", preset, "--steps", str(steps), *task,
           "--eval-users", "2048" if task else "256", *MODELS.get(model, []), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    row = {"model": model, "ranks": ranks, "threads": threads, "batch_size": r["batch_size"],
           "samples_per_s": r.get("pairs_per_s", r.get("samples_per_s")), "epoch_s": r["epoch_seconds_est"],
           "step_ms": r["step_ms_median"], "peak_rss_gb": r["peak_rss_mb"] / 1024}
    if task:  # REMI: the whole test evaluation (every test user, every level), extrapolated from 2,048 users
        row.update(eval_users_per_s=round(r["eval_users_per_s"], 1), full_eval_s=round(r["full_eval_seconds_est"], 1))
    return row


def rows_per_sample(cfg: config.Config, model: str) -> tuple[int, int]:
    """(rows read, rows updated) per training pair: user, positive, candidates, chosen negatives."""
    if model == "bpr_uniform":
        return 3, 3
    groups, per_group = samplers.candidate_shape(cfg.train.sampler, cfg.train.num_negs, len(cfg.model.levels), cfg.train.mns_pool)
    chosen = len(cfg.model.levels) if cfg.train.sampler == "mns" else 1
    return 2 + groups * per_group + chosen, 2 + chosen


def ceiling(num_users: int, num_items: int, dim: int, batch: int, reads: int, updates: int, steps: int = 20) -> float:
    """Pairs/s if a step did nothing but read and update its rows (random ids, same shapes)."""
    users, items = torch.randn(num_users, dim), torch.randn(num_items, dim)
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        uid = torch.randint(0, num_users, (batch,), generator=g)
        iid = torch.randint(0, num_items, (batch * (reads - 1),), generator=g)
        t = time.perf_counter()
        u, i = users.index_select(0, uid), items.index_select(0, iid)
        users.index_add_(0, uid, u)
        items.index_add_(0, iid[: batch * (updates - 1)], i[: batch * (updates - 1)])
        times.append(time.perf_counter() - t)
    return batch / float(np.median(times))


def plain_pytorch(data, cfg: config.Config, model: str, steps: int = 30) -> float:
    """Pairs/s of a minimal one-process trainer: sparse embeddings, sparse Adagrad, same sampler."""
    torch.manual_seed(0)
    dim, levels, weights = cfg.model.dim, tuple(cfg.model.levels), cfg.model.weights
    user, item = nn.Embedding(data.num_users, dim, sparse=True), nn.Embedding(data.num_items, dim, sparse=True)
    for t in (user, item):
        nn.init.normal_(t.weight, std=0.1)
    opt = torch.optim.Adagrad([user.weight, item.weight], lr=cfg.train.lr)
    sampler = samplers.CandidateSampler(data.train_users, data.train_items, data.num_items)
    sampler_kind = "uniform" if model == "bpr_uniform" else cfg.train.sampler
    shape = samplers.candidate_shape(sampler_kind, cfg.train.num_negs, len(levels), cfg.train.mns_pool)
    l2w = losses.level_l2_weights(levels, weights)
    rng = np.random.default_rng(0)
    stream = counters.key(0)
    times = []
    for step in range(steps + 3):
        t = time.perf_counter()
        idx = rng.integers(0, len(data.train_users), cfg.train.batch_size)
        users_np = data.train_users[idx]
        cands = torch.as_tensor(sampler.draw(stream, np.arange(step * len(idx), (step + 1) * len(idx)), users_np, shape))
        users, pos = torch.as_tensor(users_np), torch.as_tensor(data.train_items[idx])
        u = user(users)
        if sampler_kind == "uniform":
            negs = cands[:, 0, :1]
        else:
            with torch.no_grad():
                distinct, where = torch.unique(cands, return_inverse=True)
                pick = samplers.select_hardest(u.detach(), item.weight[distinct], where, levels, sampler_kind)
            negs = cands[torch.arange(len(users))[:, None], torch.arange(pick.shape[1])[None, :], pick]
        p, n = item(pos), item(negs)
        kind = "bpr" if model == "bpr_uniform" else cfg.train.loss
        loss = losses.pairwise_loss(u, p, n, levels, weights, kind).sum() + cfg.train.l2 * losses.l2_penalty(u, p, n, weights=l2w)
        opt.zero_grad()
        (loss / len(users)).backward()
        opt.step()
        if step >= 3:
            times.append(time.perf_counter() - t)
    return cfg.train.batch_size / float(np.median(times))


def implicit_bpr(data) -> dict | None:
    try:
        import scipy.sparse as sp
        from implicit.cpu.bpr import BayesianPersonalizedRanking
    except ImportError:
        return None
    matrix = sp.csr_matrix((np.ones(len(data.train_users), np.float32), (data.train_users, data.train_items)),
                           shape=(data.num_users, data.num_items))
    model = BayesianPersonalizedRanking(factors=64, iterations=1, num_threads=2, random_state=0)
    t = time.perf_counter()
    model.fit(matrix, show_progress=False)
    seconds = time.perf_counter() - t
    import implicit
    return {"epoch_s": seconds, "samples_per_s": len(data.train_users) / seconds, "version": implicit.__version__}


def write_md(path: Path, result: dict) -> None:
    refs = result["references"]
    lines = [f"# Training speed, `{result['preset']}` preset ({result['date']}, {result['machine']})", "",
             f"Command: `{result['command']}`", "",
             "| model | ranks x threads | batch | samples/s | epoch s | step ms | plain PyTorch samples/s | vs plain PyTorch | vs memory ceiling | vs implicit | peak RSS GB/rank | eval users/s | eval / best mm |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(value, fmt):
        return "" if value is None else format(value, fmt)

    for r in result["rows"]:
        plain = refs.get(f"plain_pytorch_{r['model']}_{r['batch_size']}", {}).get("samples_per_s")
        lines.append(f"| {r['model']} | {r['ranks']} x {r['threads']} | {r['batch_size']:,} | {r['samples_per_s']:,.0f} | {r['epoch_s']:.0f} | "
                     f"{r['step_ms']:.1f} | {cell(plain, ',.0f')} | {cell(r.get('ratio_vs_plain_pytorch'), '.2f')} | {cell(r.get('ratio_vs_ceiling'), '.3f')} | "
                     f"{cell(r.get('ratio_vs_implicit'), '.3f')} | {r['peak_rss_gb']:.2f} | "
                     f"{cell(r.get('eval_users_per_s'), ',.0f')} | {cell(r.get('eval_gemm_ratio'), '.2f')} |")
    lines += ["", "References (one process, 2 threads):", ""]
    for name, ref in refs.items():
        lines.append(f"- {name}: {json.dumps(ref)}")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="books", choices=("books", "small", "tiny"))
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batches", type=int, nargs="+", default=[2048, 32768], help="global batch sizes of the MF rows")
    p.add_argument("--remi-batches", type=int, nargs="+", default=[256, 2048], help="batch sizes of the REMI rows")
    p.add_argument("--eval-run", default=None, help="a trained run (e.g. runs/books) for the evaluation columns")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    cfg0 = config.load(None, [f"data.synthetic.preset={args.preset}"])
    data = load_dataset(cfg0.data)
    refs: dict = {}
    for batch in args.batches:
        cfg = config.load(None, [f"data.synthetic.preset={args.preset}", f"train.batch_size={batch}"])
        ref_steps = max(5, min(30, 30 * 2048 // batch))  # a big batch's step is long: fewer, still > 1 s of work
        for model in MODELS:
            reads, updates = rows_per_sample(cfg, model)
            refs[f"ceiling_{model}_{batch}"] = {"batch_size": batch, "rows_read_per_sample": reads, "rows_updated_per_sample": updates,
                                                "samples_per_s": ceiling(data.num_users, data.num_items, cfg.model.dim, batch, reads, updates)}
            refs[f"plain_pytorch_{model}_{batch}"] = {"batch_size": batch, "samples_per_s": plain_pytorch(data, cfg, model, ref_steps)}
            print(json.dumps({k: v for k, v in refs.items() if k.endswith(f"{model}_{batch}")}), flush=True)
    bpr = implicit_bpr(data)
    refs["implicit_bpr"] = bpr if bpr is not None else {"skipped": "implicit is not installed"}
    rows = []
    runs = [(model, ranks, threads, batch) for batch in args.batches for model in MODELS for ranks, threads in LAYOUTS]
    runs += [("multi_interest", ranks, threads, batch) for batch in args.remi_batches for ranks, threads in LAYOUTS]
    for model, ranks, threads, batch in runs:
        r = distrec_row(args.preset, model, ranks, threads, args.steps, (f"train.batch_size={batch}",))
        if model in MODELS:
            r["ratio_vs_plain_pytorch"] = r["samples_per_s"] / refs[f"plain_pytorch_{model}_{batch}"]["samples_per_s"]
            r["ratio_vs_ceiling"] = r["samples_per_s"] / refs[f"ceiling_{model}_{batch}"]["samples_per_s"]
        if model == "bpr_uniform" and bpr is not None:
            r["ratio_vs_implicit"] = r["samples_per_s"] / bpr["samples_per_s"]
        rows.append(r)
        print(json.dumps(r), flush=True)
    if args.eval_run:
        ev = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_eval.py"), "--run", args.eval_run],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=3600)
        refs["evaluation"] = json.loads(ev.stdout.strip().splitlines()[-1]) if ev.returncode == 0 else {"failed": ev.stderr[-500:]}
        for r in rows:
            if r["model"] == "mrl_m" and r["ranks"] == 1 and r["batch_size"] == args.batches[0] and ev.returncode == 0:
                r["eval_users_per_s"] = refs["evaluation"]["eval_users_per_s"]
                r["eval_gemm_ratio"] = refs["evaluation"]["eval_gemm_ratio"]
    result = {"preset": args.preset, "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
              "command": " ".join(["python", "scripts/bench.py", *sys.argv[1:]]), "rows": rows, "references": refs,
              "peak_rss_gb_this_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    write_md(out / "bench.md", result)
    print((out / "bench.md").read_text())


if __name__ == "__main__":
    main()
