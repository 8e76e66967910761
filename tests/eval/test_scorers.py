"""Scoring against the papers' evaluation code (axolotl_droplora/eval/scorers.py), case by case.

Every expected `paper` value below was obtained by running the reference code itself on the
input, in a scratch directory outside this project (its code is not copied here):
- GSM8K: `extract_answer_number` of MetaMath's eval_gsm8k.py
  (meta-math/MetaMath@fe667b14f9a4c51bde9809adafb82b6b5d255800),
  with the `fraction` 2.2.0 package it imports; "RAISES" = the reference raises there.
- MATH: `process_results` of MetaMath's eval_math.py and `strip_string` of its util.py (same commit);
  "RAISES" = strip_string raises, so is_equiv compares the raw strings.
- Commonsense: `extract_commonsense_answer` of DropLoRA's utils/test_acc.py
  (TayeeChang/DropLoRA@25fdf580dce61d867212d630be1a3d8a23322aae); set names mapped to its
  siqa/arc_challenge/arc_easy. That file's GSM8K and MATH functions are the same as MetaMath's
  (their syntax trees compare equal), and they are what produced the GSM8K/MATH values.
- Code: the extraction loop of DropLoRA's utils/code_process.py (same commit); "RAISES" = its
  `.index('if __name__ == "__main__":')` raises ValueError.
The `corrected` values are this project's own choices, listed in docs/evaluation.md.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from axolotl_droplora.eval.evaluate import score
from axolotl_droplora.eval.scorers import (
    COMMONSENSE_PATTERNS,
    NormalizationError,
    ScoringError,
    commonsense_answer,
    extract_code,
    gsm8k_correct,
    gsm8k_number,
    math_answer,
    math_correct,
    normalize_math,
)

RAISES = "RAISES"

GSM8K = [  # (generation, paper, corrected)
    ("The answer is: " + "18", 18, "18"),
    ("The answer is: " + "-3", -3, "-3"),
    ("The answer is: " + "+7", 7, "7"),
    ("The answer is: " + "1,234,567", 1234, "1234567"),
    ("The answer is: " + "1,000.75", 1000, "4003/4"),
    ("The answer is: " + "12,34", 1234, "12"),
    ("The answer is: " + "3.75", 4, "15/4"),
    ("The answer is: " + "2.5", 2, "5/2"),
    ("The answer is: " + "3.5", 4, "7/2"),
    ("The answer is: " + "0.5", 0, "1/2"),
    ("The answer is: " + "1.5", 2, "3/2"),
    ("The answer is: " + "-2.5", -2, "-5/2"),
    ("The answer is: " + ".5", 0, "1/2"),
    ("The answer is: " + "-.5", 0, "-1/2"),
    ("The answer is: " + "3/4", 1, "3/4"),
    ("The answer is: " + "35/2", 18, "35/2"),
    ("The answer is: " + "5/0", 5, None),
    ("The answer is: " + "5/00", "RAISES", None),
    ("The answer is: " + "0/5", 0, "0"),
    ("The answer is: " + "/4", None, "4"),
    ("The answer is: " + "-/4", None, "4"),
    ("The answer is: " + "+/4", None, "4"),
    ("The answer is: " + "-3/4", -1, "-3/4"),
    ("The answer is: " + "1/3", 0, "1/3"),
    ("The answer is: " + "7/2", 4, "7/2"),
    ("The answer is: " + "12345678901234567/3", 4115226300411523, "12345678901234567/3"),
    ("The answer is: " + "12345678901234567", 12345678901234568, "12345678901234567"),
    ("The answer is: " + "1e5", 1, "1"),
    ("The answer is: " + "10%", 10, "10"),
    ("The answer is: " + "$18.", 18, "18"),
    ("The answer is: " + "$1,000", 1000, "1000"),
    ("The answer is: " + "18 dollars", 18, "18"),
    ("The answer is: " + "eighteen", None, None),
    ("The answer is: " + "", None, None),
    ("The answer is: " + "  42  ", 42, "42"),
    ("The answer is: " + "4 2", 4, "4"),
    ("The answer is: " + "4,5,6", 45, "4"),
    ("The answer is: " + "1.2.3", 1, "6/5"),
    ("The answer is: " + "٣", 3, "3"),
    ("The answer is: " + "٣/٤", 1, "3/4"),
    ("The answer is: " + "１２", 12, "12"),
    ("The answer is: " + "½", None, None),
    ("The answer is: " + "18\\n\\nThe end", 18, "18"),
    ("The answer is: " + "18.\\nSo 20", 18, "18"),
    ("The answer is: " + "-0", 0, "0"),
    ("The answer is: " + "007", 7, "7"),
    ("The answer is: " + "1,234/5", 1234, "1234/5"),
    ("The answer is: " + "2/3/4", 1, "2/3"),
    ("The answer is: " + "x = 12", 12, "12"),
    ("The answer is: " + "12x", 12, "12"),
    ("The answer is: " + "x12", 12, "12"),
    ("The answer is: " + "-x", None, None),
    ("The answer is: " + "- 5", 5, "5"),
    ("The answer is: " + "+-5", -5, "-5"),
    ("The answer is: " + "3,", 3, "3"),
    ("The answer is: " + ",5", 5, "5"),
    ("The answer is: " + "5.", 5, "5"),
    ("The answer is: " + "10.0", 10, "10"),
    ("The answer is: " + "99.99", 100, "9999/100"),
    ("The answer is: " + "0.0001", 0, "1/10000"),
    ("The answer is: " + "1_000", 1, "1"),
    ("The answer is: " + "١٢٣", 123, "123"),
    ("18", None, None),
    ("", None, None),
    ("The answer is 18", None, None),
    ("The answer is:18", None, None),
    ("the answer is: 18", None, None),
    ("The answer is: 5 then The answer is: 7", 7, "7"),
    ("The answer is: 7\n\n### Instruction:\nThe answer is: 9", 9, "9"),
    ("The answer is: The answer is: 4", 4, "4"),
    ("The answer is: 4 The answer is: ", None, None),
    ("The answer is:  The answer is: x", None, None),
    (
        "The answer is: " + "9" * 308,
        int(
            "100000000000000001097906362944045541740492309677311846336810682903157585404911491537163328978494688899061249669721172515611590283743140088328307009198146046031271664502933027185697489699588559043338384466165001178426897626212945177628091195786707458122783970171784415105291802893207873272974885715430223118336"
        ),
        "9" * 308,
    ),
    ("The answer is: " + "9" * 309, None, "9" * 309),
    ("The answer is: " + "9" * 400, None, "9" * 400),
    ("The answer is: " + "-" + "9" * 400, "RAISES", "-" + "9" * 400),
    ("The answer is: " + "9" * 400 + "/3", "RAISES", "3" * 400),
    ("The answer is: " + "3" * 300 + "/" + "7" * 300, "RAISES", "3/7"),
    ("The answer is: " + "1" * 20 + "/7", 1587301587301587200, "1" * 20 + "/7"),
    (
        "The answer is: " + "-" + "9" * 308,
        int(
            "-100000000000000001097906362944045541740492309677311846336810682903157585404911491537163328978494688899061249669721172515611590283743140088328307009198146046031271664502933027185697489699588559043338384466165001178426897626212945177628091195786707458122783970171784415105291802893207873272974885715430223118336"
        ),
        "-" + "9" * 308,
    ),
    ("The answer is: " + "9" * 5000, None, None),
    ("The answer is: " + "1/" + "9" * 400, "RAISES", "1/" + "9" * 400),
    ("The answer is: " + "0." + "0" * 400 + "1", 0, "1/1" + "0" * 401),
    ("We get 5.\nThe answer is: 42.", 42, "42"),
    ("The answer is: 42.\nI hope this helps.", 42, "42"),
    ("The answer is: \u00a0 42", 42, "42"),
    ("The answer is: 24 hours, so 1,440 minutes", 24, "24"),
    ("The answer is: -$5", 5, "5"),
    ("The answer is: 3 1/2", 3, "3"),
    ("The answer is: 1 000", 1, "1"),
    ("The answer is: 6.5 \\text{ cm}", 6, "13/2"),
    ("The answer is: \\frac{3}{4}", 3, "3"),
    ("The answer is: 2\u00d710^3", 2, "2"),
    ("The answer is: 4\u20442", 4, "4"),
    ("The answer is: 12\U0001f600", 12, "12"),
    ("The answer is: 𝟙𝟚", 12, "12"),
    ("The answer is: " + "18\\n\\n### Instruction:\\nWhat is 2+2?", 18, "18"),
    ("The answer is: " + "18 (eighteen)", 18, "18"),
    ("The answer is: " + "$18.00", 18, "18"),
    ("The answer is: " + "18.50 dollars", 18, "37/2"),
    ("The answer is: " + "0", 0, "0"),
    ("The answer is: " + "-0.4", 0, "-2/5"),
    ("The answer is: " + "0.5/0.25", 0, None),
    ("The answer is: " + "1.5/2", 2, "3/4"),
    ("The answer is: " + "10/2.5", 5, "5"),
    ("The answer is: " + "1,5/2", 15, "1"),
    ("The answer is: " + "−5", 5, "5"),
    ("The answer is: " + "5−3", 5, "5"),
    ("The answer is: " + "(18)", 18, "18"),
    ("The answer is: " + "#### 18", 18, "18"),
    ("The answer is: " + "18th", 18, "18"),
]
MATH = [  # (answer after the mark, label, paper normalisation of the answer, paper correct, corrected correct)
    ("\\frac{1}{2}", "\\frac{1}{2}", "\\frac{1}{2}", True, True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", "\\frac{1}{2}", True, True),
    ("\\tfrac12", "\\frac{1}{2}", "\\frac{1}{2}", True, True),
    ("\\frac12", "\\frac{1}{2}", "\\frac{1}{2}", True, True),
    ("1/2", "\\frac{1}{2}", "\\frac{1}{2}", True, True),
    ("0.5", "\\frac{1}{2}", "\\frac{1}{2}", True, True),
    (".5", "\\frac{1}{2}", "\\frac{1}{2}", True, True),
    ("-.5", "-\\frac{1}{2}", "-.5", False, False),
    ("\\frac1{72}", "\\frac{1}{72}", "\\frac{1}{72}", True, True),
    ("\\frac{72}1", "\\frac{72}{1}", "\\frac{72}1", False, False),
    ("\\fracab", "\\frac{a}{b}", "\\frac{a}{b}", True, True),
    ("\\frac a b", "\\frac{a}{b}", "\\frac{a}{b}", True, True),
    ("3/-4", "-\\frac{3}{4}", "\\frac{3}{-4}", False, False),
    ("x / 2", "x/2", "RAISES", False, True),
    ("x/2", "x/2", "RAISES", True, True),
    ("x/2", "\\frac{x}{2}", "RAISES", False, False),
    ("+1/2", "\\frac{1}{2}", "+1/2", False, False),
    ("01/2", "\\frac{1}{2}", "01/2", False, False),
    ("10/4", "\\frac{5}{2}", "\\frac{10}{4}", False, False),
    ("\\sqrt3", "\\sqrt{3}", "\\sqrt{3}", True, True),
    ("2\\sqrt2", "2\\sqrt{2}", "2\\sqrt{2}", True, True),
    ("\\sqrt{12}", "2\\sqrt{3}", "\\sqrt{12}", False, False),
    ("\\sqrt", "\\sqrt", "RAISES", True, True),
    ("3\\sqrt", "3\\sqrt", "RAISES", True, True),
    ("\\frac", "\\frac", "RAISES", True, True),
    ("\\frac1", "\\frac1", "\\frac1", True, True),
    ("5 \\text{ cm}", "5", "5", True, True),
    ("5\\text{ cm}^2", "5", "5", True, True),
    ("5 \\text{cm}", "5", "5\\text{cm}", False, False),
    ("\\text{odd}", "\\text{even}", "\\text{odd}", False, False),
    ("\\text{odd}", "\\text{odd}", "\\text{odd}", True, True),
    ("", "\\text{even}", "", False, False),
    ("", "", "", True, True),
    ("odd", "\\text{odd}", "odd", False, False),
    ("5 \\text{ cm} \\text{ m}", "5", "RAISES", False, False),
    ("5 \\text{ cm} \\text{ m}", "5 \\text{ cm} \\text{ m}", "RAISES", True, True),
    ("90^\\circ", "90", "90", True, True),
    ("90^{\\circ}", "90", "90", True, True),
    ("90°", "90", "90°", False, False),
    ("\\$10", "10", "10", True, True),
    ("$10$", "10", "$10$", False, False),
    ("10\\%", "10", "10", True, True),
    ("10%", "10", "10%", False, False),
    ("\\left( 1, 2 \\right)", "(1,2)", "(1,2)", True, True),
    ("\\left[ 1, 2 \\right)", "[1,2)", "[1,2)", True, True),
    ("x = 5", "5", "5", True, True),
    ("ab = 3", "3", "ab=3", False, False),
    ("abc = 3", "3", "abc=3", False, False),
    ("y=2x+1", "2x+1", "2x+1", True, True),
    ("x = y = 2", "2", "x=y=2", False, False),
    ("k=\\frac{1}{2}", "0.5", "\\frac{1}{2}", True, True),
    ("5.", "5", "5.", True, True),
    ("5..", "5", "5..", False, False),
    ("5.0", "5", "5.0", False, False),
    ("1,000", "1000", "1,000", False, False),
    ("1{,}000", "1000", "1{,}000", False, False),
    ("\\!1000", "1000", "1000", True, True),
    ("\\\\frac{1}{2}", "\\frac{1}{2}", "\\frac{1}{2}", True, True),
    ("\\dfrac{\\sqrt3}{2}", "\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}", True, True),
    ("(1,2)", "(1, 2)", "(1,2)", True, True),
    ("\\{1,2\\}", "\\{1, 2\\}", "\\{1,2\\}", True, True),
    ("\\infty", "\\infty", "\\infty", True, True),
    ("-\\infty", "\\infty", "-\\infty", False, False),
    ("\\pi", "\\pi", "\\pi", True, True),
    ("2\\pi", "2 \\pi", "2\\pi", True, True),
    ("A", "\\text{(A)}", "A", False, False),
    ("(A)", "\\text{(A)}", "(A)", False, False),
    ("\\text{(A)}", "\\text{(A)}", "\\text{(A)}", True, True),
    ("\\boxed{5}", "5", "\\boxed{5}", False, False),
    ("5", "\\boxed{5}", "5", False, False),
    ("٣", "3", "٣", False, False),
    ("½", "\\frac{1}{2}", "½", False, False),
    ("12\\n34", "1234", "12\\n34", False, False),
    ("5\\t", "5", "5\\t", False, False),
    ("x\\in[1,2]", "[1,2]", "x\\in[1,2]", False, False),
    ("0.50", "\\frac{1}{2}", "0.50", False, False),
    ("\\frac{1}{2}.", "\\frac{1}{2}", "\\frac{1}{2}.", True, True),
    ("1/2/3", "\\frac{1}{2}/3", "1/2/3", False, False),
    ("2/4", "\\frac{2}{4}", "\\frac{2}{4}", True, True),
    ("-1/2", "\\frac{-1}{2}", "\\frac{-1}{2}", True, True),
    ("-1/2", "-\\frac{1}{2}", "\\frac{-1}{2}", False, False),
    ("9" * 5000 + "/2", "x", "RAISES", False, False),
    ("{.5}", "{0.5}", "{0.5}", True, True),
    ("a .5", "a0.5", "a0.5", True, True),
    ("\\text{ }5", "", "", True, True),
    ("3 \\text{ and } 4", "3", "3", True, True),
    ("\\mbox{ cm}", "\\mbox{cm}", "\\mbox{cm}", True, True),
    ("\\frac{1}{2}\\text{ hours}", "\\frac{1}{2}", "\\frac{1}{2}", True, True),
    ("1\\frac{1}{2}", "\\frac{3}{2}", "1\\frac{1}{2}", False, False),
    ("\\frac{\\pi}{2}", "\\frac\\pi2", "\\frac{\\pi}{2}", False, False),
    ("3\\cdot 4", "12", "3\\cdot4", False, False),
    (
        "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
        "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
        "\\begin{pmatrix}1\\2\\end{pmatrix}",
        True,
        True,
    ),
    ("(-\\infty, 3]", "(-\\infty,3]", "(-\\infty,3]", True, True),
    ("x^2+1", "x^{2}+1", "x^2+1", False, False),
    ("1\\,000", "1000", "1\\,000", False, False),
    ("\\textbf{(B)}", "\\text{(B)}", "\\textbf{(B)}", False, False),
    ("10^\\circ\\text{ C}", "10", "10", True, True),
    ("\\text{ cm}", "", "", True, True),
    ("=5", "5", "5", True, True),
    ("5=", "5", "", False, False),
    ("a=b=c", "c", "a=b=c", False, False),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", "RAISES", False, False),
]
MATH_GENERATIONS = [  # (generation, label, paper correct, corrected correct)
    ("The answer is: 5.\nI hope this helps.", "5", True, True),
    ("The answer is: 5. I hope this helps.", "5", False, False),
    ("The answer is: 5.\n", "5", True, True),
    ("The answer is: 5\nI hope", "5", False, False),
    ("The answer is: 3.5.\nx", "3.5", True, True),
    ("The answer is: 2 then The answer is: 7", "7", True, True),
    ("The answer is 7", "7", False, False),
    ("7", "7", False, False),
    ("", "", False, False),
    ("The answer is:7", "7", False, False),
    ("The answer is: \\frac{1}{2}.\n\n### Instruction:\nThe answer is: 9", "\\frac{1}{2}", False, False),
    ("The answer is: ", "", True, True),
    ("The answer is: .", "", True, True),
    ("The answer is:  . ", "", True, True),
]
COMMONSENSE = [  # (set, generation, paper, corrected)
    ("boolq", "the correct answer is true", "true", "true"),
    ("boolq", "the correct answer is false", "false", "false"),
    ("boolq", "True", "", ""),
    ("boolq", "FALSE", "", ""),
    ("boolq", "false, not true", "false", "false"),
    ("boolq", "it is untrue", "true", ""),
    ("boolq", "falsehood", "false", ""),
    ("boolq", "", "", ""),
    ("boolq", "   true   ", "true", "true"),
    (
        "boolq",
        "the correct answer is true\n\n### Instruction:\nPlease answer true or false\n\n### Response:\n"
        "the correct answer is false",
        "true",
        "true",
    ),
    ("boolq", "I am not sure.\n\n### Instruction:\nAnswer format: true/false\n\n### Response:\nfalse", "true", ""),
    ("boolq", "### Response:\nfalse", "false", "false"),
    ("boolq", "the answer is\n### Response: true", "true", "true"),
    ("boolq", "trueish", "true", ""),
    ("boolq", "t r u e", "", ""),
    ("boolq", "the correct answer is true.", "true", "true"),
    ("boolq", "answer1", "", ""),
    ("boolq", "vrai / true", "true", "true"),
    ("boolq", "ｔｒｕｅ", "", ""),
    ("boolq", "truetrue" * 500, "true", ""),
    ("piqa", "the correct answer is solution2", "solution2", "solution2"),
    ("piqa", "solution1 or solution2", "solution1", "solution1"),
    ("piqa", "Solution1", "", ""),
    ("piqa", "solution3", "", ""),
    ("piqa", "solution12", "solution1", ""),
    ("piqa", "### Instruction:\nsolution1/solution2\n### Response:\nsolution2", "solution1", ""),
    ("piqa", "answer1", "", ""),
    ("piqa", "", "", ""),
    ("piqa", "solutions1", "", ""),
    ("piqa", "the correct answer is solution1\n### Response:\nsolution2", "solution1", "solution1"),
    ("social_i_qa", "the correct answer is answer3", "answer3", "answer3"),
    ("social_i_qa", "answer5", "answer5", "answer5"),
    ("social_i_qa", "answer6", "", ""),
    ("social_i_qa", "answer10", "answer1", ""),
    ("social_i_qa", "Answer2", "", ""),
    ("social_i_qa", "answer3 seems right, not answer1", "answer3", "answer3"),
    ("social_i_qa", "no idea", "", ""),
    (
        "social_i_qa",
        "none\n\n### Instruction:\nAnswer format: answer1/answer2/answer3\n\n### Response:\nanswer2",
        "answer1",
        "",
    ),
    ("ARC-Challenge", "the correct answer is answer4", "answer4", "answer4"),
    ("ARC-Challenge", "answer4.", "answer4", "answer4"),
    ("ARC-Challenge", "answer 4", "", ""),
    ("ARC-Challenge", "answer1answer2", "answer1", ""),
    ("ARC-Challenge", "the correct answer is answer2\n\n### Response:\nanswer1", "answer2", "answer2"),
    ("ARC-Easy", "answer5", "answer5", "answer5"),
    ("ARC-Easy", "answer0", "", ""),
    ("ARC-Easy", "the answer1", "answer1", "answer1"),
    ("ARC-Easy", "ANSWER1", "", ""),
    ("ARC-Easy", "\n\nanswer2\n", "answer2", "answer2"),
    ("openbookqa", "I pick answer1", "answer1", "answer1"),
    ("openbookqa", "answer4 answer1", "answer4", "answer4"),
    ("openbookqa", "answer", "", ""),
    ("openbookqa", "réponse answer3", "answer3", "answer3"),
    ("openbookqa", "### Input:\nanswer2", "answer2", ""),
    ("openbookqa", "answer3### Response:answer4", "answer3", "answer3"),
    ("hellaswag", "the correct answer is ending2", "ending2", "ending2"),
    ("hellaswag", "ending4", "ending4", "ending4"),
    ("hellaswag", "ending5", "", ""),
    ("hellaswag", "ending1ending2", "ending1", ""),
    ("hellaswag", "Ending3", "", ""),
    ("hellaswag", "endings2", "", ""),
    ("hellaswag", "pending3", "ending3", ""),
    ("hellaswag", "the ending3 is right", "ending3", "ending3"),
    ("hellaswag", "x\n### Instruction:\nending1/ending2/ending3/ending4", "ending1", ""),
    ("hellaswag", "", "", ""),
    ("winogrande", "option1 and option2", "option1", "option1"),
    ("winogrande", "option2", "option2", "option2"),
    ("winogrande", "Option1", "", ""),
    ("winogrande", "no idea", "", ""),
    ("winogrande", "option3", "", ""),
    ("winogrande", "the correct answer is option2\r\n", "option2", "option2"),
    ("winogrande", "option12", "option1", ""),
    ("winogrande", "options1", "", ""),
    ("winogrande", "…option1…", "option1", "option1"),
    ("winogrande", "the correct answer is\n\n### Instruction:\nAnswer format: option1/option2", "option1", ""),
    ("boolq", "yes", "", ""),
    ("boolq", "no", "", ""),
    ("boolq", "1", "", ""),
    ("boolq", "true\u200bfalse", "true", "true"),
    ("boolq", "TRUE true", "true", "true"),
    ("piqa", "solution2solution1", "solution2", ""),
    ("social_i_qa", "answer2\n### Response:\nanswer1", "answer2", "answer2"),
    ("ARC-Challenge", "\tanswer3\t", "answer3", "answer3"),
    ("openbookqa", "answer1 " * 100, "answer1", "answer1"),
    ("hellaswag", "ending3\n\n### Instruction:\nending1", "ending3", "ending3"),
    ("winogrande", "\xa0option2", "option2", "option2"),
    ("boolq", "The correct answer is True, i.e. true", "true", "true"),
    ("boolq", "false\n### Response:\ntrue", "false", "false"),
    ("boolq", "maybe\n### Response:\ntrue", "true", "true"),
    ("piqa", "maybe\n### Response:\nsolution1", "solution1", "solution1"),
    ("social_i_qa", "maybe\n### Input:\nanswer4", "answer4", ""),
    ("ARC-Easy", "x ### Response: answer2", "answer2", "answer2"),
    ("hellaswag", "ending2_ending3", "ending2", ""),
    ("winogrande", "option1-option2", "option1", "option1"),
    ("boolq", "true_false", "true", ""),
    ("boolq", "false1", "false", ""),
    ("piqa", "solution1a", "solution1", ""),
    ("openbookqa", "answer2b", "answer2", ""),
    ("boolq", "true\n\n### Input:\nfalse", "true", "true"),
    ("piqa", "Solution: solution2", "solution2", "solution2"),
    ("social_i_qa", "answer2)", "answer2", "answer2"),
    ("ARC-Easy", "(answer3)", "answer3", "answer3"),
    ("hellaswag", "ending4\n", "ending4", "ending4"),
    ("winogrande", "option2.\n\n### Instruction:\noption1", "option2", "option2"),
    ("boolq", "true", "true", "true"),
    ("openbookqa", "answer4́", "answer4", "answer4"),
]
CODE = [  # (generation, paper, corrected)
    (
        "```python\ndef f(x):\n    return x + 1\n```\nThis adds one.",
        "def f(x):\n    return x + 1",
        "def f(x):\n    return x + 1\n",
    ),
    ("Here you go:\n```python\ndef f():\n    return 1\n```", "def f():\n    return 1", "def f():\n    return 1\n"),
    ("```\ndef g():\n    return 2\n```", "```\ndef g():\n    return 2\n```", "def g():\n    return 2\n"),
    ("```py\ndef g():\n    return 2\n```", "```py\ndef g():\n    return 2\n```", "def g():\n    return 2\n"),
    ("```python3\ndef g():\n    return 2\n```", "3\ndef g():\n    return 2", "def g():\n    return 2\n"),
    ("```Python\ndef g():\n    return 2\n```", "```Python\ndef g():\n    return 2\n```", "def g():\n    return 2\n"),
    ("```python def g():\n    return 2\n```", "def g():\n    return 2", "def g():\n    return 2\n"),
    ("```python\r\ndef g():\r\n    return 2\r\n```", "def g():\n    return 2", "def g():\n    return 2\n"),
    ("```python\ndef g():\n    return 2", "\ndef g():\n    return 2", "def g():\n    return 2\n"),
    ('```python\ndef g():\n    return "```"\n```', 'def g():\n    return "```"', 'def g():\n    return "```"\n'),
    ('```python\ndef g():\n    s = """\n```\n"""\n```', 'def g():\n    s = """', 'def g():\n    s = """\n'),
    (
        "```python\ndef first():\n    pass\n```\n```python\ndef second():\n    pass\n```",
        "def first():\n    pass",
        "def first():\n    pass\n",
    ),
    (
        '```python\ndef f():\n    return 1\n\nif __name__ == "__main__":\n    print(f())\n```',
        "def f():\n    return 1",
        "def f():\n    return 1\n",
    ),
    (
        "```python\ndef f():\n    return 1\n\nif __name__ == '__main__':\n    print(f())\n```",
        "def f():\n    return 1\n\nif __name__ == '__main__':\n    print(f())",
        "def f():\n    return 1\n",
    ),
    (
        '```python\ndef f():\n    return 1\n\nif __name__ == "__main__" :\n    print(f())\n```',
        "RAISES",
        "def f():\n    return 1\n",
    ),
    (
        '```python\ndef f():\n    return 1\n\nif (__name__ == "__main__"):\n    print(f())\n```',
        "RAISES",
        'def f():\n    return 1\n\nif (__name__ == "__main__"):\n    print(f())\n',
    ),
    (
        "```python\ndef f():\n    return 1\n# Example usage\nprint(f())\n```",
        "def f():\n    return 1",
        "def f():\n    return 1\n",
    ),
    (
        "```python\ndef f():\n    return 1  # Example usage below\n```",
        "def f():\n    return 1",
        "def f():\n    return 1  # Example usage below\n",
    ),
    (
        "```python\ndef f():\n    return 1\nprint(f())\n```",
        "def f():\n    return 1\nprint(f())",
        "def f():\n    return 1\nprint(f())\n",
    ),
    ("```python\ndef f():\n    return 1\nassert f() == 1\n```", "def f():\n    return 1", "def f():\n    return 1\n"),
    ("```python\ndef assert_add(a, b):\n    return a + b\n```", "def", "def assert_add(a, b):\n    return a + b\n"),
    (
        "```python\ndef f(x):\n    assert x > 0\n    return x\n```",
        "def f(x):",
        "def f(x):\n    assert x > 0\n    return x\n",
    ),
    (
        '```python\ndef f():\n    """Never assert."""\n    return 1\n```',
        'def f():\n    """Never',
        'def f():\n    """Never assert."""\n    return 1\n',
    ),
    ("def h(a):\n    return a * 2\nassert h(2) == 4", "def h(a):\n    return a * 2", "def h(a):\n    return a * 2\n"),
    ("    return a + b\n", "    return a + b\n", "    return a + b\n"),
    (
        "    if x:\n        return 1\n    return 0",
        "    if x:\n        return 1\n    return 0",
        "    if x:\n        return 1\n    return 0\n",
    ),
    (
        "\n\n    return a + b\n\nThis returns the sum.",
        "\n\n    return a + b\n\nThis returns the sum.",
        "    return a + b\n\nThis returns the sum.\n",
    ),
    ("def f():\n    return 1", "def f():\n    return 1", "def f():\n    return 1\n"),
    ("", "", ""),
    ("   ", "   ", ""),
    ("no code here", "no code here", "no code here\n"),
    ("```", "```", ""),
    ("```python", "", ""),
    ("```python\n```", "", ""),
    ("```\n```", "```\n```", ""),
    ("Sure! ```python\ndef f():\n    return 1\n```", "def f():\n    return 1", "def f():\n    return 1\n"),
    ("```python\n\n\ndef f():\n    return 1\n\n\n```", "def f():\n    return 1", "def f():\n    return 1\n"),
    ("```python\ndef f():\n\treturn 1\n```", "def f():\n\treturn 1", "def f():\n\treturn 1\n"),
    ("```python\ndef f():\n    return 1\n    ```", "\ndef f():\n    return 1\n    ```", "def f():\n    return 1\n"),
    ("```python\ndef f():\n    return 1\n``` \n", "def f():\n    return 1", "def f():\n    return 1\n"),
    ('```python\ndef f():\n    return "é€😀"\n```', 'def f():\n    return "é€😀"', 'def f():\n    return "é€😀"\n'),
    ("```javascript\nfunction f() {}\n```", "```javascript\nfunction f() {}\n```", "function f() {}\n"),
    ("```python\r\ndef f():\r\n    return 1\r\n```\r\nDone", "def f():\n    return 1", "def f():\n    return 1\n"),
    ("def f():\r\n    return 1\r\n", "def f():\n    return 1\n", "def f():\n    return 1\n"),
    (
        "```python\ndef f():\n    return 1\n```\n\n```python\nassert f() == 1\n```",
        "def f():\n    return 1",
        "def f():\n    return 1\n",
    ),
    (
        "```python\nimport math\n\ndef f(x):\n    return math.sqrt(x)\n```",
        "import math\n\ndef f(x):\n    return math.sqrt(x)",
        "import math\n\ndef f(x):\n    return math.sqrt(x)\n",
    ),
    (
        "```python\nfrom typing import List\n\n\ndef f(xs: List[int]) -> int:\n    return sum(xs)\n```",
        "from typing import List\n\n\ndef f(xs: List[int]) -> int:\n    return sum(xs)",
        "from typing import List\n\n\ndef f(xs: List[int]) -> int:\n    return sum(xs)\n",
    ),
    (
        "```python\ndef f():\n    return 1\n\n# Test\nprint(f())\n```",
        "def f():\n    return 1\n\n# Test\nprint(f())",
        "def f():\n    return 1\n\n# Test\nprint(f())\n",
    ),
    (
        "```python\nclass A:\n    def f(self):\n        return 1\n```",
        "class A:\n    def f(self):\n        return 1",
        "class A:\n    def f(self):\n        return 1\n",
    ),
    (
        '```python\ndef f():\n    return 1\n\n\nif __name__ == "__main__":\n    assert f() == 1\n```',
        "def f():\n    return 1",
        "def f():\n    return 1\n",
    ),
    ("```python\n# Example usage\n```", "", ""),
    ("assert True", "", ""),
    ("x = 1 # assertion", "x = 1 #", "x = 1 # assertion\n"),
    (
        "```python\ndef f():\n    return 1\n```python\ndef g():\n    return 2\n```",
        "def f():\n    return 1\n\ndef g():\n    return 2",
        "def f():\n    return 1\n",
    ),
    ('```python\nif __name__ == "__main__":\n    main()\n```', "", ""),
    ('__name__ == "__main__"', "RAISES", '__name__ == "__main__"\n'),
    ('if __name__ == "__main__":', "", ""),
    ("```pythonic\ndef f():\n    pass\n```", "ic\ndef f():\n    pass", "def f():\n    pass\n"),
    ("``` python\ndef f():\n    pass\n```", "``` python\ndef f():\n    pass\n```", "def f():\n    pass\n"),
    (
        "~~~python\ndef f():\n    pass\n~~~",
        "~~~python\ndef f():\n    pass\n~~~",
        "~~~python\ndef f():\n    pass\n~~~\n",
    ),
    ("```python\n    return x\n```", "return x", "    return x\n"),
    (
        "Here:\n\n    def f():\n        return 1\n",
        "Here:\n\n    def f():\n        return 1\n",
        "Here:\n\n    def f():\n        return 1\n",
    ),
    ("```python\ndef f():\n    return 1\n```\nassert f() == 1", "def f():\n    return 1", "def f():\n    return 1\n"),
    (
        "```python\ndef f():\n    return [1,\n            2]\n```",
        "def f():\n    return [1,\n            2]",
        "def f():\n    return [1,\n            2]\n",
    ),
    (
        '```python\ndef f():\n    x = """\n```python\n"""\n    return x\n```',
        'def f():\n    x = """\n\n"""\n    return x',
        'def f():\n    x = """\n',
    ),
    ("def f():\n    return 1\n\n# Example usage:\nprint(f())", "def f():\n    return 1", "def f():\n    return 1\n"),
    (
        "def f():\n    return 1\n\n# example usage\nprint(f())",
        "def f():\n    return 1\n\n# example usage\nprint(f())",
        "def f():\n    return 1\n\n# example usage\nprint(f())\n",
    ),
    ("```python\ndef f():\n    return 1\n```\n# Example usage", "def f():\n    return 1", "def f():\n    return 1\n"),
    ("```python\n" + "x = 1\n" * 3 + "```", "x = 1\nx = 1\nx = 1", "x = 1\nx = 1\nx = 1\n"),
    ("\x00\x01```python\n\x00\n```", "\x00", "\x00\n"),
    (
        '```python\ndef f():\n    """\n    >>> f()\n    1\n    """\n    return 1\n```',
        'def f():\n    """\n    >>> f()\n    1\n    """\n    return 1',
        'def f():\n    """\n    >>> f()\n    1\n    """\n    return 1\n',
    ),
    (
        "```python\ndef f():\n    pass\n```\n\nExplanation: uses ```python blocks",
        "def f():\n    pass",
        "def f():\n    pass\n",
    ),
    ("```PYTHON\ndef f():\n    pass\n```", "```PYTHON\ndef f():\n    pass\n```", "def f():\n    pass\n"),
    ("```python  \ndef f():\n    pass\n```", "def f():\n    pass", "def f():\n    pass\n"),
    ("```python\tdef f(): pass\n```", "def f(): pass", "def f(): pass\n"),
    ("\r```python\r\ndef f():\r\n\treturn 1\r\n```", "def f():\n\treturn 1", "def f():\n\treturn 1\n"),
    ("```python\ndef f():\n    return 1\n\n\n\n", "\ndef f():\n    return 1", "def f():\n    return 1\n"),
    ("  def f():\n      return 1", "  def f():\n      return 1", "  def f():\n      return 1\n"),
    (
        "```python\n    if x:\n        return 1\n    return 0\n```",
        "if x:\n        return 1\n    return 0",
        "    if x:\n        return 1\n    return 0\n",
    ),
    ("```\n    return a + b\n```", "```\n    return a + b\n```", "    return a + b\n"),
    ('```python\ndef f():\n    return "assert"\n```', 'def f():\n    return "', 'def f():\n    return "assert"\n'),
    (
        '```python\ndef f():\n    return 1\nif __name__=="__main__":\n    f()\n```',
        'def f():\n    return 1\nif __name__=="__main__":\n    f()',
        "def f():\n    return 1\n",
    ),
    (
        'def f(): return 1 if __name__ == "__main__" else 0',
        "RAISES",
        'def f(): return 1 if __name__ == "__main__" else 0\n',
    ),
    (
        "```python\ndef add(a, b):\n    return a + b\n```\n\n### Instruction:\nWrite more\n\n### Response:\n"
        "```python\ndef sub(a, b):\n    return a - b\n```",
        "def add(a, b):\n    return a + b",
        "def add(a, b):\n    return a + b\n",
    ),
    ("```python\ndef f():\n    return 1\n````", "def f():\n    return 1", "def f():\n    return 1\n"),
    ("````python\ndef f():\n    return 1\n````", "def f():\n    return 1", "def f():\n    return 1\n"),
    ("```python\n```python\ndef f():\n    return 1\n```", "def f():\n    return 1", "def f():\n    return 1\n"),
    ("```python\ndef f():\n    return 1 # ```\n```", "def f():\n    return 1 # ```", "def f():\n    return 1 # ```\n"),
    (
        "Text ```inline``` text\n```python\ndef f():\n    return 1\n```",
        "def f():\n    return 1",
        "def f():\n    return 1\n",
    ),
    (
        '```python\ndef f():\n    return 1\n```\n\nif __name__ == "__main__":\n    f()',
        "def f():\n    return 1",
        "def f():\n    return 1\n",
    ),
    ("```python\n\n```\n```python\ndef g():\n    pass\n```", "", "def g():\n    pass\n"),
    ("```python\ndef f():\n    return 1", "\ndef f():\n    return 1", "def f():\n    return 1\n"),
    ("```py\r\ndef f():\r\n    return 1\r\n```", "```py\ndef f():\n    return 1\n```", "def f():\n    return 1\n"),
    ("```\r\ndef f():\r\n    return 1\r\n```", "```\ndef f():\n    return 1\n```", "def f():\n    return 1\n"),
    ("```python\n# Example usage\ndef f():\n    return 1\n```", "", ""),
    ('```python\ndef f():\n    print("assert")\n```', 'def f():\n    print("', 'def f():\n    print("assert")\n'),
    (
        "Answer:\n```python\ndef f():\n    return 1\n```\nassert f()",
        "def f():\n    return 1",
        "def f():\n    return 1\n",
    ),
    (
        "```python\ndef f():\n    return 1\n\n# Example usage\n# f()\n```",
        "def f():\n    return 1",
        "def f():\n    return 1\n",
    ),
    ("```python\ndef f(): ...\n```", "def f(): ...", "def f(): ...\n"),
    ("```python\nassert_equal = 1\n```", "", "assert_equal = 1\n"),
    ("```python\ndef f():\n    return 1\n```\n```", "def f():\n    return 1", "def f():\n    return 1\n"),
]


