"""What an adapter trained with this package says about itself: model card tags, a section, vLLM facts.

Every adapter a run writes (each checkpoint, the final save, what `hub_model_id` pushes) carries
the tags `droplora` / `milora` / `pissa` and a section stating the method with its effective
settings (defaults filled in), the saved rank, how to load and merge it with vanilla PEFT, and
how to serve it with vLLM. The card goes through the mechanisms that write README.md anyway
rather than a rewrite behind them:

- the tags through `add_model_tags` on the base model, which PEFT's card
  (`create_or_update_model_card`, called on every `save_pretrained`) and the Trainer's
  `push_to_hub` read;
- the section through `create_or_update_model_card` of the PEFT model being trained, extended on
  that one model object (PEFT has no hook for text), and through the trainer's `create_model_card`
  (Axolotl calls it after the final save, and `push_to_hub` calls it before uploading; TRL's
  trainers write their own card there without calling PEFT's).

`serving_facts` reads the same facts off any adapter_config.json, for `axolotl droplora
check-adapter`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .method.conversion import doubled_rank_config
from .method.lora_layers import scaling, scaling_rule

DROPLORA_PAPER = "https://arxiv.org/abs/2508.17337"
MILORA_PAPER = "https://arxiv.org/abs/2406.09044"
PISSA_PAPER = "https://arxiv.org/abs/2404.02948"
# What vLLM checks when it loads an adapter, as vLLM 0.32 does it (vllm/config/lora.py,
# vllm/lora/peft_helper.py) and as scripts/check-vllm.sh ran it (reports/vllm-cpu/report.md).
# The values --max-lora-rank accepts; 16 when it is not given:
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16
# init_lora_weights strings vLLM serves: inits that only set the starting A and B, so the saved
# adapter is an ordinary LoRA. Any other string (pissa, pissa_niter_N, olora, corda, loftq, ...)
# it refuses, because PEFT changes the base weights when it loads such an adapter.
VLLM_SERVED_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
# modules_to_save vLLM serves (classification heads); anything else, e.g. embed_tokens, it refuses
VLLM_SERVED_MODULES_TO_SAVE = ("classifier", "score")
BEGIN, END = "<!-- axolotl-droplora: begin", "<!-- axolotl-droplora: end -->"
MASK_MEANINGS = {
    "element": "an independent draw for every token and rank channel (the authors' code)",
    "sequence": "one mask per sequence, shared by its tokens",
    "batch": "one mask per forward pass, shared by the micro-batch (the paper's Eq. 2)",
}


@dataclass(frozen=True)
class Method:
    """What a run trains with, defaults filled in; `defaulted` names the settings left to defaults."""

    rank_dropout: float | None = None  # None: no rank dropout
    mask_mode: str = "element"
    rescale: bool = True
    init: str | None = None  # "milora", "pissa", "pissa_niter_N"; None for LoRA's own
    save_base: str = "original"
    defaulted: tuple[str, ...] = ()
    exact_init: bool = False  # svd_init_exact: W kept, −s·B0·A0 in the forward (exact_init.py)

    @classmethod
    def from_recipe(cls, cfg) -> Method | None:
        """The method an Axolotl recipe (dict or DictDefault) asks for; None for a plain recipe."""
        from .args import DEFAULT_RANK_DROPOUT, asks_for_rank_dropout, svd_init  # pydantic: not for TRL users

        init = svd_init(cfg)
        rank_dropout = asks_for_rank_dropout(cfg)
        if not rank_dropout and not init:
            return None
        keys = (
            {"droplora_rank_dropout": DEFAULT_RANK_DROPOUT, "droplora_mask_mode": "element", "droplora_rescale": True}
            if rank_dropout
            else {}
        )
        if init:
            keys["svd_init_save_base"] = "original"
        values = {key: default if cfg.get(key) is None else cfg.get(key) for key, default in keys.items()}
        return cls(
            rank_dropout=values.get("droplora_rank_dropout"),
            mask_mode=values.get("droplora_mask_mode", "element"),
            rescale=values.get("droplora_rescale", True),
            init=init,
            save_base=values.get("svd_init_save_base", "original"),
            defaulted=tuple(key for key in keys if cfg.get(key) is None),
            exact_init=bool(init and cfg.get("svd_init_exact")),
        )

    @property
    def init_name(self) -> str | None:
        return None if self.init is None else "PiSSA" if self.init.startswith("pissa") else "MiLoRA"

    @property
    def converted(self) -> bool:
        """Saves rewritten as a rank-2r LoRA for the original base."""
        return self.init is not None and self.save_base == "original"

    def tags(self) -> list[str]:
        return ([] if self.rank_dropout is None else ["droplora"]) + (
            [] if self.init is None else [self.init_name.lower()]
        )


@dataclass
class ServingFacts:
    """What vLLM needs to serve an adapter, from its adapter_config.json (see VLLM_LORA_RANKS)."""

    saved_rank: int
    max_lora_rank: int | None  # the --max-lora-rank to pass; None: larger than vLLM allows
    refusals: list[str] = field(default_factory=list)  # why vLLM would refuse it as it is


def serving_facts(adapter_config: dict) -> ServingFacts:
    ranks = [adapter_config["r"], *(adapter_config.get("rank_pattern") or {}).values()]
    saved = max(ranks)
    needed = next((rank for rank in VLLM_LORA_RANKS if rank >= saved), None)
    refusals = []
    if needed is None:
        refusals.append(
            f"rank {saved} is above vLLM's largest --max-lora-rank "
            f"({VLLM_LORA_RANKS[-1]}): merge the adapter and serve the merged model"
        )
    if adapter_config.get("use_dora"):
        refusals.append(
            "use_dora: vLLM refuses DoRA adapters: merge the adapter (`axolotl merge-lora` "
            "or PEFT's merge_and_unload) and serve the merged model"
        )
    if adapter_config.get("lora_bias"):
        refusals.append("lora_bias: vLLM refuses LoRA biases: merge the adapter and serve the merged model")
    extra_modules = [m for m in adapter_config.get("modules_to_save") or [] if m not in VLLM_SERVED_MODULES_TO_SAVE]
    if extra_modules:
        refusals.append(
            f"modules_to_save {extra_modules}: vLLM serves only LoRA weights (and classifier/score "
            f"heads): merge the adapter and serve the merged model"
        )
    if changes_base_at_load(adapter_config):
        refusals.append(
            f"init_lora_weights {adapter_config['init_lora_weights']!r}: vLLM refuses inits that change "
            f"the base weights when PEFT loads the adapter (PiSSA, OLoRA, CorDA, LoftQ): merge it with "
            f"PEFT and serve the merged model, or save it for the original base (svd_init_save_base: "
            f"original)"
        )
    return ServingFacts(saved, needed, refusals)


def changes_base_at_load(adapter_config: dict) -> bool:
    """True if PEFT changes the base weights when it loads this adapter (its init_lora_weights is
    PiSSA, OLoRA, CorDA, LoftQ...: every init string vLLM does not serve)."""
    init = adapter_config.get("init_lora_weights", True)
    return isinstance(init, str) and init.lower() not in VLLM_SERVED_INITS


def adapter_kind(adapter_config: dict) -> str:
    """What kind of PEFT LoRA an adapter is, in words: "plain PEFT LoRA" only where PEFT, vLLM and
    merge-lora all load it as W + s·B·A on the base it names."""
    extras = []
    if adapter_config.get("use_dora"):
        extras.append("DoRA (use_dora: a magnitude vector per layer)")
    if changes_base_at_load(adapter_config):
        extras.append(
            f"init_lora_weights {adapter_config['init_lora_weights']!r} (PEFT changes the base weights as it loads it)"
        )
    if adapter_config.get("lora_bias"):
        extras.append("lora_bias")
    if adapter_config.get("modules_to_save"):
        extras.append(f"modules_to_save {adapter_config['modules_to_save']}")
    return "PEFT LoRA with " + ", ".join(extras) if extras else "plain PEFT LoRA"


def vllm_lines(facts: ServingFacts) -> list[str]:
    """The serving facts in words, as the card and check-adapter print them."""
    lines = []
    if facts.max_lora_rank is not None:
        default = (
            f"its default {VLLM_DEFAULT_MAX_LORA_RANK} is enough"
            if facts.max_lora_rank <= VLLM_DEFAULT_MAX_LORA_RANK
            else f"its default is {VLLM_DEFAULT_MAX_LORA_RANK}"
        )
        lines.append(
            f"saved rank {facts.saved_rank}: vLLM needs --max-lora-rank {facts.max_lora_rank} or more "
            f"(one of {', '.join(map(str, VLLM_LORA_RANKS))}; {default})"
        )
    return lines + [f"vLLM refuses it as it is: {refusal}" for refusal in facts.refusals]


@dataclass(frozen=True)
class Card:
    """The card of one run: the method and the adapter as it trains (rank r, before conversion)."""

    method: Method
    trained: dict  # the PEFT LoRA config of the training adapter, as a dict
    base_model: str
    quantized: bool = False

    @classmethod
    def of(cls, method: Method, model) -> Card:
        """From the PEFT model, before training (the adapter's r is the trained r)."""
        base = model.get_base_model()
        config = json.loads(json.dumps(model.peft_config["default"].to_dict(), default=_jsonable))
        return cls(
            method,
            config,
            str(base.config.name_or_path or "BASE_MODEL"),
            bool(getattr(base, "is_quantized", False) or getattr(base.config, "quantization_config", None)),
        )

    @property
    def saved(self) -> dict:
        """adapter_config.json as every save of this run writes it."""
        return doubled_rank_config(self.trained) if self.method.converted else self.trained

    def summary(self) -> dict:
        facts = serving_facts(self.saved)
        return {
            "tags": self.method.tags(),
            **asdict(self.method),
            "trained_rank": self.trained["r"],
            "saved_rank": facts.saved_rank,
            "vllm_max_lora_rank": facts.max_lora_rank,
            "vllm_refusals": facts.refusals,
            "base_model": self.base_model,
            "quantized": self.quantized,
        }

    def section(self) -> str:
        return "\n".join([f"{BEGIN} {json.dumps(self.summary())} -->", *self._lines(), END])

    def _lines(self) -> list[str]:
        method, trained, saved = self.method, self.trained, self.saved
        names = (["DropLoRA"] if method.rank_dropout is not None else []) + ([method.init_name] if method.init else [])
        default = {
            key: " (default)" if key in method.defaulted else ""
            for key in ("droplora_rank_dropout", "droplora_mask_mode", "droplora_rescale", "svd_init_save_base")
        }
        lines = [f"## Training method: {' + '.join(names)} (axolotl-droplora)", ""]
        if method.rank_dropout is not None:
            lines += [
                f"- **DropLoRA** ([arXiv 2508.17337]({DROPLORA_PAPER})): rank dropout between LoRA's A and B, "
                f"h = W0·x + s·B·(M ⊙ A·x), a new mask M at every training step.",
                f"  - p = {method.rank_dropout}{default['droplora_rank_dropout']}: the chance that a rank "
                f"channel is dropped in a step",
                f"  - mask mode `{method.mask_mode}`{default['droplora_mask_mode']}: {MASK_MEANINGS[method.mask_mode]}",
                f"  - rescale {str(method.rescale).lower()}{default['droplora_rescale']}: kept channels ×"
                + (
                    " 1/(1−p) in training"
                    if method.rescale
                    else " 1 (the train-time update is (1−p) times smaller in expectation)"
                ),
                "  - training only: at inference this is an ordinary LoRA, and the saved adapter is a plain "
                "PEFT LoRA (`peft_type: LORA`)",
            ]
        if method.init:
            milora = method.init_name == "MiLoRA"
            paper = f"[arXiv 2406.09044]({MILORA_PAPER})" if milora else f"[arXiv 2404.02948]({PISSA_PAPER})"
            which = "smallest" if milora else "largest"
            lines.append(
                f"- **{method.init_name}** ({paper}, `peft_init_lora_weights: {method.init}`): A and B "
                f"start from the r {which} singular triplets of each weight W; training ran on the "
                f"residual base W_p = W − s·B0·A0."
            )
            if method.exact_init:
                lines.append(
                    "  - exact (`svd_init_exact: true`): the base weights stayed W and the forward "
                    "subtracted s·B0·A0·x, so training started from the base model bit for bit"
                )
            if method.converted:
                lines.append(
                    f"  - saved for the original base (`svd_init_save_base: original`"
                    f"{default['svd_init_save_base'].replace(' (', ', the ').rstrip(')')}): "
                    f"A' = [A; A0], B' = [B, −B0], so **rank "
                    f"{saved['r']} = 2 × {trained['r']} after {method.init_name} conversion**, "
                    f"lora_alpha {_number(saved['lora_alpha'])} (same scaling)"
                )
            elif changes_base_at_load(saved):  # PiSSA: PEFT rebuilds W_p from the config's init
                lines.append(
                    f"  - **saved as trained** (`svd_init_save_base: residual`), for the residual base W_p: "
                    f"its config keeps `init_lora_weights: {saved['init_lora_weights']}`, so PEFT re-runs "
                    f"{method.init_name} on the base it loads it on and rebuilds W_p; on {self.base_model} "
                    f"that gives the trained model"
                    + (" (up to the run-to-run spread of the randomized SVD)" if "_niter_" in method.init else "")
                )
            else:
                lines.append(
                    f"  - **saved as trained** (`svd_init_save_base: residual`): valid ONLY on the "
                    f"residual base W_p, not on {self.base_model}; rebuild W_p before loading it"
                )
        rule = scaling_rule(trained.get("use_rslora", False))
        value = scaling(trained["lora_alpha"], trained["r"], trained.get("use_rslora", False))
        targets = trained.get("target_modules")
        targets = ", ".join(sorted(targets)) if isinstance(targets, list) else targets
        lines.append(
            f"- LoRA r = {trained['r']}, lora_alpha = {_number(trained['lora_alpha'])}, scaling "
            f"{rule} = {_number(value)}, lora_dropout = {trained.get('lora_dropout', 0.0)}, targets: "
            f"{targets}" + ("; DoRA (`use_dora`)" if trained.get("use_dora") else "")
        )
        lines.append(
            f"- saved adapter: rank {saved['r']}, on {self.base_model}"
            + (" quantized to 4 bits (QLoRA)" if self.quantized else "")
        )
        lines += [
            "",
            "### Load and merge (vanilla PEFT, no axolotl-droplora needed)",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{self.base_model}")',
            'model = PeftModel.from_pretrained(base, "path/to/this/adapter")  # folder or hub repo',
            "merged = model.merge_and_unload()  # or: axolotl merge-lora recipe.yml",
            "```",
        ]
        if self.quantized:
            lines += [
                "",
                "Trained on the 4-bit base: load it on the base quantized the same way (NF4) to get "
                "the trained model; merging into the full-precision base is close, not identical.",
            ]
        facts = serving_facts(saved)
        lines += ["", "### Serve with vLLM", ""]
        if facts.max_lora_rank is not None and not facts.refusals:
            lines += [
                "```bash",
                f"vllm serve {self.base_model} --enable-lora --max-lora-rank "
                f"{facts.max_lora_rank} --lora-modules adapter=path/to/this/adapter",
                "```",
                "",
            ]
        lines += [f"- {line}" for line in vllm_lines(facts)]
        if method.init and not method.converted and not changes_base_at_load(saved):
            lines.append(
                f"- on the original {self.base_model} vLLM loads it and gives wrong outputs (vLLM "
                f"has no residual base): serve the residual base W_p with it, or a merged model"
            )
        return lines


def _jsonable(value):
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)


