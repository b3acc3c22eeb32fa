#!/usr/bin/env bash
# Round 2 (issue 17) on one GPU (H100/H200), < 8 min: the GPU attention tests, then the 1.5B bf16
# batch-4 MFU with the chunked loss next to the full-logits loss (same session, same matmul peak).
# Run from the repo root on a machine with jax[cuda], torch and transformers; missing pure-Python
# pieces (grain, array-record, ml-collections, portpicker, gguf) can be given as wheels in .whl/:
#
#   bench/gpu_round2.sh OUT_DIR
#
# Results: OUT_DIR/gpu_results.jsonl (append them to bench/results.jsonl, then `python -m bench.render`);
# logs OUT_DIR/*.log. Budget: tests 150 s, two MFU runs 150 s each.
set -u
out=${1:?usage: bench/gpu_round2.sh OUT_DIR}
mkdir -p "$out"
. "$(dirname "$0")/gpu_env.sh"  # wheels from .whl/, PYTHONPATH, offline Hub
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" || exit 1
res="$out/gpu_results.jsonl"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

echo "== GPU tests (cuDNN attention, full and sliding-window, against the einsum path)"
BSFT_GPU_TESTS=1 timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/models/test_attention_impl.py tests/models/test_sliding_attention_impl.py >"$out/gpu_tests.log" 2>&1
echo "   exit $?"; tail -n 3 "$out/gpu_tests.log"

mfu() {  # mfu LOG_NAME ARGS...
  local name=$1; shift
  echo "== gpu_mfu $*"
  timeout 150 python3 -m bench.gpu_mfu --results "$res" --models qwen2_5_1_5b --batch 4 --seq 2048 \
    --attention cudnn --remat dots --steps 5 "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 4 "$out/$name.log" | grep -v '^$'
  [ $rc -eq 0 ] || { echo "   exit $rc"; grep -E "Error|error:|RESOURCE_EXHAUSTED|out of memory" "$out/$name.log" | tail -3; }
}
mfu mfu_15b_chunked --loss-impl chunked --loss-chunk 2048
mfu mfu_15b_full --loss-impl full