@pytest.mark.parametrize("generation, paper, corrected", GSM8K)
def test_gsm8k_number_as_metamath_reads_it_and_corrected(generation, paper, corrected):
    if paper == RAISES:
        with pytest.raises(ScoringError, match="MetaMath's GSM8K extraction raises"):
            gsm8k_number(generation)
        assert gsm8k_correct(generation, "42") is False  # wrong, not a crash
    else:
        assert gsm8k_number(generation) == paper and type(gsm8k_number(generation)) is type(paper)
    assert gsm8k_number(generation, "corrected") == (None if corrected is None else Fraction(corrected))


@pytest.mark.parametrize(
    "generation, label, paper, corrected",
    [
        ("The answer is: 18", "18", True, True),
        ("The answer is: 18", "Natalia sold 48/2 = 24 clips ... #### 18", True, True),
        ("The answer is: 1,800", "#### 1,800", True, True),  # one separator is read
        ("The answer is: 17.5", "18", True, False),  # rounded half to even in paper mode
        ("The answer is: 18.5", "18", True, False),  # round(18.5) == 18
        ("The answer is: 35/2", "18", True, False),
        ("The answer is: 1,234,567", "1234567", False, True),
        ("The answer is: 1,234,567", "1234", True, False),
        ("The answer is: 1,000.75", "1000", True, False),
        ("The answer is: 5/0", "5", True, False),
        ("The answer is: 17", "18", False, False),
        ("18 is my answer", "18", False, False),
        ("The answer is: -" + "9" * 400, "18", False, False),  # MetaMath raises OverflowError
        ("The answer is: 2.0", "2.0", True, True),
    ],
)
def test_gsm8k_correctness_against_labels(generation, label, paper, corrected):
    assert gsm8k_correct(generation, label) is paper
    assert gsm8k_correct(generation, label, scoring="corrected") is corrected


