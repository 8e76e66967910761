"""`axolotl droplora explain RECIPE.yml`: what a shared recipe will train, in plain words, offline.

The recipe is validated with Axolotl's own schema, merged with the keys of the plugins it lists
(as `axolotl train` does before loading anything), and its top-level keys are checked against
that schema, since Axolotl ignores keys it does not know. Nothing is downloaded: a base model that
is not a local folder is reported. Then it says what the run trains (adapter, variant, rank
dropout and SVD init with defaults filled in, how saves are written and served), and, where it is
close to a cell of the paper recipes (recipes/paper.py), which hyperparameters depart from the
paper's.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import asdict
from pathlib import Path

import yaml

from ..args import SEQUENCE_MASK_WITH_PACKING
from ..method.lora_layers import scaling
from ..model_card import Method, ServingFacts, serving_facts, vllm_lines
from . import paper as table

# not hyperparameters: where things go, how they are logged and saved, how the work is spread
NOT_HYPERPARAMETERS = {
    "output_dir",
    "dataset_prepared_path",
    "datasets",
    "deepspeed",
    "fsdp",
    "fsdp_config",
    "plugins",
    "logging_steps",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "save_only_model",
    "seed",
    "attn_implementation",
    "flash_attention",
    "sdp_attention",
    "gradient_checkpointing",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "batch_size",
    "base_model",
    "strict",
    "resume_from_checkpoint",
    "auto_resume_from_checkpoints",
    "val_set_size",
    "eval_steps",
    "evals_per_epoch",
    "saves_per_epoch",
    "dataloader_num_workers",
    "special_tokens",
}
NOT_HYPERPARAMETER_PREFIXES = ("wandb_", "mlflow_", "comet_", "hub_", "tokenizer_", "dataset_", "eval_")
# filled in by _effective: a departure even when neither recipe writes the key
_PLUGIN_DEFAULTED = ("droplora_rank_dropout", "droplora_mask_mode", "droplora_rescale", "svd_init_save_base")
# when a recipe is this far from every cell it is not a paper recipe
NEAR_ENOUGH = 6


class RecipeError(ValueError):
    """An invalid recipe; `problems` is a list of (key, message), key None when it is the whole recipe."""

    def __init__(self, problems: list[tuple[str | None, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{key}: {message}" if key else message for key, message in problems))


def validate(raw: dict):
    """Axolotl's validated config of `raw`, or RecipeError naming each bad key."""
    from axolotl.integrations.config import merge_input_args
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault
    from pydantic import ValidationError

    problems = []
    try:
        prepare_plugins(DictDefault(copy.deepcopy(raw)))
        cfg = validate_config(DictDefault(copy.deepcopy(raw)))
    except ValidationError as err:
        cfg = None
        for error in err.errors():
            key = ".".join(str(part) for part in error["loc"]) or None
            problems.append((key, error["msg"].removeprefix("Value error, ")))
    except (ValueError, ImportError, TypeError, KeyError) as err:  # a plugin not found, a validator's own error
        cfg = None
        problems.append((None, str(err)))
    _, schema = merge_input_args()
    known = set(schema.model_fields) | {field.alias for field in schema.model_fields.values() if field.alias}
    for key in sorted(set(raw) - known):
        if any(f"`{key}`" in message for _, message in problems):
            continue  # a plugin's validator already named it
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
        hint = f"did you mean `{close[0]}`?" if close else "no such key in Axolotl's schema or the listed plugins'"
        if key.startswith(("droplora_", "svd_init_")) and not raw.get("plugins"):
            hint = "this is a DropLoRA key: add `plugins: [axolotl_droplora.DropLoRAPlugin]`"
        problems.append((key, f"unknown key: {hint}; Axolotl would ignore it and train without it"))
    if problems:
        raise RecipeError(problems)
    return cfg


