"""`axolotl droplora …` (and `python -m axolotl_droplora …`): this package's commands."""

from __future__ import annotations

from pathlib import Path

import click


@click.group(name="droplora")
def droplora():
    """DropLoRA / MiLoRA tools."""


@droplora.command("make-demo")
@click.argument("demo_dir", type=click.Path(file_okay=False, path_type=Path), default="demo")
def make_demo_command(demo_dir: Path):
    """Build the embedded demo (tiny Llama, arithmetic data, droplora.yml) in DEMO_DIR."""
    from .demo import make_demo

    recipe = make_demo(demo_dir)
    click.echo(f"wrote {recipe}\ntrain it with: axolotl train {recipe}")
