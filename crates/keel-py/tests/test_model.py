"""keel.model.import_gguf on the real SmolLM2-135M-Instruct GGUF (from KEEL_ASSETS), checked
against the Rust test's golden numbers and loaded by transformers."""

import json

import pytest

import keel

from conftest import assets_dir, require_file


def test_import_gguf_smollm2_matches_the_rust_golden_values_and_loads_in_transformers(tmp_path):
    gguf = require_file(assets_dir() / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    out = tmp_path / "smollm2"
    report = keel.model.import_gguf(gguf, out)
    # crates/keel-model/tests/io_smollm2.rs
    assert report["architecture"] == "llama"
    assert report["n_parameters"] == 134_515_008
    assert report["source_dtypes"]["Q4_1"] == 210 and report["source_dtypes"]["Q8_0"] == 1
    assert report["vocab_size"] == 49152
    assert report["tied_embeddings"] and report["has_chat_template"]
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_key_value_heads"]) == (576, 30, 3)

    # The directory is a Hugging Face model: transformers loads it and greedily answers the
    # question the Rust test asks.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_import_gguf_errors_are_model_errors(tmp_path):
    with pytest.raises(keel.ModelError, match="is not a file"):
        keel.model.import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(keel.ModelError) as e:
        keel.model.import_gguf(junk, tmp_path / "out")
    assert "junk.gguf" in str(e.value)
