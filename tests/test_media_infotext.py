"""The spec's test matrix for the A1111 parser, LoRA rules, resources and the canonical hash."""
from __future__ import annotations

from matcher.media.a1111 import parse_infotext, parse_params
from matcher.media.normalise import finalise, metadata_hash


def parse(text: str) -> dict:
    return finalise(parse_infotext(text))


BASIC = ("a cat, <lora:add_detail:0.5>, masterpiece\nNegative prompt: blurry, <lora:bad_hands:1>\n"
         "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
         "Model hash: 6ce0161689, Model: v1-5-pruned, Version: v1.10.1")


def test_prompt_negative_and_fields():
    r = parse(BASIC)
    assert r["positive_raw"] == "a cat, <lora:add_detail:0.5>, masterpiece"
    assert r["negative_raw"] == "blurry, <lora:bad_hands:1>"
    assert (r["steps"], r["sampler"], r["cfg_scale"], r["seed"]) == (20, "DPM++ 2M Karras", 7.0, 1234)
    assert (r["width"], r["height"], r["size_raw"]) == (512, 768, "512x768")
    assert (r["model_name"], r["model_hash_short"], r["version_tag"]) == ("v1-5-pruned", "6ce0161689", "v1.10.1")
    assert r["scheduler"] is None  # only when given separately
    assert r["generation_tool"] == "AUTOMATIC1111"
    assert r["positive_clean"] == "a cat, masterpiece" and r["negative_clean"] == "blurry"


def test_loras_with_context_and_positions():
    r = parse(BASIC)
    assert [(l["name"], l["weight"], l["context"], l["position"]) for l in r["loras"]] == \
        [("add_detail", 0.5, "positive", 0), ("bad_hands", 1.0, "negative", 1)]


def test_negative_prompt_is_case_insensitive_and_multiline():
    r = parse("p1\np2\nNEGATIVE PROMPT: n1\nn2\nSteps: 5, Seed: 1")
    assert r["positive_raw"] == "p1\np2" and r["negative_raw"] == "n1\nn2"


def test_empty_positive_and_crlf():
    r = parse("Negative prompt: bad\r\nSteps: 5, Sampler: Euler, Seed: 3")
    assert r["positive_raw"] == "" and r["negative_raw"] == "bad" and r["seed"] == 3


def test_quoted_and_json_values_are_kept_whole():
    p = parse_params('Steps: 20, Lora hashes: "a: 0123456789ab, b: ba9876543210", '
                     'Hashes: {"model": "afaf521da2", "lora:x": "1234567890"}, '
                     'Civitai resources: [{"type":"lora","weight":0.4,"modelVersionId":1202162}], Seed: 5')
    assert p["Lora hashes"] == "a: 0123456789ab, b: ba9876543210"
    assert p["Hashes"] == '{"model": "afaf521da2", "lora:x": "1234567890"}'
    assert p["Civitai resources"].startswith("[{") and p["Seed"] == "5"


def test_duplicate_keys_last_wins_and_malformed_tokens_ignored():
    r = parse("x\nSteps: 10, garbage token, Seed: 1, Steps: 30, CFG scale: abc, Sampler: Euler a")
    assert r["steps"] == 30 and r["seed"] == 1 and r["cfg_scale"] is None and r["sampler"] == "Euler a"


def test_aliases_from_the_spec():
    r = parse("x\nSteps: 10, cfg: 4.5, hash: abcdef1234, model_name: m1, Variation seed: 77, "
              "Variation seed strength: 0.3, Schedule type: Karras, Clip skip: 2, Denoising strength: 0.4, "
              "Hires upscaler: 4x-UltraSharp, Hires steps: 12, VAE: vae.pt, VAE hash: 735e4c3a44")
    assert (r["cfg_scale"], r["model_hash_short"], r["model_name"]) == (4.5, "abcdef1234", "m1")
    assert (r["subseed"], r["subseed_strength"], r["scheduler"], r["clip_skip"]) == (77, 0.3, "Karras", 2)
    assert (r["hires_upscaler"], r["hires_steps"], r["hires_denoising"]) == ("4x-UltraSharp", 12, 0.4)
    assert (r["vae"], r["vae_hash"]) == ("vae.pt", "735e4c3a44")


