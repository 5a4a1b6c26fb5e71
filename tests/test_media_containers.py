"""Container readers on tiny files made here with Pillow, bad input, ComfyUI graphs, and a fuzz test."""
from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from civitai_mirror.fixtures import comment_exif, image_bytes, insert_before_iend, picture, png_bytes, png_chunk
from matcher.media import extract_comprehensive_metadata, find_metadata_text_file
from matcher.media.a1111 import parse_infotext
from matcher.media.comfy_hosts import parse_tensorart
from matcher.media.comfyui import parse_comfy_prompt
from matcher.media.containers import decode_user_comment, read_containers
from matcher.media.invokeai import parse_invoke_dream, parse_invoke_metadata
from matcher.media.json_generators import parse_easydiffusion, parse_fooocus, parse_novelai, parse_swarmui
from matcher.media.parse import parse_text
from matcher.media.text_generators import parse_sidecar_text, parse_xmp

INFOTEXT = "a red fox <lora:detail:0.6>\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 6, " \
           "Seed: 42, Size: 64x48, Model hash: 0123456789, Model: foxmodel"


# ---------------------------------------------------------------- PNG
def test_png_text_parameters(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(png_bytes(text={"parameters": INFOTEXT}))
    r = extract_comprehensive_metadata(p)
    assert (r["seed"], r["model_name"], r["width"], r["height"]) == (42, "foxmodel", 64, 48)
    assert r["loras"] == [{"name": "detail", "weight": 0.6, "context": "positive", "weight2": None, "kind": "lora"}]
    assert r["blurhash"] and r["metadata_source"] == "png:parameters"


def test_png_ztxt_after_idat_and_itxt():
    base = png_bytes()
    ztxt = png_chunk(b"zTXt", b"parameters\x00\x00" + zlib.compress(INFOTEXT.encode()))
    assert read_containers(insert_before_iend(base, ztxt)).texts["parameters"] == INFOTEXT
    itxt = png_chunk(b"iTXt", b"parameters\x00\x01\x00\x00\x00" + zlib.compress("プロンプト\nSteps: 3".encode()))
    assert read_containers(insert_before_iend(base, itxt)).texts["parameters"] == "プロンプト\nSteps: 3"


def test_latin1_chunk_holding_utf8_with_trailing_nul():
    raw = png_chunk(b"tEXt", b"generation_data\x00" + '{"prompt":"#テスト","seed":"5"}'.encode() + b"\x00")
    c = read_containers(insert_before_iend(png_bytes(), raw))
    assert c.texts["generation_data"] == '{"prompt":"#テスト","seed":"5"}'
    real_latin1 = png_chunk(b"tEXt", b"Comment\x00caf\xe9")
    assert read_containers(insert_before_iend(png_bytes(), real_latin1)).texts["Comment"] == "café"


def test_decompression_bomb_text_chunk_is_capped(monkeypatch):
    import matcher.media.containers as containers
    monkeypatch.setattr(containers, "MAX_TEXT_BYTES", 1000)
    bomb = png_chunk(b"zTXt", b"parameters\x00\x00" + zlib.compress(b"a" * 100_000))
    c = read_containers(insert_before_iend(png_bytes(), bomb))
    assert "parameters" not in c.texts and any("larger than" in e for e in c.errors)


def test_stealth_alpha_metadata():
    text = INFOTEXT.encode()
    payload = gzip.compress(text)
    bits = "".join(f"{b:08b}" for b in b"stealth_pngcomp") + f"{len(payload) * 8:032b}" + \
        "".join(f"{b:08b}" for b in payload)
    w, h = 64, 64
    assert len(bits) <= w * h
    alpha = np.full(w * h, 254, dtype=np.uint8)
    alpha[: len(bits)] |= np.array([int(b) for b in bits], dtype=np.uint8)
    arr = np.zeros((h, w, 4), dtype=np.uint8)
    arr[:, :, 3] = alpha.reshape(w, h).T  # column-major
    c = read_containers(image_bytes(Image.fromarray(arr, "RGBA")))
    assert c.stealth == INFOTEXT


# ---------------------------------------------------------------- JPEG / WebP EXIF
@pytest.mark.parametrize("raw", [
    b"UNICODE\x00" + INFOTEXT.encode("utf-16-be"),
    b"UNICODE\x00" + INFOTEXT.encode("utf-16-le"),
    b"ASCII\x00\x00\x00" + INFOTEXT.encode(),
    INFOTEXT.encode(),
])
def test_user_comment_variants(tmp_path, raw):
    p = tmp_path / "x.jpg"
    p.write_bytes(image_bytes(picture((8, 8), "blue"), "JPEG", exif=comment_exif(raw)))
    r = extract_comprehensive_metadata(p)
    assert r["seed"] == 42 and r["positive_raw"].startswith("a red fox")


def test_user_comment_in_ifd0_and_webp_make_model(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(image_bytes(picture((8, 8), "blue"), "JPEG", exif=comment_exif(INFOTEXT.encode(), ifd0=True)))
    assert extract_comprehensive_metadata(p)["seed"] == 42
    graph = {"3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 9, "cfg": 2.5, "sampler_name": "euler",
                                                        "scheduler": "normal", "model": ["4", 0]}},
             "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}}}
    exif = Image.Exif()
    exif[0x010F] = "workflow:{}"
    exif[0x0110] = "prompt:" + json.dumps(graph)
    w = tmp_path / "c.webp"
    w.write_bytes(image_bytes(picture((8, 8), "blue"), "WEBP", exif=exif))
    r = extract_comprehensive_metadata(w)
    assert (r["generation_tool"], r["seed"], r["steps"], r["model_name"]) == ("ComfyUI", 7, 9, "m.safetensors")


def test_invalid_utf16_is_marked_not_fatal():
    errors: list[str] = []
    text = decode_user_comment(b"UNICODE\x00" + b"\x00a\xd8\x00\x00b", errors)
    assert text is not None and errors == ["invalid UTF-16 in EXIF UserComment"]


def test_gif_comment(tmp_path):
    p = tmp_path / "a.gif"
    Image.new("P", (4, 4)).save(p, "GIF", comment=INFOTEXT.encode())
    assert extract_comprehensive_metadata(p)["seed"] == 42


def test_xmp_draw_things():
    xmp = ('<x:xmpmeta><rdf:RDF><rdf:Description><dc:description><rdf:Alt><rdf:li xml:lang="x-default">'
           'robot&#xA;Steps: 26, Sampler: Euler A Trailing, Guidance Scale: 3.5, Seed: 9, Model: f.ckpt'
           '</rdf:li></rdf:Alt></dc:description><xmp:CreatorTool>Draw Things</xmp:CreatorTool>'
           '</rdf:Description></rdf:RDF></x:xmpmeta>')
    r = parse_xmp(xmp)
    assert (r["generation_tool"], r["seed"], r["cfg_scale"], r["sampler"]) == ("Draw Things", 9, 3.5, "Euler A Trailing")


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"not an image at all", "not a recognised"),
])
def test_bad_files(tmp_path, data, reason):
    p = tmp_path / "bad.png"
    p.write_bytes(data)
    r = extract_comprehensive_metadata(p)
    assert r["no_metadata"] and reason in r["error"]


