#!/usr/bin/env bash
# The GPU measurements of the speed, audio and render issues, in stages that each fit one 10-minute
# call of a lent GPU machine (docs/PERFORMANCE.md records what they measured).
#
# Usage (from the project root, after ../shared/gpu/preamble.txt on the GPU machine):
#   bash scripts/gpu_acceptance.sh STAGE [ARG] OUT_DIR
#
#   check              parity tests of the fused hash grid and the fused marcher; bench: hash grid,
#                      training at 4096 and 16384 rays and render rows of the untrained model (marching
#                      at 32 steps fused, the kernel at 64x4 and 64x8, and in PyTorch included),
#                      profiler tables                                                         (~6 min)
#   lipsync DATASET    audio pre-training + gpu_full training for LIPSYNC_S seconds (default 150) on a
#                      dataset whose held-out frames hold speech, then evaluate.py --save_rendered
#                      (score the frames on a CPU machine: evaluate.py --rendered OUT/eval_<name>)
#   train DATASET      gpu_full training toward a TRAIN_BUDGET_S total (default 600 s), interrupted with
#                      SIGTERM after TRAIN_SLICE_S (default 500) so that it fits a call; run it again
#                      (it resumes) until it prints "held-out PSNR"
#   finish DATASET     evaluate.py --save_rendered of that training; bench rows of the trained model: its
#                      training step with every sample and through its occupancy grid, render rows
#                      (occupancy grid, float16 autocast, and BENCH_ARGS: by default marching at 32
#                      and 64 steps, the fused kernel at 64x4 and 64x8, and 24+16 and 16+8 samples per
#                      field); render.py --tiles_only of 10 s
#                      of the dataset's own audio (time per two-person frame)
#
# Datasets are prepared on a CPU machine (mediapipe is not on the GPU one), e.g.:
#   python scripts/compose_conversation.py --clips talk_glasses_512.mp4 talk_map_844.mp4 --out data/devmap.mp4 \
#       --turn_seconds 2.4 --gap_seconds 0.3
#   python scripts/prepare.py --config configs/prepare.txt --video data/devmap.mp4 --out data/devmap_512 \
#       --roles data/devmap.turns.json
# Runs go to RUNS (default runs/gpu); CONFIG (default configs/gpu_full.txt) is the training preset; TRAIN_ARGS
# adds train.py flags (e.g. TRAIN_ARGS='--hash_half true' RUNS=runs/half for an A/B: the same stages with the same
# RUNS and TRAIN_ARGS, beside a default run); finish:
# EVAL=0 skips its evaluation, RENDER_ARGS replaces its render's '--pose_from tracked' (e.g. '--audio A.wav --roles
# R.json --pose_from data/other' for a novel-pose replay longer than the dataset's own audio);
# OUT_DIR receives at most 8 files (the lent machine's limit).
set -euo pipefail

stage=${1:?usage: bash scripts/gpu_acceptance.sh check|lipsync|train|finish [DATASET] OUT_DIR}
if [[ $stage == check ]]; then
    out=${2:?OUT_DIR}
else
    data=${2:?DATASET}
    out=${3:?OUT_DIR}
    name=$(basename "$data")
fi
RUNS=${RUNS:-runs/gpu}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
mkdir -p "$out" "$RUNS"
py=${PYTHON:-python}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
# The lent machine returns files of at most 16 MB: a rendered_<row>.npz above 15 MB is split into
# rendered_<row>.part<k>.npz files (consecutive frames), which evaluate.py --rendered reads as one.
split_rendered() {
    $py - "$1" <<'PY'
import glob, os, sys
import numpy as np
for path in sorted(glob.glob(os.path.join(sys.argv[1], "rendered_*.npz"))):
    if os.path.getsize(path) <= 15e6:
        continue
    z = dict(np.load(path))
    n = len(z["frames"])
    k = int(np.ceil(os.path.getsize(path) / 14e6))
    for i, idx in enumerate(np.array_split(np.arange(n), k)):
        part = {key: (v[idx] if key in ("frames", "rgb") else v) for key, v in z.items()}
        np.savez_compressed(path[:-4] + f".part{i}.npz", **part)
    os.remove(path)
    print(f"split {path} ({n} frames) into {k} parts")
PY
}

