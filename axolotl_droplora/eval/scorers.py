"""Answer extraction and scoring, reproducing the papers' evaluation code (`scoring="paper"`, the
default) or with its plain bugs fixed (`scoring="corrected"`). What each mode does, per task:

- Commonsense: DropLoRA's `utils/test_acc.py` (TayeeChang/DropLoRA@25fdf58), which scored the
  DropLoRA paper's own rows: the first match of the set's pattern in the generation (generation
  only, never the prompt). Corrected: the generation is cut where the model starts a new task
  (`### Instruction:` or `### Input:`) and answers must be whole words.
- GSM8K: MetaMath's `eval_gsm8k.py` (meta-math/MetaMath@fe667b1, identical in DropLoRA's
  test_acc.py): the first match of `[-+]?\\d*[.,/]?\\d+` after the last `The answer is: ` (one
  separator only: `1,234,567` reads 1234), fractions through the `fraction` 2.2.0 package's
  float arithmetic, rounded half to even, compared with the label. Corrected: whole numbers
  with thousands groups, exact fractions, no rounding.
- MATH: MetaMath's `eval_math.py` + `util.py` (same commit, identical in test_acc.py): the text
  after the last `The answer is: ` up to the first `.\\n`, one trailing dot dropped, Hendrycks'
  `strip_string`, and the raw strings compared where that normalisation raises. Corrected: a
  step that would raise is skipped and the others still apply.
- Code: DropLoRA's `utils/code_process.py`: from the first ```` ```python ```` fence to the next
  `\\n` + ```` ``` ````, cut at `if __name__ == "__main__":`, `# Example usage` and any `assert`
  substring, stripped. Corrected: any fence (```` ```py ````, ```` ```python3 ````, bare, CRLF),
  cuts only at top-level lines, the first line's indentation kept.

Where the reference would raise on a generation (and abort its whole run), `ScoringError` says
why; evaluate's `score()` turns it into a wrong example with an `error`. Functions taking a
`scoring` argument raise ValueError for any other mode.
"""

from __future__ import annotations

import re
from fractions import Fraction

SCORING_MODES = ("paper", "corrected")
ANSWER_MARK = "The answer is: "
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


class ScoringError(ValueError):
    """The reference code raises on this text; the example counts as wrong, for this reason."""


def check_mode(scoring: str) -> str:
    if scoring not in SCORING_MODES:
        raise ValueError(f"unknown scoring {scoring!r}; use one of: {', '.join(SCORING_MODES)}")
    return scoring


# --- commonsense -------------------------------------------------------------------------------

_NEW_TURN = re.compile(r"### (?:Instruction|Input):")


def commonsense_answer(set_name: str, generation: str, scoring: str = "paper") -> str:
    """The set's answer in the generation (without the prompt), or "" if there is none."""
    if set_name not in COMMONSENSE_PATTERNS:
        raise ValueError(f"unknown commonsense set {set_name!r}; known: {', '.join(COMMONSENSE_PATTERNS)}")
    pattern = COMMONSENSE_PATTERNS[set_name]
    if check_mode(scoring) == "corrected":
        # a run-on new task is not the model's answer: its instruction lists every option
        generation = _NEW_TURN.split(generation, 1)[0]
        pattern = rf"\b(?:{pattern})\b"
    found = re.search(pattern, generation)
    return found.group(0) if found else ""


# --- GSM8K -------------------------------------------------------------------------------------

_PAPER_NUMBER = re.compile(r"[-+]?\d*[.,/]?\d+")  # \d is Unicode here, as in the reference
_NUMBER = re.compile(r"(?<![\d.])([-+]?)((?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:/(\d+))?")


