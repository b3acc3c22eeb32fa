# Sourced by bench/gpu_session.sh and bench/gpu_round2.sh: the environment of a GPU bench run. Missing
# pure-Python/CPU pieces (grain, array-record, ml-collections, portpicker, gguf) can be given as wheels in
# .whl/; they are installed into a private site folder that PYTHONPATH puts first.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
site=/tmp/bsft_site
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
fi
export PYTHONPATH="$site:$PWD"