def test_seed_beyond_2_53_is_exact():
    r = parse("x\nSteps: 10, Seed: 6952411511246973023")
    assert r["seed"] == 6952411511246973023


def test_prompt_over_64kb_is_truncated_with_flag():
    r = parse("a" * 70000 + "\nSteps: 10, Seed: 1")
    assert len(r["positive_raw"].encode()) == 65536 and r["prompt_truncated"] is True
    assert parse(BASIC).get("prompt_truncated") is None


def test_lora_forms_and_rules():
    text = ("<lora:one> <lora:two.safetensors:0.8:0.6> <lyco:three:1.2> lora:four:0.7 <lora:my lora!:1>, "
            "<lora:x:1> <lora:toolong" + "a" * 130 + ":1> <lora:heavy:5> <lora:neg:-1> <lora:bad:abc>"
            "\nSteps: 1")
    r = parse(text)
    got = [(l["name"], l["weight"], l["weight2"], l["kind"]) for l in r["loras"]]
    assert got == [("one", 1.0, None, "lora"), ("two", 0.8, 0.6, "lora"), ("three", 1.2, None, "lycoris"),
                   ("four", 0.7, None, "lora"), ("my_lora", 1.0, None, "lora")]
    assert "<lora" not in r["positive_clean"] and "lora:four" not in r["positive_clean"]


def test_resources_with_hashes():
    r = parse('x <lora:add-detail-xl:1>\nNegative prompt: EasyNegative\nSteps: 20, Seed: 1, '
              'Model hash: 6ce0161689, Model: sdxl, VAE hash: 735e4c3a44, VAE: sdxl_vae.safetensors, '
              'Lora hashes: "add-detail-xl: 9c783c8ce46c", TI hashes: "EasyNegative: 339cc9210f70, '
              'EasyNegative: 339cc9210f70", Hashes: {"model": "6ce0161689", "embed:negXL": "fff5d51ab6"}, '
              'Civitai resources: [{"type":"lora","weight":0.4,"modelVersionId":1202162,"modelName":"Cool"}]')
    rows = {(x["kind"], x["name"], x["hash"], x["hash_kind"], x["weight"], x["version_id"]) for x in r["resources"]}
    assert ("checkpoint", "sdxl", "6CE0161689", "AutoV2", None, None) in rows
    assert ("vae", "sdxl_vae.safetensors", "735E4C3A44", "AutoV2", None, None) in rows
    assert ("lora", "add-detail-xl", "9C783C8CE46C", "AutoV3", 1.0, None) in rows
    assert ("embedding", "EasyNegative", "339CC9210F70", "SHA256", None, None) in rows
    assert ("embedding", "negXL", "FFF5D51AB6", "AutoV2", None, None) in rows
    assert ("lora", "Cool", None, None, 0.4, 1202162) in rows
    assert sum(1 for x in r["resources"] if x["name"] == "EasyNegative") == 1  # TI duplicates collapse


def test_fork_detection():
    assert parse("x\nSteps: 1, Version: f2.0.1v1.10.1-previous-669")["generation_tool"] == "Forge"
    assert parse("x\nSteps: 1, Version: f1.0.0v2-v1.10.1RC-latest")["generation_tool"] == "reForge"
    assert parse("x\nSteps: 1, Version: neo")["generation_tool"] == "Forge Neo"
    assert parse("x\nSteps: 1, App: SD.Next, Version: 56a8aea")["generation_tool"] == "SD.Next"
    assert parse("x\nSteps: 1, Created Date: 2025-03-05T13:51:18.17Z")["generation_tool"] == "Civitai"


def test_reordered_tokens_give_the_same_hash():
    a = parse("p\nSteps: 20, Sampler: Euler, Seed: 5, CFG scale: 7.0")
    b = parse("p\nSeed: 5, CFG scale: 7.0, Sampler: Euler, Steps: 20")
    assert a["metadata_hash"] == b["metadata_hash"]
    c = parse("p\nSteps: 21, Sampler: Euler, Seed: 5, CFG scale: 7.0")
    assert c["metadata_hash"] != a["metadata_hash"]
    assert metadata_hash(a) == a["metadata_hash"]
