"""The model and tokenizer a run trains: from a local HF folder or from scratch, plus behavior tokens.

Fresh run: load the base tokenizer (``transformers.AutoTokenizer``), build the model (HF weights
streamed straight into their shardings, or a random init compiled with sharded outputs), then
extend both with the behavior tokens through :func:`bsft_jax.behavior.add_behavior_tokens` (the
same code path for the demo's small tokenizer and for Qwen2.5 / Llama 3). Resumed run: the
extended tokenizer and model config come back from the run directory, and the model is only
abstract (the checkpoint supplies the weights), so a 7B model is not loaded twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from types import SimpleNamespace
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from bsft_jax import storage
from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.behavior.surgery import add_behavior_tokens, round_up
from bsft_jax.behavior.tokenizer import behavior_token_ids
from bsft_jax.checkpoint.layout import TOKENIZER_SUBDIR, decoder_config_from_dict, decoder_config_to_dict
from bsft_jax.files import write_json
from bsft_jax.models.builtin import resolve_model_path
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.decoder import Decoder, abstract_decoder
from bsft_jax.models.hf import load_hf, save_tokenizer
from bsft_jax.models.sharding import state_shardings
from bsft_jax.setup.settings import BehaviorSettings, ConfigError, DataSettings, ModelSettings, Settings
from bsft_jax.setup.sources import demo_tokenizer_path

log = logging.getLogger(__name__)

# End-of-turn tokens of common chat templates: generation must stop on them too.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>")


@dataclasses.dataclass
class ModelBundle:
    """What a run trains: the model (concrete or abstract), its config, tokenizer and behavior ids."""

    model: Decoder
    config: DecoderConfig
    tokenizer: Any
    behavior_ids: dict[str, int]


def tokenizer_path(model: ModelSettings, data: DataSettings, spec: BehaviorSpec) -> str:
    """The base tokenizer folder (``tokenizer.path``, else the HF model folder; "demo": the demo BPE)."""
    path = model.base_tokenizer
    if path == "demo":
        return demo_tokenizer_path(data, spec)
    return path


def load_tokenizer(path: str) -> Any:
    """An HF tokenizer from a local folder, a ``gs://`` prefix or ``builtin:<name>`` (never the Hub)."""
    from transformers import AutoTokenizer  # import-time cost (seconds): only when a tokenizer is loaded

    # builtin:<name> -> its cached local folder; a URL's small files are downloaded (weights skipped)
    with storage.local_copy(resolve_model_path(path)) as folder:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def stop_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """EOS id plus the end-of-turn tokens the tokenizer has (for a from-scratch model's config)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for tok in END_OF_TURN_TOKENS:
        if tok in vocab and vocab[tok] not in ids:
            ids.append(int(vocab[tok]))
    return tuple(ids)


def init_sharded(config: DecoderConfig, seed: int, mesh: Mesh) -> Decoder:
    """A randomly initialised Decoder whose parameters are created directly in their shardings."""
    graphdef, abstract = nnx.split(abstract_decoder(config))
    shardings = state_shardings(abstract, mesh)

    def make() -> nnx.State:
        return nnx.state(Decoder(config, rngs=nnx.Rngs(params=seed)))

    state = jax.jit(make, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def scratch_config(model: ModelSettings, tokenizer: Any) -> DecoderConfig:
    """DecoderConfig of a from-scratch model: ``model.arch`` sized to the base tokenizer."""
    a = SimpleNamespace(**model.arch)
    n_tokens = len(tokenizer)
    rows = round_up(n_tokens, model.vocab_pad_multiple)
    stops = stop_token_ids(tokenizer)
    return DecoderConfig(
        model_type=a.model_type,
        vocab_size=rows,
        valid_vocab_size=n_tokens if rows != n_tokens else None,
        hidden_size=a.hidden_size,
        intermediate_size=a.intermediate_size,
        num_layers=a.num_layers,
        num_heads=a.num_heads,
        num_kv_heads=a.num_kv_heads,
        head_dim=a.head_dim,
        rope_theta=a.rope_theta,
        rms_norm_eps=a.rms_norm_eps,
        tie_word_embeddings=a.tie_word_embeddings,
        qkv_bias=a.model_type == "qwen2",
        max_position_embeddings=a.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stops[0] if stops else None,
        pad_token_id=tokenizer.pad_token_id,
        generation_eos_token_ids=stops,
        source_dtype=model.runtime.param_dtype,
        **model.runtime.fields(),
    )


def build_fresh(s: Settings, mesh: Mesh) -> ModelBundle:
    """Base tokenizer + model (HF or scratch) on ``mesh``, extended with the behavior tokens if enabled.

    Uses ``s.model``, ``s.behavior``, ``s.seed`` and, for the demo tokenizer, ``s.data``.
    """
    tok_path = tokenizer_path(s.model, s.data, s.behavior.spec)
    tokenizer = load_tokenizer(tok_path) if tok_path else None
    if s.model.source == "hf":
        log.info("loading %s onto mesh %s", s.model.hf_path, dict(mesh.shape))
        rt = s.model.runtime.fields()
        model, config = load_hf(s.model.hf_path, dtype=rt.pop("param_dtype"), compute_dtype=rt.pop("dtype"),
                                mesh=mesh, **rt)
    else:
        if tokenizer is None:
            raise ValueError("config.tokenizer.path: a from-scratch model needs a base tokenizer")
        config = scratch_config(s.model, tokenizer)
        model = init_sharded(config, s.seed, mesh)
    ids: dict[str, int] = {}
    if s.behavior.enabled:
        before = config.vocab_size
        model, config, ids = add_behavior_tokens(model, config, tokenizer, s.behavior.spec, seed=s.seed,
                                                 pad_multiple=s.model.vocab_pad_multiple, init=s.behavior.init)
        log.info("behavior tokens %s; embedding rows %d -> %d (valid %d)", ids, before, config.vocab_size,
                 config.num_valid_tokens)
    return ModelBundle(model=model, config=config, tokenizer=tokenizer, behavior_ids=ids)


def build_for_resume(model: ModelSettings, behavior: BehaviorSettings, run_dir: str, meta: dict[str, Any]
                     ) -> ModelBundle:
    """Abstract model + the run's saved tokenizer and model config (the checkpoint has the weights)."""
    config = decoder_config_from_dict(meta["model_config"], **model.runtime.fields())
    tok_dir = storage.join(run_dir, meta.get("tokenizer_dir", TOKENIZER_SUBDIR))
    tokenizer = load_tokenizer(tok_dir) if storage.isdir(tok_dir) else None
    ids = dict(meta.get("behavior", {}).get("token_ids", {}))
    if tokenizer is not None and behavior.enabled:
        ids = behavior_token_ids(tokenizer, behavior.spec)  # checks the saved tokenizer still has them
    return ModelBundle(model=abstract_decoder(config), config=config, tokenizer=tokenizer, behavior_ids=ids)