def test_truncated_png_keeps_metadata_and_marks_error(tmp_path):
    data = png_bytes((64, 64), text={"parameters": INFOTEXT})
    i = data.index(b"IDAT")
    p = tmp_path / "t.png"
    p.write_bytes(data[: i + 20])  # parameters chunk comes before IDAT
    r = extract_comprehensive_metadata(p)
    assert r["seed"] == 42 and r["error"]


def test_wrong_extension_is_sniffed(tmp_path):
    p = tmp_path / "really_png.jpg"
    p.write_bytes(png_bytes(text={"parameters": INFOTEXT}))
    r = extract_comprehensive_metadata(p)
    assert r["format"] == "png" and r["seed"] == 42


def test_decompression_bomb_image(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    p = tmp_path / "big.png"
    p.write_bytes(png_bytes((64, 64), text={"parameters": INFOTEXT}))
    r = extract_comprehensive_metadata(p)
    assert r["seed"] == 42 and "decompression bomb" in r["error"] and r["blurhash"] is None


# ---------------------------------------------------------------- sidecars
def test_sidecar_used_model_style(tmp_path):
    img = tmp_path / "pic.png"
    img.write_bytes(png_bytes())
    side = tmp_path / "pic.txt"
    side.write_text("Used model: dreamshaper_8.safetensors\nLoRA: add_detail:0.5, more_art:0.8\n")
    assert find_metadata_text_file(img) == side
    r = extract_comprehensive_metadata(img)
    assert r["model_name"] == "dreamshaper_8.safetensors"
    assert [(l["name"], l["weight"]) for l in r["loras"]] == [("add_detail", 0.5), ("more_art", 0.8)]
    assert r["metadata_source"] == "sidecar:pic.txt"


def test_sidecar_json(tmp_path):
    img = tmp_path / "pic.png"
    img.write_bytes(png_bytes())
    (tmp_path / "pic.json").write_text(json.dumps({"prompt": "x", "seed": 3, "num_inference_steps": 12,
                                                   "guidance_scale": 7, "use_stable_diffusion_model": "sd15"}))
    r = extract_comprehensive_metadata(img)
    assert (r["generation_tool"], r["seed"], r["steps"], r["model_name"]) == ("EasyDiffusion", 3, 12, "sd15")


def test_no_sidecar(tmp_path):
    img = tmp_path / "pic.png"
    img.write_bytes(png_bytes())
    assert find_metadata_text_file(img) is None
    assert extract_comprehensive_metadata(img)["no_metadata"]


# ---------------------------------------------------------------- generators on small fixtures
def test_comfy_graph_walk_with_links_loras_and_custom_sampler():
    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors"}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": "style.safetensors", "strength_model": 0.7,
                                                              "model": ["1", 0]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": ["9", 0]}},
        "9": {"class_type": "PrimitiveString", "inputs": {"value": "a lighthouse"}},
        "4": {"class_type": "RandomNoise", "inputs": {"noise_seed": ["8", 0]}},
        "8": {"class_type": "Seed (rgthree)", "inputs": {"seed": 123456789012345678}},
        "5": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "6": {"class_type": "BasicScheduler", "inputs": {"scheduler": "simple", "steps": 28, "denoise": 1.0,
                                                         "model": ["2", 0]}},
        "7": {"class_type": "BasicGuider", "inputs": {"model": ["2", 0], "conditioning": ["3", 0]}},
        "10": {"class_type": "EmptyLatentImage", "inputs": {"width": 832, "height": 1216, "batch_size": 1}},
        "11": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["4", 0], "guider": ["7", 0],
                                                                 "sampler": ["5", 0], "sigmas": ["6", 0],
                                                                 "latent_image": ["10", 0]}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0]}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0]}},
    }
    r = parse_comfy_prompt(g)
    assert (r["seed"], r["steps"], r["sampler"], r["scheduler"]) == (123456789012345678, 28, "euler", "simple")
    assert (r["model_name"], r["positive_raw"], r["width"], r["height"]) == ("flux1-dev.safetensors", "a lighthouse", 832, 1216)
    assert [(l["name"], l["weight"]) for l in r["loras"]] == [("style", 0.7)]