@pytest.mark.parametrize("answer, label, normalized, paper, corrected", MATH)
def test_math_normalisation_and_correctness_as_metamath(answer, label, normalized, paper, corrected):
    if normalized == RAISES:
        with pytest.raises(NormalizationError):
            normalize_math(answer)
    else:
        assert normalize_math(answer) == normalized
    assert math_correct("Let's see. The answer is: " + answer, label) is paper
    assert math_correct("Let's see. The answer is: " + answer, label, scoring="corrected") is corrected


@pytest.mark.parametrize("generation, label, paper, corrected", MATH_GENERATIONS)
def test_math_answer_is_cut_at_the_first_dot_newline_after_the_last_mark(generation, label, paper, corrected):
    assert math_correct(generation, label) is paper
    assert math_correct(generation, label, scoring="corrected") is corrected


def test_math_text_braces_are_compared_not_ignored():
    assert not math_correct("The answer is: \\text{odd}", "\\text{even}")
    assert not math_correct("The answer is: ", "\\text{even}")
    assert math_answer("The answer is: 5.\nI hope this helps.") == "5"
    assert math_answer("no mark") is None


@pytest.mark.parametrize("set_name, generation, paper, corrected", COMMONSENSE)
def test_commonsense_answer_as_droplora_reads_it_and_corrected(set_name, generation, paper, corrected):
    assert commonsense_answer(set_name, generation) == paper
    assert commonsense_answer(set_name, generation, "corrected") == corrected


