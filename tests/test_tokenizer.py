"""GPT-2's real tokenizer, built offline from the files shipped in the package."""

import hashlib
import re

from helpers.models import TOKENIZER_DIR, gpt2_tokenizer


def test_known_gpt2_ids():
    tok = gpt2_tokenizer()
    assert tok("Hello, world!")["input_ids"] == [15496, 11, 995, 0]
    assert tok(" Paris")["input_ids"] == [6342]
    assert tok.decode([15496, 11, 995, 0]) == "Hello, world!"


def test_vocabulary_and_special_tokens():
    tok = gpt2_tokenizer()
    assert len(tok) == 50257
    assert tok.eos_token_id == tok.bos_token_id == 50256
    assert tok.convert_ids_to_tokens(50256) == "<|endoftext|>"


def test_asset_files_match_their_recorded_checksums():
    source = (TOKENIZER_DIR / "SOURCE.md").read_text()
    recorded = dict(re.findall(r"^- (\S+)\s+([0-9a-f]{64})$", source, flags=re.M))
    assert set(recorded) == {"encoder.json", "vocab.bpe"}
    for name, digest in recorded.items():
        assert hashlib.sha256((TOKENIZER_DIR / name).read_bytes()).hexdigest() == digest, name


def test_stand_in_uses_the_same_tokenizer(small_stand_in):
    text = "When Mary and John went to the store, John gave a drink to"
    ours = gpt2_tokenizer()(text)["input_ids"]
    assert small_stand_in.to_tokens(text, prepend_bos=False)[0].tolist() == ours
    assert small_stand_in.to_tokens(text)[0, 0].item() == 50256  # BOS by default
