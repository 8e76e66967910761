"""The README's runnable examples run as written."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from conftest import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block_after(heading: str) -> str:
    section = README.read_text().split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_trl_example_trains_and_saves_a_plain_lora(tmp_path, demo_dir):
    code = python_block_after("## Use it from TRL's SFTTrainer")
    assert '"demo/model"' in code
    (tmp_path / "example.py").write_text(code.replace('"demo/model"', repr(str(demo_dir / "model"))))
    done = run_cli([sys.executable, "example.py"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((tmp_path / "sft-droplora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16
