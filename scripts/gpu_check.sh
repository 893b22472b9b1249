#!/usr/bin/env bash
# One prepared check of the CUDA back end on a GPU machine (README "CUDA"), sized to finish in
# under 8 minutes on an H100/H200. Run from the repository root:
#
#     OUT=/some/dir bash scripts/gpu_check.sh
#
# Steps (each logged; a failing step does not stop the later ones, the summary says which failed):
#   1. machine: nvidia-smi, python, torch, CUDA;
#   2. packages the GPU image lacks, from wheels in .whl/ (kornia, kornia_rs, nibabel; see the device
#      tool's README), installed into /tmp/site;
#   3. build + install mmcam with TORCH_CUDA_ARCH_LIST=9.0 and MMCAM_CUDA=on (--no-build-isolation, no network);
#   4. the CUDA tests (tests/ops/test_cuda.py, test_nonfinite.py) plus the dispatcher/build tests;
#   5. benchmarks/bench_ops.py --device cuda, paper, large and 2048x2048-plane shapes (JSON, markdown, PNG);
#   6. compute-sanitizer memcheck (PyTorch's caching allocator off, so an overrun of a tensor is seen) and
#      racecheck (the kernels' shared-memory reductions) on short CUDA tests;
#   7. a short training run on the GPU with bf16 autocast (fused backend, synthetic data), and one
#      under torchrun with the nccl backend (1 process).
# The whole script keeps to a deadline (MMCAM_GPU_CHECK_SECONDS, default 560 s, under the device tool's
# 600 s per command): each step's timeout is cut to what is left, and steps that no longer fit are
# skipped (said in the summary). Logs are re-packed into $OUT/logs.tar.gz after every step, so a killed
# run still returns them. Files under $OUT: summary.txt, logs.tar.gz, cuda-equivariance_ops.{json,md,png}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
started=$(date +%s)

DEADLINE=$(( $(date +%s) + ${MMCAM_GPU_CHECK_SECONDS:-560} ))

pack_logs() {
  tar -czf "$OUT/logs.tar.gz" -C "$LOGS" --exclude='*.pt' --exclude='*.npz' . 2>/dev/null
}

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $LOGS/NAME.log, record status and seconds
  local name=$1 limit=$2
  shift 2
  local left=$(( DEADLINE - $(date +%s) ))
  if [ "$left" -lt 20 ]; then
    printf '%-12s %-18s %4ds  %s\n' "$name" "SKIPPED (deadline)" 0 "$*" | tee -a "$SUMMARY"
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  local verdict=ok
  [ $rc -eq 0 ] || verdict="FAILED (rc=$rc)"
  printf '%-12s %-18s %4ds  %s\n' "$name" "$verdict" $(( $(date +%s) - t0 )) "$*" | tee -a "$SUMMARY"
  tail -n 3 "$LOGS/$name.log" | sed 's/^/    /' >> "$SUMMARY"
  pack_logs
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0))"
  git rev-parse HEAD 2>/dev/null
} >> "$SUMMARY" 2>&1

if compgen -G ".whl/*.whl" > /dev/null; then
  step wheels 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

export TORCH_CUDA_ARCH_LIST=9.0 MMCAM_CUDA=on  # on: a build that cannot make the CUDA kernels fails, saying why
step build 300 $PY -m pip install --no-build-isolation --no-deps --no-cache-dir -v .
step build_info 60 $PY -c "import torch, mmcam, json; i = mmcam.build_info(); i.pop('parallel_backend'); print(json.dumps(i)); assert i['cuda'], 'built without CUDA kernels'"

step tests 240 env MMCAM_EXPECT_CUDA=1 $PY -m pytest -q -p no:cacheprovider tests/ops/test_cuda.py tests/ops/test_nonfinite.py \
  tests/ops/test_build.py tests/ops/test_dispatcher.py

step bench 240 $PY benchmarks/bench_ops.py --device cuda --shapes paper large planes2048 --json "$OUT/cuda-equivariance_ops.json"

step memcheck 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 3 \
  $PY -m pytest -q -p no:cacheprovider tests/ops/test_cuda.py -k "strided or singular or 16_bit or bitwise"
step racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 3 \
  $PY -m pytest -q -p no:cacheprovider tests/ops/test_cuda.py -k "strided or singular"

step train_amp 180 $PY -m mmcam.train --device cuda --amp bf16 --max-steps 30 --no-progress --run-dir "$LOGS/run_amp"
step train_nccl 180 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m mmcam.train --device cuda \
  --max-steps 10 --no-progress --run-dir "$LOGS/run_nccl"

echo "total $(( $(date +%s) - started )) s" | tee -a "$SUMMARY"
pack_logs
! grep -q -E "FAILED|SKIPPED" "$SUMMARY"