def explain(recipe: str | Path) -> dict:
    """Everything `explain` prints, as a dict (the --json output)."""
    recipe = Path(recipe)
    try:
        raw = yaml.safe_load(recipe.read_text())
    except yaml.YAMLError as err:
        raise RecipeError([(None, f"not valid YAML: {err}")]) from None
    if not isinstance(raw, dict):
        raise RecipeError([(None, "not an Axolotl recipe: the YAML is not a mapping of keys")])
    cfg = validate(raw)
    method = Method.from_recipe(cfg)
    base = str(cfg.base_model)
    local = Path(base).expanduser().is_dir()
    r, alpha = cfg.lora_r, cfg.lora_alpha
    rslora = bool(cfg.peft_use_rslora)
    saved = _saved_config(cfg, method)
    facts = serving_facts(saved) if saved else None
    per_step = (cfg.micro_batch_size or 1) * (cfg.gradient_accumulation_steps or 1)
    report = {
        "recipe": str(recipe),
        "valid": True,
        "base_model": {
            "name": base,
            "local": local,
            "note": "a local folder"
            if local
            else "not a local folder: Axolotl downloads it from the Hugging Face Hub when training "
            "starts (explain does not fetch it)",
        },
        "adapter": cfg.adapter,
        "variants": _variants(cfg, method),
        "method": asdict(method) if method else None,
        "lora": None
        if not cfg.adapter
        else {
            "r": r,
            "lora_alpha": alpha,
            "scaling_rule": "alpha/sqrt(r)" if rslora else "alpha/r",
            "scaling": scaling(alpha, r, rslora) if r and alpha else None,
            "lora_dropout": cfg.lora_dropout or 0.0,
            "targets": "all linear layers" if cfg.lora_target_linear else list(cfg.lora_target_modules or []),
        },
        "saved": None
        if facts is None
        else {
            "rank": facts.saved_rank,
            "converted": bool(method and method.converted),
            "vllm_max_lora_rank": facts.max_lora_rank,
            "vllm_refusals": facts.refusals,
        },
        "batch": {
            "micro_batch_size": cfg.micro_batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "per_gpu_step": per_step,
            "note": f"{cfg.micro_batch_size} × {cfg.gradient_accumulation_steps} = {per_step} sequences per "
            f"optimizer step on each GPU; the effective batch is {per_step} × the number of "
            f"GPUs (WORLD_SIZE): {', '.join(f'{per_step * n} on {n}' for n in (1, 4, 8))}",
        },
        "epochs": cfg.num_epochs,
        "max_steps": cfg.max_steps,
        "learning_rate": cfg.learning_rate,
        "paper_cell": paper_cell(raw, cfg),
        "warnings": _warnings(cfg, method),
    }
    return report


def _variants(cfg, method: Method | None) -> list[str]:
    variants = []
    if method and method.rank_dropout is not None:
        variants.append("DropLoRA")
    if method and method.init:
        variants.append(method.init_name)
    if cfg.peft_use_dora:
        variants.append("DoRA")
    if cfg.peft_use_rslora:
        variants.append("rsLoRA")
    if cfg.load_in_4bit:
        variants.append("QLoRA (4-bit base)")
    return variants


def _saved_config(cfg, method: Method | None) -> dict | None:
    """adapter_config.json as the run will save it (what vLLM reads)."""
    from ..method.conversion import doubled_rank_config

    if not cfg.adapter or not cfg.lora_r:
        return None
    init = cfg.peft_init_lora_weights
    config = {
        "r": cfg.lora_r,
        "lora_alpha": cfg.lora_alpha or cfg.lora_r,
        "use_dora": bool(cfg.peft_use_dora),
        "use_rslora": bool(cfg.peft_use_rslora),
        # the plugin builds MiLoRA from a standard LoRA config; PEFT keeps PiSSA's string
        "init_lora_weights": True if init in (None, "milora") else init,
    }
    return doubled_rank_config(config) if method and method.converted else config