def gsm8k_number(generation: str, scoring: str = "paper") -> int | Fraction | None:
    """The number after the last `The answer is: `, or None: an int (rounded) in paper mode, the
    exact value in corrected mode. Raises ScoringError where MetaMath's code raises."""
    if ANSWER_MARK not in generation:
        return None
    tail = generation.split(ANSWER_MARK)[-1]
    if check_mode(scoring) == "corrected":
        found = _NUMBER.search(tail)
        try:
            value = Fraction(found.group(1) + found.group(2).replace(",", "")) if found else None
            return value / int(found.group(3)) if value is not None and found.group(3) else value
        except (ValueError, ZeroDivisionError):  # n/0, or more digits than int() reads
            return None
    found = _PAPER_NUMBER.search(tail)
    if not found:
        return None
    text = found.group(0).replace(",", "")
    try:
        if "/" not in text:
            value = float(text)
            return None if value == float("inf") else round(value)  # -inf is not caught there
        numerator, denominator = text.split("/")
        if not _parses_as_float(numerator):  # "", "+" or "-"
            return None
        if denominator == "0":
            return round(float(numerator))
        top, bottom = _fraction_package(numerator, denominator)
        return round(top / bottom)
    except (OverflowError, ZeroDivisionError, RecursionError) as err:
        raise ScoringError(
            f"MetaMath's GSM8K extraction raises {type(err).__name__} ({err}) on {found.group(0)[:40]!r}"
        ) from None


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _fraction_package(numerator: str, denominator: str) -> tuple[int, int]:
    """numerator/denominator as the `fraction` 2.2.0 package that MetaMath imports computes it:
    each side goes through float and its printed digits, and every product is reduced by a
    gcd and then divided in floating point, so large values lose digits."""

    def reduced(top: int, bottom: int) -> tuple[int, int]:
        divisor = _gcd_euclid(top, bottom)
        top, bottom = int(top / divisor), int(bottom / divisor)  # float division, as there
        if bottom == 0:
            raise ZeroDivisionError("Denominator cannot be 0")
        return top, bottom

    def from_text(text: str) -> tuple[int, int]:
        value = float(text)
        shown = str(value)
        places = len(shown) - shown.index(".") - 1 if "." in shown else len(shown)
        return reduced(int(round(value * 10**places)), 10**places)

    (a, b), (c, d) = from_text(numerator), from_text(denominator)
    if c == 0:
        raise ZeroDivisionError("Denominator cannot be 0")
    return reduced(*reduced(a * d, b * c))


def _gcd_euclid(a: int, b: int) -> int:
    # the package's recursive Euclid, signs included (Python's % follows the divisor's sign)
    depth = 0
    while b != 0:
        a, b = b, a % b
        depth += 1
        if depth > 950:  # the package recurses: Python's default limit stops it about here
            raise RecursionError("maximum recursion depth exceeded in the fraction package's gcd")
    return a


def gsm8k_label(answer) -> Fraction:
    """A GSM8K label: a number, or the original dataset's solution ending in `#### N`."""
    text = str(answer).split("####")[-1].strip().replace(",", "")
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ScoringError(
            f"GSM8K label {str(answer)[-40:]!r} is not a number (expected e.g. 42 or a solution ending '#### 42')"
        ) from None


def gsm8k_correct(generation: str, answer, scoring: str = "paper") -> bool:
    """Whether the generation's number equals the label (False where the reference raises)."""
    try:
        predicted = gsm8k_number(generation, scoring)
        label = gsm8k_label(answer)
    except ScoringError:
        return False
    return gsm8k_equal(predicted, label, scoring)


def gsm8k_equal(predicted: int | Fraction | None, label: Fraction, scoring: str = "paper") -> bool:
    """MetaMath compares as floats (the prediction is already rounded); corrected, exactly."""
    if predicted is None:
        return False
    if scoring == "corrected":
        return predicted == label
    try:
        return float(predicted) == float(label)
    except OverflowError:  # a label beyond float range: MetaMath raises there too
        return False


# --- MATH --------------------------------------------------------------------------------------


def math_answer(generation: str) -> str | None:
    """After the last `The answer is: `, up to the first `.\\n`, without one trailing dot."""
    if ANSWER_MARK not in generation:
        return None
    answer = generation.split(ANSWER_MARK)[-1].split(".\n")[0].strip()
    return answer[:-1].strip() if answer.endswith(".") else answer


def math_correct(generation: str, answer, scoring: str = "paper") -> bool:
    predicted = math_answer(generation)
    return predicted is not None and math_equivalent(predicted, str(answer), scoring)


def math_equivalent(predicted: str, label: str, scoring: str = "paper") -> bool:
    """Hendrycks' `is_equiv`: equal after normalisation; in paper mode, where normalising either
    side raises, the raw strings are compared instead."""
    try:
        return normalize_math(predicted, scoring) == normalize_math(label, scoring)
    except NormalizationError:
        return predicted == label


class NormalizationError(ValueError):
    """A step of Hendrycks' normalisation that raises in the reference code."""


_PLAIN_REMOVALS = ("\n", "\\!")
_LATEX_REWRITES = (
    ("\\\\", "\\"),
    ("tfrac", "frac"),
    ("dfrac", "frac"),
    ("\\left", ""),
    ("\\right", ""),
    ("^{\\circ}", ""),
    ("^\\circ", ""),
    ("\\$", ""),
)


