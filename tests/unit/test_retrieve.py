"""python -m distrec.retrieve (distrec.retrieve, topk, ann) against brute force in numpy.

Three tiny runs, trained once in this process (~3 s together): synthetic MF (300 users x 200
items, dim 64), MF on a log with string ids, and multi-interest (REMI, 3 interests) on a log
whose raw ids are not the table rows. The reference is always float64 numpy over the exported
.npy tables, with its own masks from the run's interaction files, so ties are compared by
score: a top-k is right when its scores are the k best scores and each returned item has
the score it is listed with (then any order among equal scores is accepted).
"""

from __future__ import annotations

import json
import socket
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distrec import config, train
from distrec.data.sequences import history_windows, load_sequences
from distrec.nn import towers
from distrec.serve import ann, bundle, manifest, retrieve, topk
from distrec.tasks.multi_interest import router_spec_of

ROOT = Path(__file__).resolve().parents[2]
MF = ["data.synthetic.num_users=300", "data.synthetic.num_items=200", "data.synthetic.num_interactions=3000",
      "train.epochs=2", "progress=false", "device=cpu"]
STRINGS = ["data.format=log", "model.dim=16", "model.levels=[4,8,16]", "eval.ks=[5,20]", "eval.select_metric=recall@20",
           "train.epochs=2", "progress=false", "device=cpu"]
REMI = ["data.format=log", "data.delimiter=space", "model.task=multi_interest", "train.loss=softmax", "model.dim=16",
        "model.levels=[4,8,16]", "model.num_interests=3", "eval.ks=[5,10]", "eval.select_metric=recall@10",
        "data.sequence.max_len=6", "train.optimizer=adagrad", "train.epochs=2", "progress=false", "device=cpu"]
SPLITS = {"train": 0, "valid": 1, "test": 2}
K = 10


def write_string_log(path: Path, num_users: int = 60, num_items: int = 40) -> str:
    """Comma-separated `U0007,I0042` pairs (as tests/unit/test_formats.py writes string ids)."""
    rng = np.random.default_rng(0)
    lines = [f"U{u:04d},I{i:04d}" for u in range(num_users)
             for i in rng.choice(num_items, size=rng.integers(4, 12), replace=False)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def write_sequence_log(path: Path, num_users: int = 200, num_items: int = 60) -> str:
    """Space-separated `user item` in time order; raw ids 1000 + 3u and 100 + 7i, so rows differ from raw ids."""
    rng = np.random.default_rng(0)
    lines = [f"{1000 + 3 * u} {100 + 7 * i}" for u in range(num_users)
             for i in rng.integers(0, num_items, size=rng.integers(4, 15))]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("retrieve")
    out = {"mf": tmp / "mf", "strings": tmp / "strings", "remi": tmp / "remi"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as mp:  # a process group of one, its variables removed afterwards
        for name, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port)), ("RANK", "0"),
                            ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            mp.setenv(name, value)
        mp.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
        train.main([*MF, f"run_dir={out['mf']}"])
        train.main([*STRINGS, f"data.train={write_string_log(tmp / 'strings.csv')}", f"run_dir={out['strings']}"])
        train.main([*REMI, f"data.train={write_sequence_log(tmp / 'seq.txt')}", f"run_dir={out['remi']}"])
    return out


# ------------------------------------------------------------------------------- references


def tables(run: Path) -> dict[str, np.ndarray]:
    emb = run / "embeddings"
    out = {name: np.load(emb / f"{name}.npy") for name in ("item_embeddings", "item_ids", "user_ids")}
    if (emb / "user_embeddings.npy").exists():
        out["user_embeddings"] = np.load(emb / "user_embeddings.npy")
    return out


def brute(queries: np.ndarray, items: np.ndarray, dim: int, seen: list[np.ndarray] | None = None) -> np.ndarray:
    """float64 scores [B, n] at prefix `dim`, max over interests ([B, D] or [B, K, D] queries); -inf at seen items."""
    q = np.asarray(queries, np.float64)
    q = q[:, None] if q.ndim == 2 else q
    s = np.einsum("bkd,nd->bkn", q[:, :, :dim], np.asarray(items, np.float64)[:, :dim]).max(axis=1)
    for r, its in enumerate(seen or []):
        s[r, its] = -np.inf
    return s


def seen_of(interactions: pa.Table, rows: np.ndarray, splits=("train", "valid", "test")) -> list[np.ndarray]:
    """Item rows of each user row's interactions in `splits`."""
    user, item = interactions.column("user").to_numpy(), interactions.column("item").to_numpy()
    keep = np.isin(interactions.column("split").to_numpy(), [SPLITS[s] for s in splits])
    return [item[keep & (user == r)] for r in rows]


