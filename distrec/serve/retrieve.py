"""Top-K items per user from a run's exported embeddings, at any matryoshka dimension.

    python -m distrec.retrieve --run runs/mrl4rec_phones --dim 16 --k 100 --all --exclude-seen --out top.parquet
    python -m distrec.retrieve --run runs/mrl4rec_phones --dim 64 --k 20 --users ids.txt --funnel 8:1000
    python -m distrec.retrieve --run runs/remi_video --dim 32 --k 50 --histories histories.txt

Reads only `embeddings/` (distrec.serve.manifest): the tables, their raw ids, the run's interactions
and, for multi-interest runs, the router's weights, rebuilt by `towers.build_router`. No
training code and no process group. Search is exact by default (chunked, on the GPU when
there is one), a funnel (`--funnel COARSE_DIM:N`: shortlist N at a coarse prefix, re-rank at
`--dim`), or approximate through faiss (`--ann ivf|hnsw`). The output has columns user, rank
(from 1), item and score, with raw ids: Parquet with `--out`, tab-separated on stdout otherwise.

Users: `--all` (every user of the run), `--users FILE` (one raw user id per line). A
multi-interest run's user is its history: the user's sequence in the run's data, or
`--histories FILE` (lines `user item item ...`, oldest first; ids as in the training data).
Imports: numpy, pyarrow, torch, distrec.serve.manifest / topk / towers / data.ingest, ann (lazily).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from distrec.data import DataError, ingest
from distrec.data.dataset import SPLITS
from distrec.data import csr
from distrec.data.sequences import csr_windows
from distrec.nn.towers import build_router
from distrec.serve import manifest as manifests, topk

SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}  # as interactions.parquet stores them


class RetrieveError(ValueError):
    """Bad arguments or input files: one line for the user, no traceback."""


@dataclasses.dataclass
class Bundle:
    """A run's exports, loaded for serving."""

    directory: Path
    manifest: dict
    items: torch.Tensor  # [num_items, dim] float32
    item_ids: np.ndarray  # raw id of each item row
    users: torch.Tensor | None  # [num_users, dim] (mrl4rec) or None (multi_interest: users are histories)
    user_ids: np.ndarray | None
    router: torch.nn.Module | None
    device: torch.device

    @property
    def multi_interest(self) -> bool:
        return self.router is not None

    @property
    def max_len(self) -> int:
        return self.manifest["encoder"]["router"]["max_len"]

    def interactions(self) -> dict[str, np.ndarray]:
        rel = self.manifest.get("interactions")
        if rel is None or not (self.directory / rel).is_file():
            raise RetrieveError(f"{self.directory}: the export has no interactions file (runs before manifests): "
                                "pass --histories FILE, or drop --exclude-seen")
        table = pq.read_table(self.directory / rel)
        return {name: table.column(name).to_numpy() for name in table.column_names}