def test_comfy_unresolvable_link_gives_none_not_a_guess():
    g = {"1": {"class_type": "KSampler", "inputs": {"seed": ["2", 0], "steps": ["3", 0], "cfg": 7,
                                                    "sampler_name": "euler", "scheduler": "normal"}},
         "2": {"class_type": "Multiply Integer", "inputs": {"multiplier": 2, "number": ["4", 0]}},
         "3": {"class_type": "MathExpression|pysssss", "inputs": {"expression": "a*3", "a": 5}}}
    r = parse_comfy_prompt(g)
    assert r["seed"] is None and r["steps"] is None and r["cfg_scale"] == 7.0


def test_other_generators_small_fixtures():
    nai = parse_novelai('{"steps": 28, "sampler": "k_euler", "seed": 5, "scale": 5.0, "uc": "bad"}', "cat",
                        "NovelAI Diffusion V4.5 C02D4F98")
    assert (nai["model_name"], nai["model_hash_short"], nai["positive_raw"]) == ("NovelAI Diffusion V4.5", "C02D4F98", "cat")
    inv = parse_invoke_metadata({"positive_prompt": "p", "seed": 1, "steps": 2, "cfg_scale": 3, "scheduler": "euler",
                                 "model": {"name": "m", "hash": "blake3:" + "ab" * 32},
                                 "loras": [{"model": {"name": "lo"}, "weight": 0.5}]})
    assert inv["resources"][0]["hash_kind"] == "BLAKE3" and inv["loras"][0]["name"] == "lo"
    dream = parse_invoke_dream('"a cat [ugly]" -s 30 -S 7 -W 512 -H 512 -C 7.5 -A k_euler')
    assert (dream["positive_raw"], dream["negative_raw"], dream["seed"], dream["cfg_scale"]) == ("a cat", "ugly", 7, 7.5)
    swarm = parse_swarmui({"sui_image_params": {"prompt": "p", "seed": 9, "loras": ["ab"], "loraweights": ["0.5"]},
                           "sui_models": [{"name": "m.safetensors", "param": "model", "hash": "0x" + "a" * 64}]})
    assert swarm["resources"][0]["hash_kind"] == "AutoV3" and swarm["loras"][0]["weight"] == 0.5
    rf = parse_fooocus({"Prompt": "p", "software": "RuinedFooocus", "seed": 1, "base_model_name": "m",
                        "base_model_hash": "A" * 64})
    assert rf["generation_tool"] == "RuinedFooocus" and rf["resources"][0]["hash_kind"] == "SHA256"
    ta = parse_tensorart({"prompt": "p", "seed": "-1", "steps": 5}, None)
    assert ta["seed"] is None  # -1 is "random", not a seed
    ed = parse_easydiffusion({"prompt": "p", "num_inference_steps": 5, "guidance_scale": 7, "seed": 1,
                              "use_stable_diffusion_model": "sd", "use_lora_model": ["l1"], "lora_alpha": [0.3]})
    assert ed["loras"][0]["weight"] == 0.3
    assert parse_sidecar_text("nothing here") is None


# ---------------------------------------------------------------- no input crashes any parser
PARSERS = [parse_infotext, lambda t: parse_text(t, "sidecar"), parse_xmp, parse_invoke_dream, parse_sidecar_text,
           lambda t: parse_novelai(t), lambda t: parse_swarmui(t), lambda t: parse_fooocus(t),
           lambda t: parse_tensorart(t, t), parse_invoke_metadata, parse_easydiffusion]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_no_bytes_crash_the_container_reader(data):
    c = read_containers(data)
    assert isinstance(c.errors, list)
    for prefix in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBP", b"GIF89a"):
        read_containers(prefix + data)


_TEXTY = st.text(alphabet=st.sampled_from(list("abc:,<>{}[]\"\\\n 0123456789.-loraLORASteps:Negative prompt")),
                 max_size=300)


@settings(max_examples=150, deadline=None)
@given(st.one_of(_TEXTY, st.text(max_size=200)))
def test_no_text_crashes_any_parser(text):
    for parse in PARSERS:
        parse(text)
    parse_comfy_prompt({"1": {"class_type": "KSampler", "inputs": {"seed": text, "steps": [text, 0]}}})
