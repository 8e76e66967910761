"""`axolotl droplora …` (and `python -m axolotl_droplora …`): this package's commands."""

from __future__ import annotations

from pathlib import Path

import click


@click.group(name="droplora")
def droplora():
    """DropLoRA / MiLoRA tools."""


@droplora.command("make-demo")
@click.argument("demo_dir", type=click.Path(file_okay=False, path_type=Path), default="demo")
def make_demo_command(demo_dir: Path):
    """Build the embedded demo (tiny Llama, arithmetic data, droplora.yml) in DEMO_DIR."""
    from .demo import make_demo

    recipe = make_demo(demo_dir)
    click.echo(f"wrote {recipe}\ntrain it with: axolotl train {recipe}")


@droplora.command("check-adapter")
@click.argument("adapter_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--base", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Also load the adapter on this base model with PEFT and run one forward.")
def check_adapter_command(adapter_dir: Path, base: Path | None):
    """Check ADAPTER_DIR is a plain PEFT LoRA adapter (what PEFT, vLLM and merge-lora load)."""
    import json
    import re

    from safetensors import safe_open

    config_file, weights_file = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    for needed in (config_file, weights_file):
        if not needed.is_file():
            raise click.ClickException(f"{needed} is missing: not a complete PEFT adapter")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        raise click.ClickException(f"peft_type is {config.get('peft_type')!r} in {config_file}, not 'LORA'")
    with safe_open(weights_file, "pt") as weights:
        names = list(weights.keys())
    unexpected = [n for n in names if not re.search(r"\.(lora_[AB]\.weight|lora_magnitude_vector)$", n)
                  and "modules_to_save" not in n]
    if unexpected:
        raise click.ClickException(f"{len(unexpected)} tensors are not PEFT LoRA weights, e.g. {unexpected[0]}")
    modules = sorted({n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in names if ".lora_A." in n})
    click.echo(f"{adapter_dir}: plain PEFT LoRA, r={config['r']}, lora_alpha={config['lora_alpha']}, "
               f"{sum('.lora_A.' in n for n in names)} LoRA layers on {', '.join(modules)}")
    if base is not None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir).eval()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[model.config.bos_token_id or 0, 1, 2]])).logits
        if not torch.isfinite(logits).all():
            raise click.ClickException(f"{adapter_dir} on {base} gives non-finite logits")
        click.echo(f"loads with PEFT on {base}; logits finite")