def normalize_math(text: str, scoring: str = "paper") -> str:
    """Hendrycks' MATH `strip_string`, step by step. Paper mode raises NormalizationError where
    the reference raises; corrected mode skips such a step instead."""
    lenient = check_mode(scoring) == "corrected"
    for old in _PLAIN_REMOVALS:
        text = text.replace(old, "")
    for old, new in _LATEX_REWRITES:
        text = text.replace(old, new)
    units = text.split("\\text{ ")  # "\text{ " (with the space) marks a unit: dropped with all after it
    if len(units) == 2:
        text = units[0]
    elif len(units) > 2 and not lenient:
        raise NormalizationError("more than one '\\text{ '")
    # a backslash-percent is removed twice, as there: removing one can join a new pair
    text = text.replace("\\%", "").replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text.startswith("."):
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "x = 5" -> " 5"
        text = sides[1]
    text = _brace_sqrt(text, lenient).replace(" ", "")
    text = _brace_fracs(text, lenient)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _slash_to_frac(text, lenient)


def _brace_sqrt(text: str, lenient: bool) -> str:
    head, *parts = text.split("\\sqrt")
    for part in parts:
        if not part:  # "\sqrt" at the very end
            if not lenient:
                raise NormalizationError("'\\sqrt' without an argument")
            head += "\\sqrt"
        elif part[0] == "{":
            head += "\\sqrt" + part
        else:
            head += "\\sqrt{" + part[0] + "}" + part[1:]
    return head


def _brace_fracs(text: str, lenient: bool) -> str:
    head, *parts = text.split("\\frac")
    for part in parts:
        if not part:
            if not lenient:
                raise NormalizationError("'\\frac' without arguments")
            head += "\\frac"
        elif part[0] == "{":
            head += "\\frac" + part
        elif len(part) < 2:
            return text  # "\frac1" at the end: the reference gives up on the whole string
        elif part[1] == "{":
            head += "\\frac{" + part[0] + "}" + part[1:]
        else:
            head += "\\frac{" + part[0] + "}{" + part[1] + "}" + part[2:]
    return head


def _slash_to_frac(text: str, lenient: bool) -> str:
    parts = text.split("/")
    if len(parts) != 2:
        return text
    try:
        top, bottom = int(parts[0]), int(parts[1])
    except ValueError:  # "x/2": not integers; the reference lets int() raise
        if lenient:
            return text
        raise NormalizationError("a/b with a non-integer side") from None
    if text != f"{top}/{bottom}":  # only the canonical spelling ("+1/2", "01/2" stay)
        return text
    return f"\\frac{{{top}}}{{{bottom}}}"


# --- code --------------------------------------------------------------------------------------

# anywhere: a fence whose info word ends the line; at a line start also one with code after it
_FENCE = re.compile(r"```+[ \t]*[\w+.-]*[ \t]*(?:\n|$)|^[ \t]*```+[ \t]*(?:(?:python3?|py|Python)[ \t]+)?(?=\S)", re.M)
_CLOSING_FENCE = re.compile(r"^[ \t]*```", re.M)  # at a line start: ``` inside a code line stays
_TOP_LEVEL_END = re.compile(r"^(?:if\s+__name__\s*==|# Example usage|assert\b)", re.M)


def extract_code(generation: str, scoring: str = "paper") -> str:
    """The program for an executor (humaneval/mbpp `completion`). Raises ScoringError where
    DropLoRA's extractor raises (a `__main__` test it cannot find)."""
    if check_mode(scoring) == "corrected":
        return _extract_code_corrected(generation)
    code = generation.replace("\r", "")
    fence = code.find("```python")
    if fence >= 0:
        code = code[fence:].strip().replace("```python", "")
        end = code.find("\n```")
        if end >= 0:
            code = code[:end].strip()
    for marker, cut in (
        ('__name__ == "__main__"', 'if __name__ == "__main__":'),
        ("# Example usage", "# Example usage"),
        ("assert", "assert"),
    ):
        if marker in code:
            at = code.find(cut)
            if at < 0:
                raise ScoringError(f"DropLoRA's code extractor raises ValueError: {marker!r} occurs but not {cut!r}")
            code = code[:at].strip()
    return code


def _extract_code_corrected(generation: str) -> str:
    code = generation.replace("\r\n", "\n").replace("\r", "\n")
    start = 0
    while fence := _FENCE.search(code, start):  # the first block with code in it
        closing = _CLOSING_FENCE.search(code, fence.end())
        block = code[fence.end() : closing.start() if closing else len(code)]
        if block.strip() or not closing:
            code = block
            break
        start = closing.start()  # an empty block: its closing fence may open the next
    cut = _TOP_LEVEL_END.search(code)
    code = code[: cut.start()] if cut else code
    code = re.sub(r"^(?:[ \t]*\n)+", "", code)  # blank lines only: a body's indentation stays
    return code.rstrip() + "\n" if code.strip() else ""
