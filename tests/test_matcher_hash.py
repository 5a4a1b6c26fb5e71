"""matcher.hashing.hash_file against an independent computation (hashlib/zlib/blake3 on whole bytes)."""
from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import blake3
import pytest
from click.testing import CliRunner

from civitai_mirror.cli import cli
from civitai_mirror.fixtures import safetensors_bytes
from matcher.hashing import fingerprint, hash_file

MiB = 1 << 20


def reference(data: bytes) -> dict:
    """Civitai's definitions (civitai-api.md §2), written out directly on the whole bytes."""
    sha = hashlib.sha256(data).hexdigest().upper()
    v3 = None
    if len(data) >= 8:
        n = int.from_bytes(data[:8], "little")
        if n >= 16 * MiB:
            v3 = hashlib.sha256(data[8:]).hexdigest().upper()
        elif 8 + n <= len(data):
            v3 = hashlib.sha256(data[8 + n:]).hexdigest().upper()
    a1111 = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8].upper()
    return {
        "SHA256": sha, "AutoV2": sha[:10],
        "AutoV1": a1111 if len(data) >= 2 * MiB else None, "AutoV1_A1111": a1111,
        "AutoV3_full": v3, "AutoV3": v3[:12] if v3 else None,
        "CRC32": zlib.crc32(data).to_bytes(4, "little").hex().upper(),
        "BLAKE3": blake3.blake3(data).hexdigest().upper(),
    }


def check(path: Path, **kwargs) -> dict:
    got = hash_file(path, **kwargs)
    want = reference(path.read_bytes())
    for key, value in want.items():
        assert got[key] == value, (path.name, key, got[key], value)
    return got


def test_hello_world_vector(tmp_path):
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello world")
    got = check(path)
    assert got["SHA256"] == "B94D27B9934D3E08A52E52D7DA7DABFAC484EFE37A5380EE9088F7ACE2EFCDE9"
    assert got["CRC32"] == "85114A0D"
    assert got["BLAKE3"] == "D74981EFA70A0C880B8D8C1985D075DBCBF679B99A5F9914E5AAF96B831A9E24"
    assert got["AutoV1"] is None and got["AutoV2"] == "B94D27B993"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    got = check(path)
    assert got["SHA256"] == hashlib.sha256(b"").hexdigest().upper()
    assert got["AutoV3"] is None and "too short" in got["error"]
    assert got["AutoV1_A1111"] == "E3B0C442" and got["size"] == 0


@pytest.mark.parametrize("size", [MiB - 1, MiB + 100, 2 * MiB - 1, 2 * MiB, 2 * MiB + 12345])
def test_sizes_around_autov1_boundaries(tmp_path, size):
    body = os.urandom(size - 100)
    path = tmp_path / f"m{size}.safetensors"
    path.write_bytes(safetensors_bytes({"w": body}, dtype="F32", header_len=92))
    got = check(path)
    assert (got["AutoV1"] is None) == (size < 2 * MiB)
    assert got["AutoV3_full"] == hashlib.sha256(body).hexdigest().upper()


def test_threaded_pipeline_matches_serial(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes(safetensors_bytes({"w": os.urandom(9 * MiB + 7)}, dtype="F32", header_len=200))
    threaded = check(path, threaded=True, chunk_size=256 * 1024)
    serial = check(path, threaded=False)
    assert threaded == serial


def test_header_of_16_mib_or_more_hashes_from_byte_8(tmp_path):
    path = tmp_path / "hugeheader.safetensors"
    path.write_bytes(safetensors_bytes({"w": b"tensor-bytes" * 10}, dtype="F32", header_len=16 * MiB))
    got = check(path)
    data = path.read_bytes()
    assert got["AutoV3_full"] == hashlib.sha256(data[8:]).hexdigest().upper()
    assert got["AutoV1"] is not None  # the file is over 2 MiB


def test_zip_ckpt_hashes_from_byte_8(tmp_path):
    path = tmp_path / "model.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", os.urandom(3 * MiB))
    data = path.read_bytes()
    assert data[:4] == b"PK\x03\x04"
    got = check(path)
    assert got["AutoV3_full"] == hashlib.sha256(data[8:]).hexdigest().upper()


def test_header_longer_than_file_is_an_error_not_a_hash(tmp_path):
    path = tmp_path / "evil.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b'{"a":1}')
    got = check(path)
    assert got["AutoV3"] is None
    assert got["error"] == "safetensors header length 1000 exceeds file size 15"
    assert got["SHA256"] is not None


