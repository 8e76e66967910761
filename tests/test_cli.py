"""`axolotl droplora …` subcommands, found through the axolotl.cli_commands entry point (cli.py)."""

from __future__ import annotations

import json
import sys

from conftest import run_cli, tiny_lora_model


def test_axolotl_lists_and_runs_the_droplora_commands(tmp_path):
    listed = run_cli(["axolotl", "--help"], cwd=tmp_path)
    assert listed.returncode == 0 and "droplora" in listed.stdout

    made = run_cli(["axolotl", "droplora", "make-demo", str(tmp_path / "demo")], cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    assert f"train it with: axolotl train {tmp_path / 'demo' / 'droplora.yml'}" in made.stdout
    assert (tmp_path / "demo" / "model" / "model.safetensors").is_file()
    assert not (tmp_path / "demo" / "model.partial").exists()


def test_check_adapter_accepts_plain_lora_and_names_what_is_wrong(tmp_path):
    model = tiny_lora_model()
    model.save_pretrained(tmp_path / "adapter")
    model.base_model.model.config.save_pretrained(tmp_path / "adapter")  # harmless extra file
    ok = run_cli([sys.executable, "-m", "axolotl_droplora", "check-adapter", str(tmp_path / "adapter")], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (
        "plain PEFT LoRA, r=8, lora_alpha=16, 10 LoRA layers on down_proj, k_proj, q_proj, up_proj, v_proj" in ok.stdout
    )

    config_file = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "peft_type": "DROPLORA"}))
    bad = run_cli([sys.executable, "-m", "axolotl_droplora", "check-adapter", str(tmp_path / "adapter")], cwd=tmp_path)
    assert bad.returncode != 0 and "peft_type is 'DROPLORA'" in bad.stderr

    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    missing = run_cli(
        [sys.executable, "-m", "axolotl_droplora", "check-adapter", str(tmp_path / "adapter")], cwd=tmp_path
    )
    assert missing.returncode != 0 and "adapter_model.safetensors is missing" in missing.stderr
