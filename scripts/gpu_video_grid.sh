#!/usr/bin/env bash
# REMI settings on Amazon Video Games, side by side on one GPU (docs/gpu.md): every
# variant of configs/remi_video.yaml below, and the SASRec peer, as one process each, all at
# once, each under the same time limit. On 2 CPU cores each of these runs takes 15-45 minutes;
# on one GPU the whole grid runs in one go. Selection reads validation only (metrics.jsonl);
# test is printed for runs that stopped by themselves, for the record, never to choose.
#
#   bash scripts/gpu_video_grid.sh OUT_DIR VIDEO_TXT [SECONDS]
set -u
out=${1:?usage: gpu_video_grid.sh OUT_DIR VIDEO_TXT [SECONDS]}
video=${2:?usage: gpu_video_grid.sh OUT_DIR VIDEO_TXT [SECONDS]}
limit=${3:-480}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1

run() {  # run NAME CONFIG OVERRIDES...
    local name=$1 cfg=$2
    shift 2
    timeout "$limit" "$py" -m distrec.train --config "$cfg" device=cuda data.train="$video" \
        run_dir="$out/$name" train.epochs=40 eval.patience=5 progress=false "$@" >"$out/$name.log" 2>&1 &
}

remi=configs/remi_video.yaml
run sasrec configs/sasrec_video.yaml
run remi_base "$remi"
run remi_drop0.2 "$remi" model.dropout=0.2
run remi_drop0.5 "$remi" model.dropout=0.5
run remi_beta0.1 "$remi" train.ihn_beta=0.1
run remi_beta10 "$remi" train.ihn_beta=10
run remi_lambda0.3 "$remi" train.rr_lambda=0.3125
run remi_lambda31 "$remi" train.rr_lambda=31.25
run remi_k2 "$remi" model.num_interests=2
run remi_k8 "$remi" model.num_interests=8
run remi_neg4x "$remi" train.num_sampled=10240
run remi_lr0.05 "$remi" train.lr=0.05
run remi_logq "$remi" train.neg_distribution=log_uniform
run remi_densel0.003 "$remi" train.dense_lr=0.003
start=$SECONDS
wait
echo "== grid: $((SECONDS - start)) s"

"$py" - "$out" <<'EOF'
import glob, json, os, sys
print("run | epochs run | s/epoch | best epoch | best valid R@50 @64 | valid HR@50 / N@50 | test HR@50 / N@50 (finished runs)")
for log in sorted(glob.glob(f"{sys.argv[1]}/*/metrics.jsonl")):
    run_dir = os.path.dirname(log)
    rows = [json.loads(line) for line in open(log) if '"valid"' in line]
    if not rows:
        print(os.path.basename(run_dir), "| no evaluation")
        continue
    best = max(rows, key=lambda r: r["valid"]["64"]["recall@50"])
    v = best["valid"]["64"]
    secs = sum(r["epoch_seconds"] for r in rows) / len(rows)
    test = ""
    if os.path.exists(f"{run_dir}/metrics.json"):
        t = json.load(open(f"{run_dir}/metrics.json"))["test"]["64"]
        test = f"{t['hitrate@50']:.4f} / {t['ndcg@50']:.4f}"
    print(os.path.basename(run_dir), rows[-1]["epoch"], f"{secs:.1f}", best["epoch"], f"{v['recall@50']:.4f}",
          f"{v['hitrate@50']:.4f} / {v['ndcg@50']:.4f}", test, sep=" | ")
EOF