# What fixes a run's parameters: a resume keeps the model it started with (the checkpoint's), so a
# change here would be silently ignored. (dtype, remat, attention_impl ... may change on resume.)
_MODEL_FIELDS = ("vocab_pad_multiple", "lora.rank", "lora.alpha", "lora.targets")


def check_same_model(run_dir: str, config: dict[str, Any]) -> None:
    """Raises :class:`ConfigError` naming the first model field whose value differs from the run's
    saved ``config.json`` (the architecture of a from-scratch model, padding, LoRA shape).

    A run without a readable ``config.json`` (older layout, or damaged: the trainer rewrites it) is
    not checked.
    """
    path = storage.join(run_dir, "config.json")
    try:
        saved = json.loads(storage.read_text(path))["model"]
    except Exception:  # missing or damaged: the checkpoint's meta still fixes the model
        return
    model = config["model"]
    lora = bool(_get(model, "lora.rank")) or bool(_get(saved, "lora.rank"))
    fields = [f for f in _MODEL_FIELDS if lora or not f.startswith("lora.")]
    if model.get("source") == "scratch" and saved.get("source") == "scratch":
        fields += [f"arch.{k}" for k in sorted(model.get("arch", {}))]
    for field in fields:
        new, old = _get(model, field), _get(saved, field)
        if old is not None and new != old:
            raise ConfigError(f"config.model.{field}={new!r} differs from {old!r} in {path}: a resumed run keeps "
                              "the model it was started with; drop the override, or start a new run with another "
                              "config.run_dir")


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def write_run_files(run_dir: str, bundle: ModelBundle, config_dict: dict[str, Any], *, fresh: bool) -> None:
    """Process 0: config.json, model_config.json and (fresh runs) the extended tokenizer."""
    storage.makedirs(run_dir)
    write_json(storage.join(run_dir, "config.json"), config_dict)
    write_json(storage.join(run_dir, "model_config.json"), decoder_config_to_dict(bundle.config))
    if fresh and bundle.tokenizer is not None:
        save_tokenizer(bundle.tokenizer, storage.join(run_dir, TOKENIZER_SUBDIR))