def _number(value: float) -> str:
    return f"{value:g}"


def write_into(folder: str | Path, card: Card) -> None:
    """README.md in `folder` with the card's tags and section (replacing an older section)."""
    from huggingface_hub import ModelCard, ModelCardData

    path = Path(folder) / "README.md"
    model_card = ModelCard.load(path) if path.is_file() else ModelCard.from_template(ModelCardData())
    model_card.data.tags = sorted(set(model_card.data.tags or []) | set(card.method.tags()))
    text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n*", "", model_card.text, flags=re.S)
    lines = text.splitlines()
    # after the title and its first paragraph, before the first "## " section; at the end if none.
    # Headings only outside ``` blocks: the Axolotl card quotes the recipe, whose comments start "# "
    fenced, headings = False, []
    for i, line in enumerate(lines):
        fenced ^= line.lstrip().startswith("```")
        if not fenced and line.startswith("#"):
            headings.append((i, line.split(" ", 1)[0]))
    title = next((i for i, level in headings if level == "#"), -1)
    at = next((i for i, level in headings if i > title and level == "##"), len(lines))
    model_card.text = "\n".join(lines[:at] + [card.section(), ""] + lines[at:]) + "\n"
    model_card.save(path)


def read_summary(folder: str | Path) -> dict | None:
    """The summary a card written by `write_into` carries, or None."""
    path = Path(folder) / "README.md"
    found = re.search(re.escape(BEGIN) + r" (\{.*?\}) -->", path.read_text()) if path.is_file() else None
    return json.loads(found.group(1)) if found else None