def _warnings(cfg, method: Method | None) -> list[str]:
    warnings = []
    if method and method.init and method.init_name == "PiSSA" and (cfg.lora_dropout or 0) > 0:
        warnings.append(
            f"PiSSA with lora_dropout {cfg.lora_dropout}: the input dropout also hits the principal components "
            f"moved into the adapter. Measured in this project (reports/study-cpu, SmolLM2-135M-Instruct, one "
            f"batch of 8 at step 0): train-mode loss 1.92–3.35 over three forward passes with lora_dropout "
            f"0.05, against 1.78 with 0. PiSSA's own paper trains with lora_dropout 0."
        )
    if method and method.rank_dropout is not None and method.mask_mode == "sequence" and cfg.sample_packing:
        warnings.append(SEQUENCE_MASK_WITH_PACKING)
    if method and method.init and not method.converted and method.init_name == "PiSSA":
        warnings.append(
            f"svd_init_save_base: residual: every adapter is saved as trained, with init_lora_weights "
            f"{method.init!r}: PEFT rebuilds the residual base W_p from {cfg.base_model} as it loads it; "
            f"vLLM refuses it"
        )
    elif method and method.init and not method.converted:
        warnings.append(
            f"svd_init_save_base: residual: every adapter is saved as trained, valid ONLY on the "
            f"residual base W_p, not on {cfg.base_model}"
        )
    return warnings


def paper_cell(raw: dict, cfg) -> dict | None:
    """The nearest paper cell and every hyperparameter of the recipe that departs from it."""
    cells = {
        (task, model, method): table.recipe(task, model, method)
        for task in table.TASKS
        for model in table.MODELS
        for method in table.METHODS
    }
    # pick the cell on the raw keys (cheap), then compare the validated configs (defaults filled)
    nearest = min(
        cells,
        key=lambda cell: (
            len(_departures(raw, cells[cell], raw, cells[cell])),
            raw.get("base_model") != cells[cell]["base_model"],
        ),
    )
    cell = cells[nearest]
    departures = _departures(raw, cell, cfg, validate(cell))
    if raw.get("base_model") != cell["base_model"]:
        departures.insert(0, {"key": "base_model", "recipe": raw.get("base_model"), "paper": cell["base_model"]})
    per_step = (cfg.micro_batch_size or 1) * (cfg.gradient_accumulation_steps or 1)
    paper_batch = table.GPUS * table.MICRO_BATCH * table.BATCH_ARITHMETIC[table.GPUS][1]
    if paper_batch % per_step:  # any GPU count that reaches the paper's global batch matches it
        departures.append(
            {
                "key": "global batch",
                "recipe": f"{per_step} per GPU step (micro_batch_size × "
                f"gradient_accumulation_steps): no GPU count gives {paper_batch}",
                "paper": paper_batch,
            }
        )
    task, model, method = nearest
    return {
        "paper_global_batch": paper_batch,
        "gpus_for_paper_batch": None if paper_batch % per_step else paper_batch // per_step,
        "name": f"{task}-{model}-{method}",
        "task": task,
        "model": table.MODELS[model],
        "method": method,
        "paper_result": table.PAPER.get((task, model), {}).get(method, "see the paper"),
        "metric": table.TASKS[task]["metric"],
        "close": len(departures) <= NEAR_ENOUGH,
        "departures": departures,
    }


def _is_hyperparameter(key: str) -> bool:
    return key not in NOT_HYPERPARAMETERS and not key.startswith(NOT_HYPERPARAMETER_PREFIXES)


def _effective(cfg) -> dict:
    """The config with the plugin's defaults filled in (the schema leaves them unset)."""
    method = Method.from_recipe(cfg)
    filled = dict(cfg)
    if method and method.rank_dropout is not None:
        filled.update(
            droplora_rank_dropout=method.rank_dropout,
            droplora_mask_mode=method.mask_mode,
            droplora_rescale=method.rescale,
        )
    if method and method.init:
        filled["svd_init_save_base"] = method.save_base
    return filled