def test_commonsense_refuses_unknown_sets_and_modes():
    with pytest.raises(ValueError, match="unknown commonsense set 'copa'"):
        commonsense_answer("copa", "x")
    with pytest.raises(ValueError, match="unknown scoring 'strict'; use one of: paper, corrected"):
        commonsense_answer("boolq", "true", "strict")


@pytest.mark.parametrize("generation, paper, corrected", CODE)
def test_code_extraction_as_droplora_and_corrected(generation, paper, corrected):
    if paper == RAISES:
        with pytest.raises(ScoringError, match="DropLoRA's code extractor raises ValueError"):
            extract_code(generation)
    else:
        assert extract_code(generation) == paper
    assert extract_code(generation, "corrected") == corrected


def test_corrected_code_keeps_a_fenced_body_only_answer_runnable():
    fenced_body = "```python\n    return a + b\n```"
    head = 'def add(a, b):\n    """Add."""\n'
    program = head + extract_code(fenced_body, "corrected") + "assert add(2, 3) == 5\n"
    exec(compile(program, "<completion>", "exec"), {})
    with pytest.raises(SyntaxError, match="'return' outside function"):  # paper mode strips the indentation
        compile(head + extract_code(fenced_body) + "\n", "<completion>", "exec")


def _odd_texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    pieces = [
        "The answer is: ",
        "9" * 400,
        "-",
        "/",
        "0",
        "00",
        ",",
        ".",
        ".\n",
        "\\frac",
        "\\sqrt",
        "\\text{ ",
        "=",
        "```python\n",
        "```",
        "\r\n",
        "assert",
        '__name__ == "__main__"',
        "### Response:",
        "### Instruction:",
        "true",
        "answer1",
        "é",
        "😀",
        "\x00",
        "\u202e",
        "½",
        "٣",
        " ",
        "\n",
        "$",
        "%",
        "{",
        "}",
    ]
    texts = ["", "9" * 5000, "The answer is: " + "9" * 5000 + "/" + "7" * 5000, "\ud800", "The answer is: \ud800"]
    for _ in range(count):
        texts.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
        texts.append("".join(chr(rng.randint(0, 0x2FFFF)) for _ in range(rng.randint(0, 30))))
    return texts


@pytest.mark.parametrize("scoring", ["paper", "corrected"])
def test_no_generated_text_crashes_scoring(scoring):
    records = {name: {"answer": "answer1"} for name in COMMONSENSE_PATTERNS}
    records |= {
        "gsm8k": {"answer": "42"},
        "math": {"answer": "\\frac{1}{2}"},
        "humaneval": {"task_id": "HumanEval/0", "prompt": ""},
        "mbpp": {"task_id": 1, "test_list": []},
    }
    errors = 0
    for text in _odd_texts(0, 300):
        for name, record in records.items():
            row = score(name, record, text, scoring)
            assert isinstance(row["prediction"], (str, int, float, type(None)))
            if name not in ("humaneval", "mbpp"):
                assert row["correct"] in (True, False)
            if "error" in row:
                errors += 1
                assert row["error"] and row.get("correct", False) is False
    if scoring == "paper":
        assert errors > 0  # the references do raise on some of these; they are recorded, not raised
