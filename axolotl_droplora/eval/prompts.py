"""The prompt templates, in one place: the papers' Alpaca template (training and commonsense/code
evaluation), MetaMath's math evaluation prompt, and the bare preamble the tokenizer is built on."""

_ALPACA_HEAD = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n"
)
ALPACA = _ALPACA_HEAD + "{instruction}\n\n### Response:\n"
MATH_PROMPT = _ALPACA_HEAD + "{instruction}\n\n### Response: Let's think step by step."  # MetaMath's evaluation prompt
ALPACA_PREAMBLE = _ALPACA_HEAD + "\n### Response:\n"  # the template's fixed words, with no instruction
