"""Answer extraction and scoring as the papers' public evaluation code does it.

- Commonsense (LLM-Adapters' protocol, used by DoRA, MiLoRA and DropLoRA): the text after
  `### Response:`, and the first match of the set's answer pattern; accuracy.
- GSM8K (MetaMath's protocol): the first number after the last `The answer is: `, with commas,
  signs, decimals and fractions; rounded to an integer as MetaMath does, compared as numbers.
- MATH (MetaMath's protocol, Hendrycks' normalisation): the text after the last
  `The answer is: `, normalised (\\frac, \\sqrt, units, spaces, …) and compared as strings.
- Code: the first Python block of the response, cut where the function ends, for HumanEval /
  MBPP executors.
"""

from __future__ import annotations

import re
from fractions import Fraction

RESPONSE_MARK = "### Response:"
COMMONSENSE_PATTERNS = {
    "boolq": r"true|false",
    "piqa": r"solution1|solution2",
    "social_i_qa": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Challenge": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Easy": r"answer1|answer2|answer3|answer4|answer5",
    "openbookqa": r"answer1|answer2|answer3|answer4|answer5",
    "hellaswag": r"ending1|ending2|ending3|ending4",
    "winogrande": r"option1|option2",
}
ANSWER_MARK = "The answer is: "


def response_text(generation: str) -> str:
    """What the model wrote after `### Response:` (all of it if the mark is absent)."""
    return generation.split(RESPONSE_MARK, 1)[-1].strip()


def commonsense_answer(set_name: str, generation: str) -> str:
    """The first match of the set's answer pattern in the response, or "" if there is none."""
    if set_name not in COMMONSENSE_PATTERNS:
        raise ValueError(f"unknown commonsense set {set_name!r}; known: {', '.join(COMMONSENSE_PATTERNS)}")
    found = re.search(COMMONSENSE_PATTERNS[set_name], response_text(generation))
    return found.group(0) if found else ""


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:/\d+)?")


def gsm8k_number(generation: str) -> float | None:
    """The first number after the last `The answer is: `, or None."""
    if ANSWER_MARK not in generation:
        return None
    tail = generation.rsplit(ANSWER_MARK, 1)[1].strip()
    for match in _NUMBER.finditer(tail):
        text = match.group(0).replace(",", "")
        if not re.search(r"\d", text):
            continue
        try:
            return float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def gsm8k_label(answer: str) -> float:
    """A GSM8K label: a number, or the original dataset's solution ending in `#### N`."""
    return float(answer.split("####")[-1].strip().replace(",", ""))


def gsm8k_correct(generation: str, answer: str) -> bool:
    predicted = gsm8k_number(generation)
    return predicted is not None and round(predicted) == round(gsm8k_label(answer))


def math_answer(generation: str) -> str | None:
    if ANSWER_MARK not in generation:
        return None
    return generation.rsplit(ANSWER_MARK, 1)[1].strip()


def math_correct(generation: str, answer: str) -> bool:
    predicted = math_answer(generation)
    return predicted is not None and normalize_math(predicted) == normalize_math(answer)


def normalize_math(text: str) -> str:
    """Hendrycks' MATH normalisation, as MetaMath applies it before comparing answers."""
    text = text.strip().rstrip(".").replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    text = re.sub(r"\\text\{\s*[a-zA-Z ]*\}$", "", text).strip()  # trailing units
    text = text.replace("\\%", "").replace("%", "")
    text = re.sub(r"(^|[^\d])\.(\d)", r"\g<1>0.\2", text)  # .5 -> 0.5
    if text.count("=") == 1 and len(text.split("=")[0].strip()) <= 2:
        text = text.split("=")[1]  # "x = 5" -> "5"
    text = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", text)
    text = text.replace(" ", "")
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    simple_fraction = re.fullmatch(r"(-?\d+)/(\d+)", text)
    if simple_fraction:
        text = f"\\frac{{{simple_fraction.group(1)}}}{{{simple_fraction.group(2)}}}"
    return text


_CODE_BLOCK = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.S)
_END_OF_CODE = re.compile(r"\n(?:if __name__|# Test|# Example|print\(|assert )")


def extract_code(generation: str) -> str:
    """The first Python block of the response (the whole response if there is none), cut at
    the usual end markers (a `__main__` guard, example usage, prints, asserts)."""
    response = response_text(generation)
    block = _CODE_BLOCK.search(response)
    code = block.group(1) if block else response
    cut = _END_OF_CODE.search(code)
    return (code[: cut.start()] if cut else code).rstrip() + "\n"
