#!/usr/bin/env bash
# The GPU benchmark session behind BENCHMARKS.md's GPU tables, for a single-GPU machine that already
# has jax[cuda], torch and transformers (e.g. an H100 image). Missing pure-Python/CPU pieces can be
# given as wheels in .whl/ (grain, array-record, ml-collections, portpicker), and .whl/pinned/ holds
# the flax/optax/orbax versions of requirements.txt, used only if bsft_jax fails to import with the
# machine's own.
#
#   bench/gpu_session.sh OUT_DIR models     # GPU tests + MFU of 0.5B (bsft_jax einsum/cudnn, torch) + decode
#   bench/gpu_session.sh OUT_DIR large      # GPU tests + torch 0.5B + MFU of the 1.5B shape
#   bench/gpu_session.sh OUT_DIR final      # the BENCHMARKS.md table: 0.5B/1.5B bsft_jax (cudnn) vs torch, Llama-3.2-1B
#
# Every run is its own process (JAX preallocates most of the GPU; torch needs its own) with a time
# limit; results go to OUT_DIR/gpu_results.jsonl and the logs to OUT_DIR/*.log.
set -u
out=${1:?usage: bench/gpu_session.sh OUT_DIR PART}
part=${2:-models}
mkdir -p "$out"
. "$(dirname "$0")/gpu_env.sh"  # wheels from .whl/, PYTHONPATH, offline Hub
smoke='import jax, flax, optax, orbax.checkpoint as o, bsft_jax, bench.train_setup
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, "orbax", o.__version__,
      jax.devices())'
if ! python3 -c "$smoke" 2>"$out/smoke.err"; then
  echo "bsft_jax does not import with this machine's flax/optax/orbax; using .whl/pinned"; tail -3 "$out/smoke.err"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/pinned/*.whl
  python3 -c "$smoke" || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
res="$out/gpu_results.jsonl"

mfu() {  # mfu LOG_NAME LIMIT_S ARGS...
  local name=$1 limit=$2; shift 2
  echo "== gpu_mfu $*"
  timeout "$limit" python3 -m bench.gpu_mfu --results "$res" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 6 "$out/$name.log" | grep -v '^$'
  [ $rc -eq 0 ] || { echo "   exit $rc"; grep -E "Error|error:|RESOURCE_EXHAUSTED|out of memory" "$out/$name.log" | tail -3; }
}

case "$part" in
  models)
    echo "== GPU tests"
    BSFT_GPU_TESTS=1 timeout 240 python3 -m pytest -q -p no:cacheprovider tests/models/test_attention_impl.py \
      >"$out/gpu_tests.log" 2>&1; echo "   exit $?"; tail -n 3 "$out/gpu_tests.log"
    mfu mfu_05b_einsum_dots 200 --models qwen2_5_0_5b --attention einsum --remat dots
    mfu mfu_05b_cudnn_dots 200 --models qwen2_5_0_5b --attention cudnn --remat dots
    mfu mfu_05b_cudnn_none 200 --models qwen2_5_0_5b --attention cudnn --remat none
    mfu mfu_05b_torch 200 --models qwen2_5_0_5b --impl torch
    echo "== decode qwen2_5_0_5b bf16"
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 timeout 200 python3 -m bench.decode --size qwen2_5_0_5b --dtype bfloat16 \
      --batch 8 --prompt 128 --new 128 --results "$res" >"$out/decode_05b.log" 2>&1
    echo "   exit $?"; tail -n 8 "$out/decode_05b.log"
    ;;
  large)
    echo "== GPU tests"
    BSFT_GPU_TESTS=1 timeout 240 python3 -m pytest -q -p no:cacheprovider tests/models/test_attention_impl.py \
      >"$out/gpu_tests.log" 2>&1; echo "   exit $?"; tail -n 3 "$out/gpu_tests.log"
    mfu mfu_05b_torch 200 --models qwen2_5_0_5b --impl torch
    mfu mfu_15b_cudnn_dots 220 --models qwen2_5_1_5b --attention cudnn --remat dots
    mfu mfu_15b_cudnn_none 220 --models qwen2_5_1_5b --attention cudnn --remat none
    mfu mfu_15b_torch 200 --models qwen2_5_1_5b --impl torch
    mfu mfu_15b_cudnn_dots_b8 220 --models qwen2_5_1_5b --attention cudnn --remat dots --batch 8
    mfu mfu_15b_einsum_dots 200 --models qwen2_5_1_5b --attention einsum --remat dots
    ;;
  final)  # the runs quoted in BENCHMARKS.md's GPU table, with the chained-matmul peak
    mfu f_05b_cudnn_dots 200 --models qwen2_5_0_5b --attention cudnn --remat dots
    mfu f_05b_torch 200 --models qwen2_5_0_5b --impl torch
    mfu f_15b_cudnn_dots 220 --models qwen2_5_1_5b --attention cudnn --remat dots
    mfu f_15b_torch 200 --models qwen2_5_1_5b --impl torch
    mfu f_15b_cudnn_dots_b8 220 --models qwen2_5_1_5b --attention cudnn --remat dots --batch 8
    mfu f_1b_llama_cudnn_dots 220 --models llama3_2_1b --attention auto --remat dots
    ;;
  *) echo "unknown part $part"; exit 2 ;;
esac