def load(path: str | Path, device: torch.device | str | None = None) -> Bundle:
    """The exports of a run directory (or of its embeddings directory)."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    directory, manifest = manifests.read(path)
    items = torch.as_tensor(np.load(directory / manifest["tables"]["items"]), device=device)
    item_ids = np.load(directory / manifest["ids"]["items"])
    users = user_ids = router = None
    if manifest["tables"]["users"]:
        users = torch.as_tensor(np.load(directory / manifest["tables"]["users"]), device=device)
    if manifest["ids"]["users"]:
        user_ids = np.load(directory / manifest["ids"]["users"])
    if manifest.get("encoder"):
        router = build_router(manifest["encoder"]["router"])
        state = torch.load(directory / manifest["encoder"]["weights"], map_location="cpu", weights_only=True)
        router.load_state_dict(state)
        router.to(device).eval()
    if items.shape != (manifest["num_items"], manifest["dim"]) or len(item_ids) != len(items):
        raise manifests.ManifestError(f"{directory}: item table {tuple(items.shape)} and {len(item_ids)} ids do not match "
                                      f"the manifest's {manifest['num_items']} items x {manifest['dim']}")
    return Bundle(directory, manifest, items, item_ids, users, user_ids, router, device)


def rows_of(raw: np.ndarray, known: np.ndarray, what: str, where: str, lines: np.ndarray | None = None) -> np.ndarray:
    """Rows of raw ids in `known` (the export's ids); an unknown id is an error naming its line
    (`lines[i]` for raw[i]; default i + 1)."""
    raw = np.asarray(raw)
    line = (lambda i: int(lines[i])) if lines is not None else (lambda i: i + 1)
    if known.dtype.kind in "iu":
        try:
            raw = raw.astype(np.int64)
        except ValueError:
            bad = next(i for i, r in enumerate(raw) if not str(r).lstrip("-").isdigit())
            raise RetrieveError(f"{where}, line {line(bad)}: {what} id {raw[bad].item()!r} is not an integer; "
                                f"this run's {what} ids are integers") from None
    else:
        raw = raw.astype(str)
    order = np.argsort(known, kind="stable")
    at = np.searchsorted(known, raw, sorter=order).clip(max=len(known) - 1)
    rows = order[at] if len(known) else np.zeros(len(raw), np.int64)
    unknown = np.flatnonzero(known[rows] != raw) if len(known) else np.arange(len(raw))
    if len(unknown):
        i = int(unknown[0])
        raise RetrieveError(f"{where}, line {line(i)}: unknown {what} id {raw[i].item()!r} "
                            f"({len(unknown)} unknown in all; the run has {len(known)} {what}s)")
    return rows.astype(np.int64)


def read_ids(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, their line numbers) of a file of one raw id per line (blank lines and # comments skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise RetrieveError(f"{path}: cannot read ({err})") from None
    kept = [(number, line.strip()) for number, line in enumerate(lines, 1)]
    kept = [(number, i) for number, i in kept if i and not i.startswith("#")]
    if not kept:
        raise RetrieveError(f"{path}: no user ids")
    return np.array([i for _, i in kept]), np.array([number for number, _ in kept])


def user_rows(path: str | Path, bundle: Bundle) -> np.ndarray:
    """Rows of the user ids in a `--users` file; an unknown id names its line of the file."""
    ids, lines = read_ids(path)
    return rows_of(ids, bundle.user_ids, "user", str(path), lines)


def read_histories(path: str | Path, bundle: Bundle) -> tuple[np.ndarray, topk.Csr]:
    """(raw user ids, CSR of item rows oldest first) of lines `user item item ...`: the
    `user_lines` format of training data, read by the same vectorised reader (ids may be
    integers or strings; an error names the file and line)."""
    try:
        pairs = ingest.read_user_lines(path, "--histories")
    except DataError as err:
        raise RetrieveError(str(err)) from None
    if pairs.stats["user_only"]:
        raise RetrieveError(f"{path}: {pairs.stats['user_only']} line(s) give a user and no history items "
                            "(expected `user item item ...`)")
    first = np.flatnonzero(np.diff(pairs.lines, prepend=-1) != 0)  # each line's first pair
    items = pairs.items if pairs.item_names is None else pairs.item_names[pairs.items]
    rows = rows_of(items, bundle.item_ids, "item", str(path), pairs.lines)
    return pairs.raw_users(first), (np.append(first, len(items)).astype(np.int64), rows)


def run_histories(bundle: Bundle, rows: np.ndarray) -> topk.Csr:
    """The sequences (item rows in time order) of user rows in the run's data."""
    data = bundle.interactions()
    return _user_lists(data["user"], data["item"], np.lexsort((data["position"], data["user"])), rows)


def _user_lists(user: np.ndarray, item: np.ndarray, order: np.ndarray, rows: np.ndarray) -> topk.Csr:
    """CSR over `rows` of each user row's items, in `order` (an ordering of the pairs by user)."""
    user, item = user[order], item[order]
    starts, ends = np.searchsorted(user, rows, "left"), np.searchsorted(user, rows, "right")
    return csr.gather(item, starts, ends - starts)


def windows(histories: topk.Csr, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, max_len], mask) of each history's last max_len items, left-aligned as training
    and evaluation window them (`data.sequences.csr_windows`)."""
    indptr, items = histories
    return csr_windows(indptr, items, np.arange(len(indptr) - 1), np.diff(indptr), max_len)


@torch.no_grad()
def encode(bundle: Bundle, histories: topk.Csr, batch: int = 4096) -> torch.Tensor:
    """Interests `[B, K, D]` of histories, through the run's router."""
    ids, mask = windows(histories, bundle.max_len)
    out = []
    for lo in range(0, len(ids), batch):
        hist = torch.as_tensor(ids[lo : lo + batch], device=bundle.device)
        m = torch.as_tensor(mask[lo : lo + batch], device=bundle.device)
        h = bundle.items[hist]  # padding is item 0's row, as in training; the router masks it
        out.append(bundle.router(h, m)[0])
    return torch.cat(out) if out else torch.zeros((0, 1, bundle.items.shape[1]), device=bundle.device)


