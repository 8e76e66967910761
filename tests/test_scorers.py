"""Answer extraction and scoring against hand-written cases (axolotl_droplora/scorers.py)."""

from __future__ import annotations

import pytest

from axolotl_droplora.scorers import (
    commonsense_answer,
    extract_code,
    gsm8k_correct,
    gsm8k_number,
    math_correct,
    normalize_math,
)

PROMPT = "Below is an instruction...\n\n### Instruction:\nQ\n\n### Response:\n"


@pytest.mark.parametrize(
    "set_name, response, expected",
    [
        ("boolq", "the correct answer is true", "true"),
        ("boolq", "false, not true", "false"),  # the first match wins
        ("boolq", "True", ""),  # the pattern is case-sensitive, as in LLM-Adapters
        ("piqa", "the correct answer is solution2", "solution2"),
        ("social_i_qa", "answer3 seems right, not answer1", "answer3"),
        ("ARC-Challenge", "the correct answer is answer4", "answer4"),
        ("ARC-Easy", "answer5", "answer5"),
        ("openbookqa", "I pick answer1", "answer1"),
        ("hellaswag", "the correct answer is ending2", "ending2"),
        ("winogrande", "option1 and option2", "option1"),
        ("winogrande", "no idea", ""),
    ],
)
def test_commonsense_takes_the_first_match_of_the_sets_pattern_after_the_response_mark(set_name, response, expected):
    assert commonsense_answer(set_name, PROMPT + response) == expected


def test_commonsense_ignores_the_prompt_and_refuses_unknown_sets():
    assert commonsense_answer("boolq", "### Instruction:\ntrue or false?\n### Response:\nfalse") == "false"
    with pytest.raises(ValueError, match="unknown commonsense set 'copa'"):
        commonsense_answer("copa", "x")


@pytest.mark.parametrize(
    "generation, number",
    [
        ("so 5 + 7 = 12. The answer is: 12", 12.0),
        ("The answer is: -3", -3.0),
        ("The answer is: 1,234,567", 1234567.0),
        ("The answer is: 3.75", 3.75),
        ("The answer is: 3/4", 0.75),
        ("The answer is: $18.", 18.0),
        ("The answer is: 2 then The answer is: 7", 7.0),  # the last mark
        ("18 is my answer", None),
        ("The answer is: none", None),
    ],
)
def test_gsm8k_number_formats(generation, number):
    assert gsm8k_number(generation) == number


def test_gsm8k_compares_numbers_rounded_like_metamath():
    assert gsm8k_correct("The answer is: 1,000", "1000")
    assert gsm8k_correct("The answer is: 18.0", "Natalia sold ... #### 18")
    assert gsm8k_correct("The answer is: 35/2", "18")  # 17.5 rounds to 18, as MetaMath rounds
    assert not gsm8k_correct("The answer is: 17", "18")
    assert not gsm8k_correct("no answer here", "18")


@pytest.mark.parametrize(
    "predicted, answer",
    [
        ("\\frac{1}{2}", "\\dfrac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("1/2", "\\frac{1}{2}"),
        ("0.5", "\\frac{1}{2}"),
        ("\\sqrt3", "\\sqrt{3}"),
        ("x = 5", "5"),
        ("5 \\text{ cm}", "5"),
        ("90^\\circ", "90"),
        ("\\$10", "10"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        (".5", "0.5"),
        ("10\\%", "10"),
    ],
)
def test_math_normalisation_makes_equivalent_answers_equal(predicted, answer):
    assert normalize_math(predicted) == normalize_math(answer)
    assert math_correct(f"Let's see. The answer is: {predicted}", answer)


def test_math_keeps_different_answers_apart():
    assert not math_correct("The answer is: \\frac{1}{3}", "\\frac{1}{2}")
    assert not math_correct("The answer is 5", "5")  # no "The answer is: " mark


@pytest.mark.parametrize(
    "response, code",
    [
        ("Here you go:\n```python\ndef f(x):\n    return x + 1\n```\nThis adds one.", "def f(x):\n    return x + 1\n"),
        ("```\ndef g():\n    return 2\n```", "def g():\n    return 2\n"),
        ("```python\ndef f():\n    return 1\n\nif __name__ == '__main__':\n    print(f())\n```", "def f():\n    return 1\n"),
        ("```python\ndef f():\n    return 1\nprint(f())\n```", "def f():\n    return 1\n"),
        ("def h(a):\n    return a * 2\nassert h(2) == 4", "def h(a):\n    return a * 2\n"),
        ("```python\ndef first():\n    pass\n```\n```python\ndef second():\n    pass\n```", "def first():\n    pass\n"),
    ],
)
def test_code_extraction(response, code):
    assert extract_code(PROMPT + response) == code