def _departures(raw: dict, cell: dict, cfg, cell_cfg) -> list[dict]:
    departures = []
    cfg, cell_cfg = _effective(cfg), _effective(cell_cfg)
    for key in sorted(k for k in {*raw, *cell, *_PLUGIN_DEFAULTED} if _is_hyperparameter(k)):
        ours, theirs = cfg.get(key), cell_cfg.get(key)
        if not _same(ours, theirs):
            departures.append({"key": key, "recipe": ours, "paper": theirs})
    formats = [d.get("type") if isinstance(d, dict) else None for d in raw.get("datasets") or []]
    paper_formats = [d.get("type") for d in cell["datasets"]]
    if formats != paper_formats:
        departures.append({"key": "datasets[].type", "recipe": formats, "paper": paper_formats})
    return departures


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple, set)) and isinstance(b, (list, tuple, set)):
        return sorted(map(str, a)) == sorted(map(str, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= 1e-12 * max(abs(a), abs(b), 1)
    return _plain(a) == _plain(b)


def _plain(value):
    return getattr(value, "value", value)  # Axolotl's enums (optimizer, lr_scheduler) dump as enums


def render(report: dict) -> str:
    """The report in plain words."""
    lines = [f"{report['recipe']}: valid (Axolotl's schema and the plugins' keys)"]
    base = report["base_model"]
    lines.append(f"base model: {base['name']} ({base['note']})")
    method, lora = report["method"], report["lora"]
    adapter = report["adapter"] or "none (full fine-tune)"
    lines.append(f"adapter: {adapter}" + (f", variant: {' + '.join(report['variants'])}" if report["variants"] else ""))
    if method and method["rank_dropout"] is not None:
        default = {
            key: " (default)" if key in method["defaulted"] else ""
            for key in ("droplora_rank_dropout", "droplora_mask_mode", "droplora_rescale")
        }
        lines.append(
            f"rank dropout: p = {method['rank_dropout']}{default['droplora_rank_dropout']}, mask "
            f"{method['mask_mode']}{default['droplora_mask_mode']}, rescale "
            f"{str(method['rescale']).lower()}{default['droplora_rescale']}"
        )
    if method and method["init"]:
        name = Method(init=method["init"]).init_name
        default = " (default)" if "svd_init_save_base" in method["defaulted"] else ""
        if report["saved"]["converted"]:
            lines.append(
                f"{name} init ({method['init']}): saves converted for the original base "
                f"(svd_init_save_base: original{default}): rank {report['saved']['rank']} = "
                f"2 × {lora['r']}"
            )
        else:
            lines.append(
                f"{name} init ({method['init']}): saved as trained (svd_init_save_base: residual), "
                + (
                    "for the residual base W_p, which PEFT rebuilds as it loads it"
                    if name == "PiSSA"
                    else "valid only on the residual base W_p"
                )
            )
    if lora:
        targets = lora["targets"] if isinstance(lora["targets"], str) else ", ".join(lora["targets"])
        lines.append(
            f"LoRA: r = {lora['r']}, lora_alpha = {lora['lora_alpha']}, scaling {lora['scaling_rule']} = "
            f"{lora['scaling']:g}, lora_dropout = {lora['lora_dropout']}, targets: {targets}"
        )
    lines.append(f"batch: {report['batch']['note']}")
    length = (
        f"max_steps {report['max_steps']} (overrides num_epochs)"
        if report["max_steps"]
        else f"{report['epochs']} epoch(s)"
    )
    lines.append(f"training: {length}, learning rate {report['learning_rate']}")
    if report["saved"]:
        facts = report["saved"]
        lines += [
            f"serving: {line}"
            for line in vllm_lines(ServingFacts(facts["rank"], facts["vllm_max_lora_rank"], facts["vllm_refusals"]))
        ]
    cell = report["paper_cell"]
    if cell and not cell["close"]:
        lines.append(
            f"paper cell: none close (the nearest, {cell['name']}, differs in "
            f"{len(cell['departures'])} hyperparameters)"
        )
    elif cell:
        lines.append(
            f"paper cell: {cell['name']} ({cell['method']} on {cell['model']}, {cell['task']}; paper: "
            f"{cell['paper_result']} {cell['metric']})"
        )
        if cell["gpus_for_paper_batch"]:
            lines.append(
                f"  the paper's global batch {cell['paper_global_batch']} is reached on "
                f"{cell['gpus_for_paper_batch']} GPU(s) with this recipe's micro-batch and accumulation"
            )
        if not cell["departures"]:
            lines.append("  no hyperparameter departs from the paper's")
        for departure in cell["departures"]:
            lines.append(
                f"  departs: {departure['key']} = {_shown(departure['recipe'])} (paper: {_shown(departure['paper'])})"
            )
    lines += [f"warning: {warning}" for warning in report["warnings"]]
    return "\n".join(lines)


def _shown(value) -> str:
    value = _plain(value)
    return "unset" if value is None else str(value)
