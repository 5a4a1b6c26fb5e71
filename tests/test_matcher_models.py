"""Model classification from tensor names, shapes and metadata (no tensors loaded)."""
import pytest

from matcher.models import classify_tensors

SD15_CKPT = {
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3),
}
SDXL_CKPT = {
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
    "conditioner.embedders.1.model.ln_final.weight": (1280,),
}


@pytest.mark.parametrize("shapes,metadata,expected", [
    (SD15_CKPT, {}, ("checkpoint", "SD1.x")),
    (SDXL_CKPT, {}, ("checkpoint", "SDXL")),
    ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768),
      "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 4)},
     {}, ("lora", "SD1.x")),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.diff": (320, 320)}, {}, ("lycoris", None)),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": (320, 4)}, {}, ("lycoris", None)),
    ({"emb_params": (2, 768)}, {}, ("embedding", "SD1.x")),
    ({"clip_l": (2, 768), "clip_g": (2, 1280)}, {}, ("embedding", "SDXL")),
])
def test_classify_tensors(shapes, metadata, expected):
    assert classify_tensors(shapes, metadata) == expected