case $stage in
check)
    log "parity tests"
    $py -m pytest -q tests/test_hashgrid_cuda.py tests/test_fused_march.py 2>&1 | tail -3 | tee "$out/parity.txt"
    log "bench"
    $py scripts/bench.py --data "${BENCH_DATA:-data/dev2_512}" --preset "${CONFIG:-configs/gpu_full.txt}" \
        --train_iters 30 --render_frames 3 \
        --batch_rays 4096,16384 --march_steps 32 --march_shapes 64x4,64x8 \
        --profile "$out/prof" \
        --out "$out/bench_check.json" \
        | tee "$out/bench_check.txt"
    ;;
lipsync)
    log "train $name for ${LIPSYNC_S:-150} s"
    $py scripts/train.py --config "${CONFIG:-configs/gpu_full.txt}" --data "$data" --out "$RUNS/$name" --iters 30000 \
        --time_budget_s "${LIPSYNC_S:-150}" --log_every 100 ${TRAIN_ARGS:-} 2>&1 | tr '\r' '\n' | grep -v '%|' \
        | tee "$out/train_$name.txt" | tail -4
    log "evaluate $name"
    $py scripts/evaluate.py --ckpt "$RUNS/$name/checkpoint.pt" --data "$data" --out "$out/eval_$name" \
        --save_rendered --max_frames "${MAX_FRAMES:-30}" | tee "$out/eval_$name.txt"
    split_rendered "$out/eval_$name"
    cp "$RUNS/$name/summary.json" "$out/summary_$name.json"
    ;;
train)
    log "train $name toward ${TRAIN_BUDGET_S:-600} s of training, this slice at most ${TRAIN_SLICE_S:-500} s"
    rc=0
    timeout -s TERM -k 60 "${TRAIN_SLICE_S:-500}" $py scripts/train.py --config "${CONFIG:-configs/gpu_full.txt}" --data "$data" \
        --out "$RUNS/$name" --iters 60000 --time_budget_s "${TRAIN_BUDGET_S:-600}" --log_every 100 --resume ${TRAIN_ARGS:-} \
        2>&1 | tr '\r' '\n' | tail -6 | tee "$out/train_$name.txt" || rc=$?
    [[ -f $RUNS/$name/summary.json ]] && cp "$RUNS/$name/summary.json" "$out/summary_$name.json"
    log "exit $rc (124: the slice ended; a run already in its training loop checkpointed: run this stage again)"
    ;;
finish)
    ckpt="$RUNS/$name/checkpoint.pt"
    if [[ ${EVAL:-1} != 0 ]]; then
        log "evaluate $name"
        $py scripts/evaluate.py --ckpt "$ckpt" --data "$data" --out "$out/eval_$name" --save_rendered \
            --max_frames "${MAX_FRAMES:-20}" | tee "$out/eval_$name.txt"
        split_rendered "$out/eval_$name"
    fi
    log "bench render rows of the trained model"
    $py scripts/bench.py --data "$data" --ckpt "$ckpt" --preset "${CONFIG:-configs/gpu_full.txt}" --train_iters 5 \
        --render_frames 5 --repeats 10 ${BENCH_ARGS:---march_steps 32,64 --march_shapes 64x4,64x8 --ray_samples 24+16,16+8} \
        --out "$out/bench_render.json" | tail -24 | tee "$out/bench_render.txt"
    # (the dataset's own audio and speaking timeline: the voices and silero models are not on the GPU machine)
    log "render ${RENDER_S:-10} s: ${RENDER_ARGS:---pose_from tracked} (tiles only: no ffmpeg here)"
    # RENDER_TIMEOUT_S (default 0: none) stops a render that would outrun the call; its last progress line stays
    timeout "${RENDER_TIMEOUT_S:-0}" $py scripts/render.py --ckpt "$ckpt" --data "$data" ${RENDER_ARGS:---pose_from tracked} \
        --max_seconds "${RENDER_S:-10}" --out "$RUNS/$name/render10s.mp4" --tiles_only 2>&1 | tr '\r' '\n' | tail -3 \
        | tee "$out/render_$name.txt" || log "render stopped (exit $?)"
    ;;
*)
    echo "unknown stage $stage" >&2
    exit 2
    ;;
esac
# The lent machine returns at most 8 files: one tar of everything small, the rendered frames (.npz) beside it.
tarball="results_${stage}${name:+_$name}.tar"
tar -cf "/tmp/$tarball" --exclude='*.npz' --exclude='*.tar' -C "$out" .
find "$out" -type f ! -name '*.npz' ! -name '*.tar' -delete
mv "/tmp/$tarball" "$out/$tarball"
log "done: $out/$tarball$(find "$out" -name '*.npz' -printf ' %P')"