def attach(model, card: Card) -> None:
    """Make every card PEFT writes for `model` (each save_pretrained) carry `card`."""
    base = model.get_base_model()
    if hasattr(base, "add_model_tags"):
        base.add_model_tags(card.method.tags())
    write_peft_card = model.create_or_update_model_card
    if getattr(write_peft_card, "droplora_card", None) is not None:
        write_peft_card = write_peft_card.peft_original

    def create_or_update_model_card(output_dir: str):
        write_peft_card(output_dir)
        write_into(output_dir, card)

    create_or_update_model_card.droplora_card, create_or_update_model_card.peft_original = card, write_peft_card
    model.create_or_update_model_card = create_or_update_model_card


def attach_to_trainer(trainer, card_of) -> None:
    """After the trainer's create_model_card (final save, push_to_hub), add the card `card_of()` gives."""
    write_trainer_card = trainer.create_model_card

    def create_model_card(*args, **kwargs):
        write_trainer_card(*args, **kwargs)
        card = card_of()
        if card is not None and trainer.is_world_process_zero():
            write_into(trainer.args.output_dir, card)

    trainer.create_model_card = create_model_card


def summary_lines(summary: dict) -> list[str]:
    """A card's summary in words, for check-adapter."""
    parts = []
    if summary["rank_dropout"] is not None:
        parts.append(
            f"DropLoRA p={summary['rank_dropout']} mask_mode={summary['mask_mode']} "
            f"rescale={str(summary['rescale']).lower()}"
        )
    method = Method(init=summary["init"], save_base=summary["save_base"])
    if method.init:
        parts.append(f"{method.init_name} ({summary['init']})")
    lines = [f"model card: trained with {' + '.join(parts)} on {summary['base_model']}"]
    if method.converted:
        lines.append(
            f"saved for the original base: rank {summary['saved_rank']} = 2 × {summary['trained_rank']} "
            f"after {method.init_name} conversion"
        )
    elif method.init_name == "PiSSA":
        lines.append(
            f"saved as trained (svd_init_save_base: residual), for the residual base W_p: PEFT re-runs "
            f"PiSSA as it loads it, rebuilding W_p from {summary['base_model']}"
        )
    elif method.init:
        lines.append(
            f"saved as trained (svd_init_save_base: residual): valid ONLY on the residual base W_p, "
            f"not on {summary['base_model']}; vLLM and PEFT on the original base give wrong outputs"
        )
    return lines