def test_want_limits_the_work(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(os.urandom(3000))
    got = hash_file(path, want={"sha256"})
    assert got["SHA256"] == hashlib.sha256(path.read_bytes()).hexdigest().upper()
    assert got["BLAKE3"] is None and got["CRC32"] is None and got["AutoV3"] is None


def test_offset_hashes_the_rest_as_a_file(tmp_path):
    body = safetensors_bytes({"w": os.urandom(5000)}, dtype="F32", header_len=100)
    path = tmp_path / "wrapped.bin"
    path.write_bytes(b"X" * 777 + body)
    got = hash_file(path, offset=777)
    want = reference(body)
    assert {k: got[k] for k in want} == want


def test_fingerprint_depends_on_content_and_size(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    data = os.urandom(1 * MiB)
    a.write_bytes(data)
    b.write_bytes(data)
    c.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)
    assert len(fingerprint(a)) == 32


def test_corpus_safetensors_match_expected_values(shared_dir):
    root = shared_dir / "corpus" / "safetensors"
    expected = json.loads((root / "expected.json").read_text())["files"]
    for name, facts in expected.items():
        got = check(root / name)
        assert got["SHA256"] == facts["sha256"].upper()
        assert got["AutoV2"] == facts["autov2"].upper()
        assert got["AutoV1_A1111"] == facts["autov1_a1111_legacy"].upper()
        assert got["AutoV3_full"] == (facts["autov3_full"].upper() if facts["autov3_full"] else None)


def test_corpus_pairs_with_equal_tensors_share_autov3_only(shared_dir):
    root = shared_dir / "corpus" / "safetensors" / "huggingface__safetensors"
    for upper, lower in (("B", "b"), ("H", "h"), ("I", "i")):
        one, two = hash_file(root / f"{upper}.safetensors"), hash_file(root / f"{lower}.safetensors")
        assert one["AutoV3"] == two["AutoV3"]
        assert one["SHA256"] != two["SHA256"]


def test_hash_command_json_lines(tmp_path):
    lora = tmp_path / "tiny.safetensors"
    lora.write_bytes(safetensors_bytes({"w": b"\x01\x02\x03\x04" * 4}, {"ss_network_module": "networks.lora"},
                                       dtype="F32"))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = CliRunner().invoke(cli, ["hash", str(lora), str(text), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [Path(line["path"]).name for line in lines] == ["tiny.safetensors", "notes.txt"]
    first = lines[0]
    want = reference(lora.read_bytes())
    for key in ("SHA256", "AutoV1", "AutoV2", "AutoV3", "AutoV3_full", "CRC32", "BLAKE3"):
        assert first[key] == want[key]
    assert first["kind"] == "model" and first["format"] == "safetensors"
    assert lines[1]["kind"] == "sidecar" and lines[1]["model_type"] is None


def test_hash_command_human_output_and_missing_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"hello world")
    result = CliRunner().invoke(cli, ["hash", str(path)])
    assert result.exit_code == 0
    assert "B94D27B9934D3E08A52E52D7DA7DABFAC484EFE37A5380EE9088F7ACE2EFCDE9" in result.output
    result = CliRunner().invoke(cli, ["hash", str(tmp_path / "nope.bin")])
    assert result.exit_code != 0 and "Traceback" not in result.output


# --- large files: hashed from a memory map in a helper process -----------------------------------


@pytest.mark.parametrize("want", [None, {"SHA256", "AutoV3"}, {"SHA256"}, {"CRC32", "AutoV1"}])
def test_mapped_helper_gives_the_same_hashes(tmp_path, want):
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes({"w": os.urandom(3 * MiB + 11)}, dtype="F32", header_len=300))
    seen = []
    mapped = hash_file(path, want=want, mapped=True, progress=seen.append)
    assert mapped == hash_file(path, want=want, mapped=False)
    assert sum(seen) == path.stat().st_size
    if want is None:
        assert mapped == check(path, mapped=True)


def test_mapped_helper_with_offset_and_huge_header(tmp_path):
    body = safetensors_bytes({"w": os.urandom(1000)}, dtype="F32", header_len=16 * MiB)
    path = tmp_path / "wrapped.bin"
    path.write_bytes(b"Y" * 4097 + body)
    got = hash_file(path, offset=4097, mapped=True)
    want = reference(body)
    assert {k: got[k] for k in want} == want


def test_mapped_helper_survives_a_file_truncated_under_it(tmp_path):
    """A file cut short while mapped raises SIGBUS: it must kill only the helper, never the scan."""
    from matcher.hashers import FileChangedError

    path = tmp_path / "shrinking.safetensors"
    with open(path, "wb") as handle:  # 1 GiB, sparse: hashing it all would take seconds
        handle.write(safetensors_bytes({"w": b"x" * 64}, dtype="F32", header_len=100))
        handle.truncate(1 << 30)

    def cut_short(n):
        os.truncate(path, 4096)

    with pytest.raises(FileChangedError):
        hash_file(path, want={"SHA256"}, mapped=True, progress=cut_short)
    other = tmp_path / "fine.bin"
    other.write_bytes(os.urandom(2 * MiB))
    assert hash_file(other, mapped=True) == hash_file(other, mapped=False)  # a new helper took over


def test_large_files_go_through_the_helper_in_a_scan(tmp_path, monkeypatch):
    import matcher.hashing as hashing

    lora = tmp_path / "big.safetensors"
    lora.write_bytes(safetensors_bytes({"w": os.urandom(2 * MiB)}, {"ss_network_module": "networks.lora"},
                                       dtype="F32", header_len=200))
    calls = []
    real = hashing.hash_mapped
    monkeypatch.setattr(hashing, "MAPPED_MIN_SIZE", MiB)
    monkeypatch.setattr(hashing, "hash_mapped", lambda *a: calls.append(a[0]) or real(*a))
    result = CliRunner().invoke(cli, ["hash", str(lora), "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    want = reference(lora.read_bytes())
    assert {k: got[k] for k in ("SHA256", "AutoV1", "AutoV3", "CRC32", "BLAKE3")} == \
        {k: want[k] for k in ("SHA256", "AutoV1", "AutoV3", "CRC32", "BLAKE3")}
    assert [Path(p).name for p in calls] == ["big.safetensors"]
