"""Mesh construction and the logical-axis rules table."""

import jax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from bsft_jax import abstract_decoder, preset
from bsft_jax.models.sharding import DEFAULT_RULES, constrain, logical_to_spec, make_mesh, state_shardings


def test_make_mesh_resolves_minus_one_and_rejects_bad_shapes():
    mesh = make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert make_mesh((1, -1, 1)).shape["fsdp"] == 8
    with pytest.raises(ValueError, match="needs 12 devices but 8"):
        make_mesh({"data": 3, "fsdp": 4, "tensor": 1})
    with pytest.raises(ValueError, match="not divisible by 3"):
        make_mesh({"data": 3, "fsdp": -1, "tensor": 1})
    with pytest.raises(ValueError, match="unknown axis"):
        make_mesh({"model": 8})
    with pytest.raises(ValueError, match="at most one axis"):
        make_mesh({"data": -1, "fsdp": -1})


def test_rules_map_logical_axes_and_reject_two_on_one_mesh_axis():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert logical_to_spec(("embed", "q_heads", "head_dim"), mesh=mesh, shape=(64, 4, 16)) == P("fsdp", "tensor", None)
    assert logical_to_spec(("batch", "length"), mesh=mesh, shape=(8, 16)) == P(("data", "fsdp"), None)
    # a dim the mesh axis does not divide is replicated on it (4 KV heads... here 1 head over tensor=2)
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), mesh=mesh, shape=(64, 1, 16)) == P("fsdp", None, None)
    with pytest.raises(ValueError, match="mesh axis 'tensor'"):
        logical_to_spec(("q_heads", "mlp"), mesh=mesh, shape=(4, 8))
    with pytest.raises(KeyError, match="no entry"):
        logical_to_spec(("nonsense",))
    assert dict(DEFAULT_RULES)["layers"] is None


def test_every_parameter_of_a_7b_model_gets_a_sharding():
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    state = nnx.state(abstract_decoder(preset("qwen2_5_7b")), nnx.Param)
    shardings = state_shardings(state, mesh)
    specs = {"/".join(map(str, p)): v.get_value().spec for p, v in nnx.to_flat_state(shardings)}
    assert specs["layers/attn/q_proj"] == P(None, "fsdp", "tensor", None)
    assert specs["layers/attn/k_proj"] == P(None, "fsdp", "tensor", None)  # 4 KV heads / tensor=2
    assert specs["layers/mlp/down_proj"] == P(None, "tensor", "fsdp")
    assert specs["embed"] == P("tensor", "fsdp") and specs["lm_head"] == P("fsdp", "tensor")
    assert specs["layers/input_norm/scale"] == P(None, None)


def test_constrain_is_a_noop_without_a_mesh_and_shards_with_one():
    x = jax.numpy.ones((8, 4, 16))
    assert constrain(x, ("batch", "length", "act_embed")) is x
    mesh = make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    with jax.set_mesh(mesh):
        y = jax.jit(lambda a: constrain(a * 2, ("batch", "length", "act_embed")))(x)
    assert y.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, P(("data", "fsdp"))), 3)
