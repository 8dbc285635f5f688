#!/usr/bin/env bash
# The GPU checks, in one go, for a GPU machine available for a short time (docs/gpu.md):
#   1. versions of the GPU, torch, fbgemm-gpu and torchrec;
#   2. the same short run on the CPU and on the GPU (synthetic `small` preset, same seed), test
#      metrics side by side: the fused GPU kernels must train the same model as the CPU ones,
#      so the check fails when any level's test R@20 or N@20 differs by more than TOL (0.02;
#      measured on an H200, 2026-11: at most 0.0087, at d = 4; see docs/gpu.md);
#   3. the committed Phones config under torchrun (nccl), whole run with refit;
#   4. scripts/bench_scale.py at Amazon-Books size (training steps/s, evaluation users/s);
#   5. a small validation-only grid of the matryoshka softmax on Phones (too slow on 2 CPU cores).
# Every stage has its own time limit so that a slow one cannot eat the others' time. The exit
# status is 1 when a stage failed or timed out, or when CPU and GPU disagree beyond TOL.
#
#   bash scripts/gpu_check.sh OUT_DIR [PHONES_DIR]
set -u
out=${1:?usage: gpu_check.sh OUT_DIR [PHONES_DIR]}
phones=${2:-../shared/data/amazon-phones}
py=${PYTHON:-python3}
tol=${TOL:-0.02}
status=0
mkdir -p "$out"
export PYTHONUNBUFFERED=1

stage() {  # stage NAME SECONDS CMD...: log to OUT/NAME.log, print rc, seconds and the log's tail
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    [ "$rc" -eq 0 ] || status=1
    echo "== $name: rc=$rc, $((SECONDS - start)) s"
    tr '\r' '\n' <"$out/$name.log" | grep -v 'it/s\]\|s/it\]' | tail -n "${TAIL:-12}"
}

stage env 60 bash -c "nvidia-smi -L; $py -c 'import torch, fbgemm_gpu, torchrec; \
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0)); \
print(\"fbgemm_gpu\", fbgemm_gpu.__version__, \"torchrec\", torchrec.__version__)'"

small=(data.synthetic.preset=small train.epochs=6 eval.every_epochs=2)
stage small_cpu 150 "$py" -m distrec.train "${small[@]}" device=cpu run_dir="$out/small_cpu"
stage small_gpu 150 "$py" -m distrec.train "${small[@]}" device=cuda run_dir="$out/small_gpu"
"$py" scripts/compare_metrics.py "$out/small_cpu/metrics.json" "$out/small_gpu/metrics.json" --tol "$tol" \
    --names cpu gpu || status=1

stage phones 240 "$py" -m torch.distributed.run --standalone --nproc_per_node 1 -m distrec.train \
    --config configs/mrl4rec_phones.yaml data.train="$phones/train.txt" data.test="$phones/test.txt" \
    run_dir="$out/phones"

stage books_bench 240 "$py" scripts/bench_scale.py --steps 100 --eval-users 65536

# Validation only (refit=false; the test figures of these runs are not read).
grid() {
    local lr=$1 l2=$2
    "$py" -m distrec.train --config configs/mrl4rec_phones.yaml data.train="$phones/train.txt" \
        data.test="$phones/test.txt" train.loss=softmax train.num_sampled=1000000 train.gramian=0 \
        train.refit=false train.epochs=40 eval.every_epochs=1 eval.patience=3 \
        train.lr="$lr" train.l2="$l2" run_dir="$out/softmax_${lr}_${l2}" >"$out/softmax_${lr}_${l2}.log" 2>&1
}
start=$SECONDS
for lr in 0.1 0.3; do for l2 in 0.05 0.2; do timeout 200 bash -c "$(declare -f grid); py=$py out=$out phones=$phones grid $lr $l2" & done; done
wait
echo "== softmax grid: $((SECONDS - start)) s (validation R@20 / N@20 at d = 64, best so far)"
"$py" - "$out" <<'EOF2'
import glob, json, sys
for log in sorted(glob.glob(f"{sys.argv[1]}/softmax_*/metrics.jsonl")):
    rows = [json.loads(line) for line in open(log) if '"valid"' in line]
    best = max(rows, key=lambda r: r["valid"]["64"]["recall@20"], default=None)
    if best:
        v = best["valid"]["64"]
        print(log.split("/")[-2], f"epoch {best['epoch']}/{rows[-1]['epoch']}", f"{v['recall@20']:.4f} / {v['ndcg@20']:.4f}")
EOF2

echo "== gpu_check: exit $status"
exit $status
