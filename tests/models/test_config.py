"""DecoderConfig: both config.json layouts, clear errors, presets counted without weights."""

import json

import pytest

from bsft_jax.models.config import DecoderConfig, Llama3RopeScaling, UnsupportedConfigError, preset
from bsft_jax.models.decoder import abstract_decoder, count_params

# transformers 4.x layout, as published for Llama-3.1-8B-Instruct (top-level rope_theta / rope_scaling / torch_dtype).
LLAMA31_8B_V4 = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256,
}
# As published for Qwen2.5-7B-Instruct.
QWEN25_7B_V4 = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
    "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False, "vocab_size": 152064,
}


def test_reads_transformers4_layout_llama():
    c = DecoderConfig.from_hf(LLAMA31_8B_V4)
    assert c.model_type == "llama" and c.head_dim == 128 and c.num_kv_heads == 8
    assert c.rope_theta == 500000.0
    assert c.rope_scaling == Llama3RopeScaling(8.0, 1.0, 4.0, 8192)
    assert c.source_dtype == "bfloat16" and c.eos_token_id == (128001, 128008, 128009)
    assert not c.qkv_bias and not c.tie_word_embeddings
    assert c == preset("llama3_1_8b").replace(generation_eos_token_ids=())


def test_reads_transformers4_layout_qwen_with_generation_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_7B_V4))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643]}))
    c = DecoderConfig.from_hf(tmp_path)
    assert c.qkv_bias and c.rope_theta == 1e6 and c.rope_scaling is None
    assert c.generation_eos_token_ids == (151645, 151643)
    assert c.stop_token_ids == (151645, 151643)
    assert c == preset("qwen2_5_7b")


def test_reads_transformers5_layout_and_round_trips():
    from transformers import LlamaConfig

    hf = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, rope_theta=500000.0,
                     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                     dtype="bfloat16").to_dict()
    assert "rope_parameters" in hf
    c = DecoderConfig.from_hf(hf)
    assert c.rope_scaling.original_max_position_embeddings == 64 and c.rope_theta == 500000.0 and c.head_dim == 16
    assert c.source_dtype == "bfloat16"
    assert DecoderConfig.from_hf(c.to_hf()) == c
    # transformers itself reads what we write
    back = LlamaConfig(**{k: v for k, v in c.to_hf().items() if k != "architectures"})
    assert back.rope_parameters["rope_type"] == "llama3" and back.head_dim == 16


@pytest.mark.parametrize(
    "change, field",
    [
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"model_type": "mistral"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ],
)
def test_unsupported_configs_fail_naming_the_field(tmp_path, change, field):
    (tmp_path / "config.json").write_text(json.dumps({**QWEN25_7B_V4, **change}))
    with pytest.raises(UnsupportedConfigError) as e:
        DecoderConfig.from_hf(tmp_path)
    assert field in str(e.value) and "config.json" in str(e.value)


def test_missing_config_and_bad_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        DecoderConfig.from_hf(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen2",\n oops}')
    with pytest.raises(ValueError, match="line 2"):
        DecoderConfig.from_hf(tmp_path)


# Published parameter counts (model cards / safetensors metadata), embeddings included.
@pytest.mark.parametrize(
    "name, published",
    [
        ("qwen2_5_0_5b", 494_032_768),  # "0.49B"
        ("qwen2_5_1_5b", 1_543_714_304),  # "1.54B"
        ("qwen2_5_7b", 7_615_616_512),  # "7.62B"
        ("llama3_2_1b", 1_235_814_400),  # "1.24B"
        ("llama3_1_8b", 8_030_261_248),  # "8.03B"
    ],
)
def test_preset_parameter_counts_without_allocating(name, published):
    model = abstract_decoder(preset(name))  # jax.eval_shape: ShapeDtypeStructs only
    assert count_params(model) == published


def test_config_validation_messages():
    with pytest.raises(ValueError, match="num_kv_heads"):
        preset("qwen2_5_0_5b", num_kv_heads=3)
    with pytest.raises(ValueError, match="dtype"):
        preset("qwen2_5_0_5b", dtype="int8")
    with pytest.raises(KeyError, match="available"):
        preset("gpt2")
    with pytest.raises(ValueError, match="scan_unroll"):
        preset("qwen2_5_0_5b", scan_unroll=0)