def assert_topk(ids: np.ndarray, scores: np.ndarray, ref: np.ndarray, k: int, tol: float = 1e-5) -> None:
    """Rows of a top-`k` (item rows, NONE-padded; scores) against reference scores [B, n]: as many items as
    are eligible (up to k), distinct, none excluded, the k best scores, each item with its own score."""
    assert len(ids) == len(ref)
    for r in range(len(ref)):
        eligible = np.isfinite(ref[r])
        m = min(k, int(eligible.sum()))
        got = ids[r][ids[r] != topk.NONE]
        assert len(got) == m and np.all(ids[r][m:] == topk.NONE), (r, ids[r])
        assert len(np.unique(got)) == m, (r, got)
        assert np.all(eligible[got]), f"row {r}: excluded items {got[~eligible[got]]} returned"
        best = np.sort(ref[r][eligible])[::-1][:m]
        np.testing.assert_allclose(scores[r][:m], best, rtol=tol, atol=tol, err_msg=f"row {r}: not the k best scores")
        np.testing.assert_allclose(ref[r, got], scores[r][:m], rtol=tol, atol=tol, err_msg=f"row {r}: item scores")


def per_user(table: pa.Table, users_raw: np.ndarray, item_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(item rows [B, k] NONE-padded, scores [B, k] -inf-padded) of a retrieve table, checking its users
    come in the order asked, each with ranks 1, 2, ..."""
    user = table.column("user").to_numpy(zero_copy_only=False)
    if user.dtype.kind in "OU":  # --histories: the user field of each line, as written
        user, users_raw = user.astype(str), np.asarray(users_raw).astype(str)
    rank = table.column("rank").to_numpy()
    assert len(np.unique(users_raw)) == len(users_raw)
    counts = np.array([np.sum(user == u) for u in users_raw])
    assert counts.sum() == len(user)
    np.testing.assert_array_equal(user, np.repeat(users_raw, counts))
    np.testing.assert_array_equal(rank, np.concatenate([np.arange(1, c + 1) for c in counts]))
    row_of = {raw: row for row, raw in enumerate(item_ids.tolist())}
    items = [row_of[i] for i in table.column("item").to_pylist()]
    ids = np.full((len(users_raw), k), topk.NONE, np.int64)
    scores = np.full((len(users_raw), k), -np.inf, np.float32)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for r, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        ids[r, : b - a] = items[a:b]
        scores[r, : b - a] = table.column("score").to_numpy()[a:b]
    return ids, scores


def call(run: Path, *args) -> pa.Table:
    return retrieve.main(["--run", str(run), *(str(a) for a in args)])


# ------------------------------------------------------------------- 1. exact = brute force


@pytest.mark.parametrize("seen", ["none", "all splits", "train"])
@pytest.mark.parametrize("who", ["all", "users file"])
def test_exact_retrieve_equals_brute_force_at_every_prefix(runs, tmp_path, who, seen):
    run = runs["mf"]
    t = tables(run)
    levels = json.loads((run / "embeddings" / "manifest.json").read_text())["levels"]
    assert levels == [4, 8, 16, 32, 64]
    interactions = pq.read_table(run / "data" / "interactions.parquet")  # the data pipeline's copy, not the export's
    if who == "all":
        rows, who_args = np.arange(len(t["user_ids"])), ["--all"]
    else:  # a subset in a shuffled order, with a comment and blank lines: the output follows the file
        rows = np.random.default_rng(1).permutation(len(t["user_ids"]))[:37]
        path = tmp_path / "users.txt"
        ids = [f"{u}\n" if j % 5 == 0 else str(u) for j, u in enumerate(t["user_ids"][rows])]
        path.write_text("# users\n" + "\n".join(ids) + "\n")
        who_args = ["--users", path]
    mask, seen_args = None, []
    if seen != "none":
        mask = seen_of(interactions, rows, ("train",) if seen == "train" else tuple(SPLITS))
        seen_args = ["--exclude-seen"] + (["--seen-splits", "train"] if seen == "train" else [])
    for dim in (*levels, 5):
        chunk = ["--chunk-mb", "0.01"] if dim in (5, 64) else []  # a few users per block of scores
        table = call(run, "--dim", dim, "--k", K, *who_args, *seen_args, *chunk, "--out", tmp_path / f"{dim}.parquet")
        ref = brute(t["user_embeddings"][rows], t["item_embeddings"], dim, mask)
        assert_topk(*per_user(table, t["user_ids"][rows], t["item_ids"], K), ref, K)
    if seen != "none":  # the masks matter: unmasked, seen items would be in the top k (so a missing mask fails)
        plain = brute(t["user_embeddings"][rows], t["item_embeddings"], 64)
        top = np.argsort(-plain, axis=1)[:, :K]
        assert sum(np.isin(top[r], mask[r]).sum() for r in range(len(rows))) > 0
    if seen == "train":  # and train-only differs from all splits
        every = seen_of(interactions, rows)
        assert sum(len(e) - len(m) for e, m in zip(every, mask)) > 0


def test_string_ids_come_out_raw_and_equal_brute_force(runs, tmp_path):
    run = runs["strings"]
    t = tables(run)
    assert t["item_ids"].dtype.kind == "U" and t["user_ids"].dtype.kind == "U"
    interactions = pq.read_table(run / "data" / "interactions.parquet")
    rows = np.random.default_rng(2).permutation(len(t["user_ids"]))[:25]
    (tmp_path / "users.txt").write_text("\n".join(t["user_ids"][rows]) + "\n")
    for dim in (4, 16, 7):
        table = call(run, "--dim", dim, "--k", K, "--users", tmp_path / "users.txt", "--exclude-seen",
                     "--out", tmp_path / "t.parquet")
        assert table.schema.field("user").type == pa.string() and table.schema.field("item").type == pa.string()
        assert all(i.startswith("I") for i in table.column("item").to_pylist())
        ref = brute(t["user_embeddings"][rows], t["item_embeddings"], dim, seen_of(interactions, rows))
        assert_topk(*per_user(table, t["user_ids"][rows], t["item_ids"], K), ref, K)


# ------------------------------------------------------------------------ 2. output formats


def test_parquet_output_and_tsv_on_stdout(runs, tmp_path, capsys):
    run = runs["mf"]
    t = tables(run)
    out = tmp_path / "sub" / "top.parquet"
    table = call(run, "--dim", 16, "--k", 7, "--all", "--exclude-seen", "--out", out)
    captured = capsys.readouterr()
    assert captured.out == "" and f"wrote {out}" in captured.err
    written = pq.read_table(out)
    assert written.equals(table)
    assert written.column_names == ["user", "rank", "item", "score"]
    assert [str(f.type) for f in written.schema] == ["int64", "int32", "int64", "float"]
    assert len(written) == 7 * len(t["user_ids"])  # every user has >= 7 unseen items of 200
    pairs = list(zip(written.column("user").to_pylist(), written.column("rank").to_pylist()))
    assert len(set(pairs)) == len(pairs) and min(r for _, r in pairs) == 1 and max(r for _, r in pairs) == 7
    assert not list(tmp_path.rglob("*.tmp"))

    # More than there are items: every unseen item, ranked, none padded in.
    wide = call(run, "--dim", 8, "--k", 250, "--users", _write(tmp_path / "u.txt", ["3", "17"]), "--exclude-seen", "--out", out)
    interactions = pq.read_table(run / "embeddings" / "interactions.parquet")
    for u in (3, 17):
        assert len(wide.filter(pa.compute.equal(wide.column("user"), u))) == 200 - len(np.unique(seen_of(interactions, [u])[0]))

    # No --out: a header and one tab-separated line per row on stdout.
    tsv = call(run, "--dim", 16, "--k", 7, "--all", "--exclude-seen")
    assert tsv.equals(table)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "user\trank\titem\tscore" and len(lines) == len(table) + 1
    fields = [line.split("\t") for line in lines[1:]]
    assert [int(f[0]) for f in fields] == table.column("user").to_pylist()
    assert [int(f[1]) for f in fields] == table.column("rank").to_pylist()
    assert [int(f[2]) for f in fields] == table.column("item").to_pylist()
    np.testing.assert_allclose([float(f[3]) for f in fields], table.column("score").to_numpy(), rtol=1e-5)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------- 3. funnel


def brute_funnel(queries, items, coarse_dim, shortlist, dim, seen, allowed=None) -> tuple[np.ndarray, np.ndarray]:
    """Reference scores at `dim` of the coarse top-`shortlist` (at `coarse_dim`, seen items and, given
    `allowed` [B, n], items outside it excluded), -inf elsewhere; and the rows whose coarse cut is
    clear (no near-tie at the shortlist's boundary, where float32 may pick either item)."""
    coarse = brute(queries, items, coarse_dim, seen)
    if allowed is not None:
        coarse[~allowed] = -np.inf
    order = np.argsort(-coarse, axis=1, kind="stable")
    ranked = np.take_along_axis(coarse, order, axis=1)
    picked = np.zeros_like(coarse, dtype=bool)
    np.put_along_axis(picked, order[:, :shortlist], True, axis=1)
    picked &= np.isfinite(coarse)
    full = brute(queries, items, dim)
    full[~picked] = -np.inf
    if shortlist < coarse.shape[1]:
        a, b = ranked[:, shortlist - 1], ranked[:, shortlist]
        clear = ~np.isfinite(b) | (a - b > 1e-4)
    else:
        clear = np.ones(len(coarse), bool)
    return full, clear


def test_funnel_through_retrieve(runs, tmp_path):
    run = runs["mf"]
    t = tables(run)
    n = len(t["item_ids"])
    interactions = pq.read_table(run / "embeddings" / "interactions.parquet")
    rows = np.arange(len(t["user_ids"]))
    # N = every item: the funnel is the exact search.
    for dim in (32, 64):
        exact = call(run, "--dim", dim, "--k", K, "--all", "--exclude-seen", "--out", tmp_path / "e.parquet")
        funnel = call(run, "--dim", dim, "--k", K, "--all", "--exclude-seen", "--funnel", f"4:{n}", "--out", tmp_path / "f.parquet")
        assert funnel.equals(exact)
    # Every cluster probed: the exact coarse top-N, re-ranked at --dim.
    seen = seen_of(interactions, rows)
    for coarse_dim, shortlist, dim, clusters in ((8, 30, 64, 6), (4, 15, 16, 20)):
        table = call(run, "--dim", dim, "--k", K, "--all", "--exclude-seen", "--funnel", f"{coarse_dim}:{shortlist}",
                     "--clusters", clusters, "--probes", clusters, "--chunk-mb", 0.5, "--out", tmp_path / "f.parquet")
        ref, clear = brute_funnel(t["user_embeddings"], t["item_embeddings"], coarse_dim, shortlist, dim, seen)
        assert clear.mean() > 0.9
        ids, scores = per_user(table, t["user_ids"], t["item_ids"], K)
        assert_topk(ids[clear], scores[clear], ref[clear], K)
        # A funnel is not the exact search here (or this test could not tell them apart).
        assert not np.allclose(scores, per_user(call(run, "--dim", dim, "--k", K, "--all", "--exclude-seen", "--out",
                                                     tmp_path / "e.parquet"), t["user_ids"], t["item_ids"], K)[1])


def test_funnel_lists_are_clustered_once_and_kept_beside_the_tables(runs, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(runs["mf"] / "embeddings", run / "embeddings")
    args = ("--dim", 64, "--k", K, "--all", "--exclude-seen", "--funnel", "8:20", "--clusters", 12, "--probes", 3)
    built = []
    real = topk.CoarseIndex.build
    monkeypatch.setattr(topk.CoarseIndex, "build", classmethod(lambda cls, *a, **k: built.append(1) or real(*a, **k)))
    first = call(run, *args, "--out", tmp_path / "a.parquet")
    kept = list((run / "embeddings" / "funnel").glob("lists-12-*.pt"))
    assert len(built) == 1 and len(kept) == 1
    # Reused at any coarse dimension (the clusters are of the full vectors), with the same lists.
    assert call(run, *args, "--out", tmp_path / "b.parquet").equals(first) and len(built) == 1
    call(run, *args[:-5], "16:20", *args[-4:], "--out", tmp_path / "c.parquet")
    assert len(built) == 1
    # A damaged file is clustered again (and replaced); a read-only export is clustered each time.
    kept[0].write_bytes(b"not a torch file")
    assert call(run, *args, "--out", tmp_path / "d.parquet").equals(first) and len(built) == 2
    shutil.rmtree(run / "embeddings" / "funnel")
    (run / "embeddings").chmod(0o555)
    try:
        if os.access(run / "embeddings", os.W_OK):  # root ignores the mode: nothing more to check
            return
        assert call(run, *args, "--out", tmp_path / "e.parquet").equals(first) and len(built) == 3
        assert not (run / "embeddings" / "funnel").exists()
    finally:
        (run / "embeddings").chmod(0o755)


def clustered(rng: np.random.Generator, n: int, dim: int, centers: int = 40, spread: float = 0.35) -> np.ndarray:
    c = rng.normal(size=(centers, dim))
    return (c[rng.integers(centers, size=n)] + spread * rng.normal(size=(n, dim))).astype(np.float32)


def random_csr(rng: np.random.Generator, rows: int, n: int, most: int) -> tuple[tuple[np.ndarray, np.ndarray], list[np.ndarray]]:
    lists = [rng.choice(n, size=rng.integers(0, most + 1), replace=False) for _ in range(rows)]
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    return (indptr, np.concatenate(lists).astype(np.int64)), lists


@pytest.mark.parametrize("interests", [1, 3])
def test_topk_funnel_and_exact_on_random_tensors(interests):
    rng = np.random.default_rng(3)
    n, d, b = 600, 32, 40
    items = clustered(rng, n, d, centers=12)
    queries = rng.normal(size=(b, interests, d) if interests > 1 else (b, d)).astype(np.float32)
    exclude, lists = random_csr(rng, b, n, 40)
    items_t, q_t = torch.as_tensor(items), torch.as_tensor(queries)

    found = topk.exact(q_t, items_t, 20, K, exclude, chunk_mb=0.01)
    assert_topk(found.ids.numpy(), found.scores.numpy(), brute(queries, items, 20, lists), K)

    index = topk.CoarseIndex.build(items_t, 8, clusters=12)
    # Empty k-means clusters are dropped: at most 12 lists, every item in exactly one.
    assert 1 <= index.num_clusters <= 12 and sorted(index.order.tolist()) == list(range(n))
    assert bool(((index.offsets[1:] - index.offsets[:-1]) > 0).all())
    # Every cluster probed: the exact coarse top-N, re-ranked.
    for shortlist, dim in ((40, 32), (25, 16)):
        got = topk.funnel(q_t, items_t, index, shortlist, dim, K, exclude, probes=12, chunk_mb=0.3)
        ref, clear = brute_funnel(queries, items, 8, shortlist, dim, lists)
        assert clear.mean() > 0.9
        assert_topk(got.ids.numpy()[clear], got.scores.numpy()[clear], ref[clear], K)
    # Three probes: the same among the items of the 3 clusters whose centroids score best at the
    # searched dimension (clusters are built on the full vectors).
    cluster = np.empty(n, np.int64)
    offsets = index.offsets.numpy()
    for c in range(index.num_clusters):
        cluster[index.order.numpy()[offsets[c] : offsets[c + 1]]] = c
    probed = np.argsort(-brute(queries, index.centroids.numpy(), 32), axis=1)[:, :3]
    allowed = np.stack([np.isin(cluster, p) for p in probed])  # [b, n]
    got = topk.funnel(q_t, items_t, index, 40, 32, K, exclude, probes=3, chunk_mb=0.3)
    ref, clear = brute_funnel(queries, items, 8, 40, 32, lists, allowed)
    assert clear.mean() > 0.9
    assert_topk(got.ids.numpy()[clear], got.scores.numpy()[clear], ref[clear], K)
    # A shortlist shorter than k: the rest is padding.
    short = topk.funnel(q_t, items_t, index, 4, 32, K, exclude, probes=12)
    assert np.all(short.ids.numpy()[:, 4:] == topk.NONE) and np.all(np.isneginf(short.scores.numpy()[:, 4:]))
    assert np.all(short.ids.numpy()[:, :4] != topk.NONE)


# ------------------------------------------------------------------------------------- 4. ANN


@pytest.fixture(scope="module")
def ann_run(tmp_path_factory) -> tuple[Path, dict]:
    """An export of 5,000 clustered items x 32 and 200 users, written as a run writes one
    (bundle.write); raw item ids 7 + 3 x row."""
    rng = np.random.default_rng(4)
    n, d, u = 5000, 32, 200
    items, users = clustered(rng, n, d), clustered(rng, u, d)
    user_rows = np.repeat(np.arange(u), 30)
    item_rows = np.concatenate([rng.choice(n, 30, replace=False) for _ in range(u)])
    interactions = {"user": user_rows, "item": item_rows, "split": np.zeros(len(user_rows), np.int8)}
    run = tmp_path_factory.mktemp("ann")
    resolved = {"model": {"task": "mrl4rec", "dim": d, "levels": [8, 16, 32]}}
    bundle.write(run, torch.as_tensor(users), torch.as_tensor(items), np.arange(u), 7 + 3 * np.arange(n),
                              resolved=resolved, interactions=interactions)
    return run, {"items": items, "users": users, "seen": [item_rows[user_rows == r] for r in range(u)]}


# Measured here (faiss-cpu 1.15.1; defaults: ivf 282 lists, 35 probed; hnsw 32 links, efSearch 2 x the
# results asked for): recall@100 against exact = ivf 0.9823 (0.9822 with --exclude-seen), hnsw 0.8884
# (0.9024: the exclusions ask for more results, so a wider search); hnsw --probes 100 0.8114.
# Floors: measured - 0.1.
ANN_FLOOR = {"ivf": 0.88, "hnsw": 0.78}


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_ann_recall_and_exclusion(ann_run, tmp_path, kind):
    run, ref = ann_run
    users, raw = np.arange(len(ref["users"])), 7 + 3 * np.arange(len(ref["items"]))
    for exclude in ([], ["--exclude-seen"]):
        exact = call(run, "--dim", 32, "--k", 100, "--all", *exclude, "--out", tmp_path / "e.parquet")
        approx = call(run, "--dim", 32, "--k", 100, "--all", "--ann", kind, *exclude, "--out", tmp_path / "a.parquet")
        e_ids, e_scores = per_user(exact, users, raw, 100)
        a_ids, a_scores = per_user(approx, users, raw, 100)  # raw ids back to rows: every one is an item's
        assert_topk(e_ids, e_scores, brute(ref["users"], ref["items"], 32, ref["seen"] if exclude else None), 100)
        recall = np.mean([len(np.intersect1d(a, e)) / 100 for a, e in zip(a_ids, e_ids)])
        print(f"{kind} {'exclude-seen' if exclude else 'all items'}: recall@100 = {recall:.4f}")
        assert recall >= max(0.5, ANN_FLOOR[kind]), recall
        assert np.all(a_ids != topk.NONE)  # enough extra results asked for to fill k after the exclusions
        assert all(len(np.unique(a)) == 100 for a in a_ids)
        np.testing.assert_allclose(np.take_along_axis(brute(ref["users"], ref["items"], 32), a_ids, axis=1), a_scores,
                                   rtol=1e-4, atol=1e-4)  # each item with its own score
        if exclude:
            assert not any(np.isin(a, s).any() for a, s in zip(a_ids, ref["seen"]))
        if kind == "hnsw" and not exclude:  # --probes is efSearch: a narrower search than the default finds less
            narrow = call(run, "--dim", 32, "--k", 100, "--all", "--ann", kind, "--probes", 100, "--out", tmp_path / "w.parquet")
            n_ids, _ = per_user(narrow, users, raw, 100)
            narrow_recall = np.mean([len(np.intersect1d(a, e)) / 100 for a, e in zip(n_ids, e_ids)])
            print(f"hnsw --probes 100: recall@100 = {narrow_recall:.4f}")
            assert narrow_recall <= recall - 0.05


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_ann_multi_interest_keeps_each_item_once_with_its_best_score(ann_run, kind):
    _, ref = ann_run
    rng = np.random.default_rng(5)
    queries = np.stack([clustered(rng, 3, 32) for _ in range(60)])  # [60, 3, 32]: interests from different clusters
    exclude, lists = random_csr(rng, 60, len(ref["items"]), 30)
    items = torch.as_tensor(ref["items"])
    index = ann.build(items, 32, kind)
    per_interest = np.einsum("bkd,nd->bkn", queries.astype(np.float64), ref["items"].astype(np.float64))
    exact_ids = topk.exact(torch.as_tensor(queries), items, 32, 50, exclude).ids.numpy()
    for table in (items, None):
        found = ann.search(index, torch.as_tensor(queries), 32, 50, exclude, items=table)
        ids, scores = found.ids.numpy(), found.scores.numpy()
        for r in range(len(ids)):
            got = ids[r][ids[r] != topk.NONE]
            assert len(got) == 50 and len(np.unique(got)) == 50, ids[r]
            assert not np.isin(got, lists[r]).any()
            assert np.all(np.diff(scores[r]) <= 0)
            best = per_interest[r].max(axis=0)[got]
            if table is not None:  # every candidate scored by all its interests: the evaluation's max
                np.testing.assert_allclose(scores[r], best, rtol=1e-4, atol=1e-4)
            else:  # by the interests that found it: one interest's product, at most the best
                assert np.all(scores[r] <= best + 1e-4)
                assert np.all(np.isclose(per_interest[r][:, got], scores[r], rtol=1e-4, atol=1e-4).any(axis=0))
        assert np.mean([len(np.intersect1d(a, e)) / 50 for a, e in zip(ids, exact_ids)]) > 0.5


# ------------------------------------------------------------------------- 5. multi-interest


def test_multi_interest_retrieval_equals_the_evaluation_scoring(runs, tmp_path):
    run = runs["remi"]
    t = tables(run)
    cfg = config.load(run / "config.yaml")
    assert cfg.eval.mask_history  # the default: evaluation masks the whole history part
    data = load_sequences(cfg.data)
    np.testing.assert_array_equal(data.item_raw, t["item_ids"])
    assert not np.array_equal(t["item_ids"], np.arange(len(t["item_ids"])))  # raw ids are not rows
    users, ends, (tptr, titems) = data.eval_split("test")
    assert len(users) >= 15 and np.any(ends > cfg.data.sequence.max_len)  # some histories longer than the window
    # The evaluation's queries: the router with the run's weights over the test windows.
    max_len = cfg.data.sequence.max_len
    router = towers.build_router(router_spec_of(cfg.model, max_len))
    router.load_state_dict(torch.load(run / "embeddings" / "router.pt", weights_only=True))
    router.eval()
    hist, mask = history_windows(data, users, ends, max_len)
    with torch.no_grad():
        queries = router(torch.as_tensor(t["item_embeddings"])[torch.as_tensor(hist)], torch.as_tensor(mask))[0].numpy()
    assert queries.shape == (len(users), 3, 16)
    # The histories file: each test user's whole history part, raw ids, oldest first.
    hptr, hitems = data.segments(users, np.zeros_like(ends), ends)
    histories = [hitems[hptr[j] : hptr[j + 1]] for j in range(len(users))]
    path = _write(tmp_path / "histories.txt",
                  [" ".join(map(str, [data.user_raw[u], *t["item_ids"][h]])) for u, h in zip(users, histories)])
    for dim in (4, 8, 16):
        table = call(run, "--dim", dim, "--k", K, "--histories", path, "--out", tmp_path / "t.parquet")
        ids, scores = per_user(table, data.user_raw[users], t["item_ids"], K)
        ref = brute(queries, t["item_embeddings"], dim)
        assert_topk(ids, scores, ref, K)
        # Untied ranks: the same items in the same places.
        order = np.argsort(-ref, axis=1, kind="stable")[:, : K + 1]
        below = -np.diff(np.take_along_axis(ref, order, axis=1), axis=1)  # [B, K]: gap to the next place down
        untied = np.minimum(below, np.c_[np.full(len(ref), np.inf), below[:, :-1]]) > 1e-5
        assert untied.mean() > 0.9
        np.testing.assert_array_equal(ids[untied], order[:, :K][untied])

    # faiss over 60 items finds them all: the same top-k, each item scored by all its interests.
    for kind in ("hnsw", "ivf"):
        table = call(run, "--dim", 16, "--k", K, "--histories", path, "--ann", kind, "--probes", 64,
                     "--out", tmp_path / "a.parquet")
        assert_topk(*per_user(table, data.user_raw[users], t["item_ids"], K), brute(queries, t["item_embeddings"], 16), K)

    # metrics.json's test recall@k at every level, from retrieve's top-k with the history part excluded.
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    targets = [np.unique(titems[tptr[j] : tptr[j + 1]]) for j in range(len(users))]
    for dim in (4, 8, 16):
        for k in (5, 10):
            table = call(run, "--dim", dim, "--k", k, "--histories", path, "--exclude-seen", "--out", tmp_path / "t.parquet")
            ids, _ = per_user(table, data.user_raw[users], t["item_ids"], k)
            assert_topk(ids, _, brute(queries, t["item_embeddings"], dim, histories), k)
            recall = np.mean([np.isin(tg, top).sum() / len(tg) for tg, top in zip(targets, ids)])
            assert recall == pytest.approx(metrics[str(dim)][f"recall@{k}"], abs=1e-9), (dim, k)
    assert 0 < metrics["16"]["recall@10"] < 1  # neither trivially zero nor all hits

    # --users with the run's own sequences: the whole sequence is the history.
    some = users[:5]
    table = call(run, "--dim", 16, "--k", K, "--users", _write(tmp_path / "u.txt", [str(data.user_raw[u]) for u in some]),
                 "--exclude-seen", "--out", tmp_path / "u.parquet")
    seqs = [data.seq_items[data.seq_indptr[u] : data.seq_indptr[u + 1]] for u in some]
    hist, mask = history_windows(data, some, data.lengths[some], max_len)
    with torch.no_grad():
        q = router(torch.as_tensor(t["item_embeddings"])[torch.as_tensor(hist)], torch.as_tensor(mask))[0].numpy()
    assert_topk(*per_user(table, data.user_raw[some], t["item_ids"], K), brute(q, t["item_embeddings"], 16, seqs), K)


# ------------------------------------------------------------------------------------ 6. errors


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distrec.serve.retrieve", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def test_cli_errors_are_one_line_and_exit_2(runs, tmp_path):
    users = _write(tmp_path / "users.txt", ["# header", "3", "", "999999"])
    done = cli("--run", runs["mf"], "--dim", 8, "--k", 5, "--users", users)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: {users}, line 4: unknown user id 999999 (1 unknown in all; the run has 300 users)\n"
    done = cli("--run", tmp_path, "--dim", 8, "--all")
    assert done.returncode == 2 and done.stderr.startswith(f"error: {tmp_path}: no manifest.json")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_errors(runs, tmp_path):
    mf, remi = runs["mf"], runs["remi"]
    for dim in (0, 65):
        with pytest.raises(retrieve.RetrieveError, match=rf"--dim {dim}: this run's embeddings have 64 dimensions"):
            call(mf, "--dim", dim, "--all")
    with pytest.raises(retrieve.RetrieveError, match=r"--funnel '99:10': the coarse dimension must be in 1..--dim \(16\)"):
        call(mf, "--dim", 16, "--all", "--funnel", "99:10")
    with pytest.raises(retrieve.RetrieveError, match="--funnel 'x': expected COARSE_DIM:N"):
        call(mf, "--dim", 16, "--all", "--funnel", "x")
    with pytest.raises(retrieve.RetrieveError, match="--histories is for multi-interest runs"):
        call(mf, "--histories", _write(tmp_path / "h.txt", ["1 2 3"]))
    with pytest.raises(manifest.ManifestError, match="no manifest.json"):
        call(tmp_path, "--all")
    with pytest.raises(retrieve.RetrieveError, match=r"users.txt, line 2: user id 'U1' is not an integer"):
        call(mf, "--users", _write(tmp_path / "users.txt", ["3", "U1"]))
    with pytest.raises(retrieve.RetrieveError, match=r"s.txt, line 3: unknown user id 'U9999'"):
        call(runs["strings"], "--users", _write(tmp_path / "s.txt", ["U0001", "", "U9999"]))
    # Histories: the file's line, blank lines counted; a directory named "line 9" changes nothing.
    item = int(np.load(remi / "embeddings" / "item_ids.npy")[0])
    where = tmp_path / "a line 9"
    where.mkdir()
    bad = _write(where / "h.txt", [f"1001 {item}", f"1000 {item} {item}", "", f"1003 {item} {item} 5"])  # 6th item, 4th line
    with pytest.raises(retrieve.RetrieveError,
                       match=r"h.txt, line 4: unknown item id 5 \(1 unknown in all; the run has 60 items\)"):
        call(remi, "--histories", bad)
    with pytest.raises(retrieve.RetrieveError, match=r"h.txt: 1 line\(s\) give a user and no history items"):
        call(remi, "--histories", _write(tmp_path / "h.txt", [f"1000 {item}", "1003"]))


def test_serving_needs_no_trainer(runs, tmp_path):
    """A multi-interest run (router and all) is served by a process that never imports TorchRec,
    fbgemm, torch.distributed's process groups or distrec's training modules (it reads a
    --histories file with the data package's reader, nothing more), with its
    training data and config moved away: the exports alone are enough."""
    moved = tmp_path / "served"
    shutil.copytree(runs["remi"] / "embeddings", moved)  # no config.yaml, data/ or checkpoints beside it
    code = (
        "import sys\n"
        "from distrec.serve import retrieve\n"
        f"table = retrieve.main(['--run', {str(moved)!r}, '--dim', '8', '--k', '5', '--all', '--exclude-seen',"
        f" '--out', {str(tmp_path / 'top.parquet')!r}])\n"
        "assert table.num_rows > 0\n"
        "loaded = [m for m in sys.modules if m.startswith(('torchrec', 'fbgemm', 'distrec.train', 'distrec.distributed',"
        " 'distrec.tasks', 'distrec.run', 'distrec.eval', 'distrec.nn.embeddings', 'distrec.experiments'))]\n"
        "assert not loaded, loaded\n"
        "import torch.distributed as dist\n"
        "assert not dist.is_initialized()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    served = pq.read_table(tmp_path / "top.parquet")
    direct = call(runs["remi"], "--dim", 8, "--k", 5, "--all", "--exclude-seen", "--out", tmp_path / "direct.parquet")
    assert served.equals(direct)


def test_tsv_quotes_only_ids_that_need_it(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pa.table({"user": ["plain", 'tab\there', 'quo"te'], "rank": np.array([1, 1, 1], np.int32),
                      "item": ["a", "b", "c"], "score": np.array([0.5, 0.25, 0.125], np.float32)})
    for t, quoted in ((table.slice(0, 1), False), (table, True)):
        raw = io.BytesIO()
        out = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)  # stdout's shape: text over bytes
        retrieve.write_tsv(t, out)
        out.detach()  # keep raw open
        text = raw.getvalue().decode()
        assert text.startswith("user\trank\titem\tscore\n") and ('"' in text) == quoted, text
        back = pacsv.read_csv(io.BytesIO(raw.getvalue()), parse_options=pacsv.ParseOptions(delimiter="\t"))
        assert back.column("user").to_pylist() == t.column("user").to_pylist()
        assert back.column("score").to_pylist() == t.column("score").to_pylist()