def seen_items(bundle: Bundle, rows: np.ndarray, splits: tuple[str, ...]) -> topk.Csr:
    """Per user row, the items of its interactions in `splits` (mrl4rec) or its sequence."""
    data = bundle.interactions()
    keep = np.ones(len(data["user"]), bool)
    if "split" in data:
        keep = np.isin(data["split"], [SPLIT_CODES[s] for s in splits])
    user, item = data["user"][keep], data["item"][keep]
    return _user_lists(user, item, np.argsort(user, kind="stable"), rows)


def parse_funnel(text: str, dim: int) -> tuple[int, int]:
    try:
        coarse, shortlist = (int(x) for x in text.split(":"))
    except ValueError:
        raise RetrieveError(f"--funnel {text!r}: expected COARSE_DIM:N, e.g. 8:1000") from None
    if not 1 <= coarse <= dim or shortlist < 1:
        raise RetrieveError(f"--funnel {text!r}: the coarse dimension must be in 1..--dim ({dim}) and N >= 1")
    return coarse, shortlist


def top_items(bundle: Bundle, queries: torch.Tensor, dim: int, k: int, exclude: topk.Csr | None = None, *,
           funnel: tuple[int, int] | None = None, ann: str | None = None, clusters: int | None = None,
           probes: int | None = None, chunk_mb: float = 256.0) -> topk.TopK:
    """Top-`k` item rows for each query row: exact, funnel, or ann (see the module docstring)."""
    if funnel is not None:
        index = funnel_index(bundle, funnel[0], clusters)
        return topk.funnel(queries, bundle.items, index, funnel[1], dim, k, exclude,
                           probes if probes is not None else default_probes(index.num_clusters), chunk_mb)
    if ann is not None:
        from distrec.serve import ann as faiss_ann

        return faiss_ann.search(faiss_ann.build(bundle.items, dim, ann, clusters, probes), queries, dim, k, exclude,
                                items=bundle.items)
    return topk.exact(queries, bundle.items, dim, k, exclude, chunk_mb)


def funnel_index(bundle: Bundle, coarse_dim: int, clusters: int | None = None) -> topk.CoarseIndex:
    """The funnel's inverted file over the export's items, clustered once and kept beside the
    tables (`funnel/lists-<C>-<digest>.pt`, keyed by the item table's content), so later calls
    skip the k-means (4-5 s over 368k items). A read-only export is clustered each time."""
    import hashlib

    n = len(bundle.items)
    c = max(1, min(n, clusters or int(2 * np.sqrt(n))))
    digest = hashlib.blake2b(bundle.items.cpu().numpy().tobytes(), digest_size=8).hexdigest()
    path = bundle.directory / "funnel" / f"lists-{c}-{digest}.pt"
    if path.is_file():
        try:
            return topk.CoarseIndex.with_lists(torch.load(path, weights_only=True), bundle.items, coarse_dim)
        except Exception:  # a cache: whatever is wrong with the file (torn, stale, foreign), cluster again
            pass
    index = topk.CoarseIndex.build(bundle.items, coarse_dim, c)
    try:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(index.lists(), tmp)
        tmp.replace(path)
    except OSError:
        pass  # a read-only export: nothing kept
    return index


