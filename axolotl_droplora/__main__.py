from .cli import droplora

droplora(prog_name="python -m axolotl_droplora")