def default_probes(clusters: int) -> int:
    """Clusters a funnel query searches by default: an eighth (docs/serving.md measures others)."""
    return max(1, clusters // 8)


def to_table(user_raw: np.ndarray, found: topk.TopK, item_ids: np.ndarray) -> pa.Table:
    """Columns user, rank (1 = best), item, score; empty slots (fewer than k items) left out."""
    ids, scores = found.ids.cpu().numpy(), found.scores.cpu().numpy()
    keep = ids != topk.NONE
    rank = np.broadcast_to(np.arange(1, ids.shape[1] + 1), ids.shape)[keep]
    user = np.repeat(np.asarray(user_raw), keep.sum(axis=1))
    return pa.table({"user": user, "rank": rank.astype(np.int32), "item": item_ids[ids[keep]],
                     "score": scores[keep].astype(np.float32)})


def write_tsv(table: pa.Table, out) -> None:
    """Tab-separated lines with a header, written by Arrow's CSV writer (60M rows for all Books
    users at k = 100 would take minutes through Python's print). Ids holding a tab, quote or
    line break are quoted; all others are written bare."""
    out.write("\t".join(table.column_names) + "\n")
    out.flush()
    special = any(pa.types.is_string(col.type) and pc.any(pc.match_substring_regex(col, r'[\t\n\r"]')).as_py()
                  for col in table.columns)
    options = pacsv.WriteOptions(delimiter="\t", include_header=False, quoting_style="needed" if special else "none")
    pacsv.write_csv(table, out.buffer, options)
    out.buffer.flush()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m distrec.retrieve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory (or its embeddings/ directory)")
    p.add_argument("--dim", type=int, help="prefix dimension to score at: any of 1..the run's dim (default: full)")
    p.add_argument("--k", type=int, default=100, help="items per user (default 100)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--all", action="store_true", help="every user of the run")
    who.add_argument("--users", metavar="FILE", help="one raw user id per line")
    who.add_argument("--histories", metavar="FILE", help="multi-interest: lines `user item item ...`, oldest first")
    p.add_argument("--exclude-seen", action="store_true",
                   help="drop items the user interacted with (the run's data; or the --histories file's items)")
    p.add_argument("--seen-splits", default="train,valid,test",
                   help="mrl4rec: which splits of the run's data count as seen (default all: train,valid,test)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--funnel", metavar="COARSE_DIM:N", help="shortlist N items at COARSE_DIM, re-rank at --dim")
    how.add_argument("--ann", choices=("ivf", "hnsw"), help="approximate search through faiss (pip install 'distrec[ann]')")
    p.add_argument("--clusters", type=int, help="clusters of the index (default: funnel 2 sqrt(items), ivf 4 sqrt(items))")
    p.add_argument("--probes", type=int, help="funnel / ivf: clusters searched per user (default clusters / 8); "
                                             "hnsw: efSearch")
    p.add_argument("--out", metavar="FILE.parquet", help="write Parquet here (default: tab-separated on stdout)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when there is a GPU)")
    p.add_argument("--chunk-mb", type=float, default=256.0, help="memory for one block of scores (default 256)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> pa.Table:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    bundle = load(args.run, args.device)
    full = bundle.manifest["dim"]
    dim = full if args.dim is None else args.dim
    if not 1 <= dim <= full:
        raise RetrieveError(f"--dim {dim}: this run's embeddings have {full} dimensions (levels {bundle.manifest['levels']})")
    if args.k < 1:
        raise RetrieveError(f"--k {args.k}: must be >= 1")
    for name in ("clusters", "probes"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise RetrieveError(f"--{name} must be >= 1")
    funnel = parse_funnel(args.funnel, dim) if args.funnel else None
    splits = tuple(s.strip() for s in args.seen_splits.split(",") if s.strip())
    if not splits or any(s not in SPLIT_CODES for s in splits):
        raise RetrieveError(f"--seen-splits {args.seen_splits!r}: a comma-separated subset of train,valid,test")

    exclude = None
    if bundle.multi_interest:
        if args.histories:
            user_raw, histories = read_histories(args.histories, bundle)
        else:
            if bundle.user_ids is None:
                raise RetrieveError(f"{bundle.directory}: no user ids in this export; pass --histories FILE")
            rows = np.arange(len(bundle.user_ids)) if args.all else user_rows(args.users, bundle)
            user_raw, histories = bundle.user_ids[rows], run_histories(bundle, rows)
        queries = encode(bundle, histories)
        if args.exclude_seen:
            exclude = histories
    else:
        if args.histories:
            raise RetrieveError("--histories is for multi-interest runs; this run has a user table: use --users or --all")
        rows = np.arange(len(bundle.users)) if args.all else user_rows(args.users, bundle)
        user_raw, queries = bundle.user_ids[rows], bundle.users[torch.as_tensor(rows, device=bundle.device)]
        if args.exclude_seen:
            exclude = seen_items(bundle, rows, splits)

    found = top_items(bundle, queries, dim, args.k, exclude, funnel=funnel, ann=args.ann, clusters=args.clusters,
                   probes=args.probes, chunk_mb=args.chunk_mb)
    table = to_table(user_raw, found, bundle.item_ids)
    how = f"funnel {args.funnel}" if funnel else (f"faiss {args.ann}" if args.ann else "exact")
    summary = (f"{len(user_raw)} users, top {args.k} of {len(bundle.items)} items at d = {dim} ({how}) "
               f"in {time.perf_counter() - start:.1f} s")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(out)
        print(f"{summary}; wrote {out}", file=sys.stderr)
    else:
        write_tsv(table, sys.stdout)
        print(summary, file=sys.stderr)
    return table


def cli() -> None:
    """`python -m distrec.retrieve`: main() with one-line errors for bad input."""
    try:
        main()
    except (RetrieveError, manifests.ManifestError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except BrokenPipeError:  # `... | head`
        raise SystemExit(0) from None


if __name__ == "__main__":
    cli()
