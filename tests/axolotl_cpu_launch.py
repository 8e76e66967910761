"""Test-only: Axolotl's real `axolotl.cli.train` in several processes on CPU, under DeepSpeed or FSDP2.

    python -m torch.distributed.run --nproc_per_node 2 tests/axolotl_cpu_launch.py recipe.yml

This machine has no GPU, and Axolotl 0.21.0 assumes one as soon as WORLD_SIZE > 1: it fails
before training for the reasons numbered below, none of which an environment variable or a
recipe key avoids. This file patches exactly those, at import time and inside this process only
(nothing installed changes), then runs Axolotl's own `axolotl.cli.train` entry point on the recipe,
as `python -m axolotl.cli.train recipe.yml` does. Each patch names the Axolotl, accelerate or
transformers line it works around and the engines that reach it (each was checked by leaving it
out). On GPUs none of it is needed: run `accelerate launch -m axolotl.cli.train recipe.yml` (or
torchrun), and this launcher refuses to run where CUDA is available. The package axolotl_droplora
patches nothing; the recipe names the plugins as a user's would.
"""

from __future__ import annotations

import os
import runpy
import sys
from contextlib import contextmanager

import torch

if torch.cuda.is_available():
    sys.exit(
        "axolotl_cpu_launch.py is for CPU-only test machines: on GPUs run "
        "`accelerate launch -m axolotl.cli.train recipe.yml`, which needs none of these patches"
    )

import axolotl
import axolotl.cli.config
import axolotl.loaders.model
import axolotl.utils.environment
from accelerate import PartialState
from accelerate.parallelism_config import ParallelismConfig
from accelerate.utils import DistributedType
from axolotl.core.trainers.base import AxolotlTrainer

# the lines below were read in Axolotl 0.21.0; another version may have moved them
if axolotl.__version__ != "0.21.0":
    sys.exit(f"axolotl_cpu_launch.py patches Axolotl 0.21.0's lines, found Axolotl {axolotl.__version__}")


def _replace(module, name: str, new) -> None:
    """Swap module.name for `new`, failing loudly if Axolotl no longer has that name."""
    if not hasattr(module, name):
        sys.exit(f"axolotl_cpu_launch.py: {module.__name__}.{name} is gone; the patch needs re-reading")
    setattr(module, name, new)


# 1. axolotl/utils/environment.py, check_cuda_p2p_support (called by check_cuda_p2p_ib_support from
#    prepare_optim_env, axolotl/utils/trainer.py:732): with WORLD_SIZE > 1 it calls
#    `torch.cuda.can_device_access_peer(local_rank, other_rank)`, which raises "Found no NVIDIA
#    driver on your system" without CUDA (it catches only AssertionError). It asks whether NCCL may
#    use peer-to-peer between two GPUs; gloo between CPU processes has no such question, so "yes"
#    (Axolotl then leaves NCCL_P2P_DISABLE alone, which only NCCL reads).
_replace(axolotl.utils.environment, "check_cuda_p2p_support", lambda: True)


# 2. axolotl/utils/config/__init__.py:256, normalize_config: with WORLD_SIZE > 1 it sets
#    `cfg.device_map = {"": int(LOCAL_RANK)}`, a CUDA device index, over the CPU device map that
#    choose_device (line 154) had picked; ModelLoader._set_device_map_config then hands it to
#    from_pretrained for DeepSpeed ZeRO-1/2 and DDP (ZeRO-3 and FSDP load without one), which
#    fails on CPU with the same "Found no NVIDIA driver". Put back the CPU placement: each rank
#    loads its copy into its own memory, as each GPU rank would. Patched where load_cfg
#    (axolotl/cli/config.py) looks the function up.
_normalize_config = axolotl.cli.config.normalize_config


def normalize_config_on_cpu(cfg):
    _normalize_config(cfg)
    if cfg.world_size > 1 and cfg.device_map == {"": cfg.local_rank}:
        cfg.device_map = {"": "cpu"}


_replace(axolotl.cli.config, "normalize_config", normalize_config_on_cpu)


# 3. axolotl/utils/distributed.py:361, build_parallelism_config: `build_device_mesh("cuda")` is
#    hard-coded; under FSDP (and tensor/context parallelism) with 2 processes ModelLoader asks it
#    for a dp_shard mesh of size 2 (_set_parallel_config, axolotl/loaders/model.py:874, called only
#    for those: lines 390-401), and torch's init_device_mesh calls torch.cuda.set_device for a
#    "cuda" mesh, which fails without CUDA. Axolotl's function runs unchanged except that the
#    mesh is a CPU (gloo) one. Patched where ModelLoader looks it up.
_build_parallelism_config = axolotl.loaders.model.build_parallelism_config
_build_device_mesh = ParallelismConfig.build_device_mesh


@contextmanager
def _meshes_on_cpu():
    ParallelismConfig.build_device_mesh = lambda self, device_type: _build_device_mesh(self, "cpu")
    try:
        yield
    finally:
        ParallelismConfig.build_device_mesh = _build_device_mesh


def build_parallelism_config_on_cpu(cfg):
    with _meshes_on_cpu():
        return _build_parallelism_config(cfg)


_replace(axolotl.loaders.model, "build_parallelism_config", build_parallelism_config_on_cpu)


# 4. The process group. accelerate/state.py, PartialState.__init__ and _prepare_backend: with
#    LOCAL_RANK set and no GPU, no branch picks a backend (the CPU one, gloo, only with cpu=True,
#    which also turns DeepSpeed and FSDP off), so the state's type is NO and the Trainer sees a
#    world of one (ZeRO-2 stops on DeepSpeed's "train_batch_size is not equal to
#    micro_batch_per_gpu * gradient_acc_step * world_size 4 != 2 * 2 * 2"); and
#    AcceleratorState.__init__ (accelerate/state.py, `elif self.distributed_type in
#    [DistributedType.MULTI_GPU, ...]`) turns FSDP on only for GPU-like distributed types
#    ("Using fsdp only works in distributed training", transformers/trainer.py:478; with use_cpu
#    it would silently run DDP). Axolotl builds that state in prepare_optim_env
#    (setup_deepspeed_env -> init_distributed_state, axolotl/utils/trainer.py:638), so it is built
#    first here, from the same validated config, over gloo: with ACCELERATE_USE_DEEPSPEED=true
#    (what setup_deepspeed_env sets a few lines later) for DeepSpeed, or calling itself MULTI_GPU
#    for FSDP (its device stays the CPU: it was chosen while the type was still NO). Axolotl's
#    later PartialState() calls get this shared state back. The trainer must then keep it rather
#    than build a new one from the environment: transformers' TrainingArguments._setup_devices
#    does so with `accelerator_config.use_configured_state` (transformers/training_args.py:
#    1817-1837), and Axolotl passes its `accelerator_config` recipe key to transformers'
#    AcceleratorConfig (axolotl/core/builders/base.py:661, _configure_accelerator_config): set
#    here on the validated config, so that the recipes stay GPU recipes.
_prepare_optim_env = axolotl.cli.config.prepare_optim_env
_state_built_here = False


def prepare_optim_env_over_gloo(cfg):
    global _state_built_here
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and (cfg.deepspeed or cfg.fsdp_config):
        if PartialState._shared_state:
            sys.exit("axolotl_cpu_launch.py: accelerate's state was built before prepare_optim_env")
        if cfg.deepspeed:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
            PartialState(backend="gloo")
        else:
            state = PartialState(backend="gloo")
            state.distributed_type = DistributedType.MULTI_GPU
        cfg.accelerator_config = {**(cfg.accelerator_config or {}), "use_configured_state": True}
        _state_built_here = True
    _prepare_optim_env(cfg)


_replace(axolotl.cli.config, "prepare_optim_env", prepare_optim_env_over_gloo)


# 5. Keeping that state in the trainer. axolotl/core/trainers/base.py:1033-1040,
#    AxolotlTrainer.create_accelerator_and_postprocess, resets accelerate's state unless
#    `self.args.accelerator_config.to_dict()` has use_configured_state; but transformers'
#    _setup_devices has already popped that key from the AcceleratorConfig
#    (transformers/training_args.py:1819, `self.accelerator_config.pop("use_configured_state")`),
#    so Axolotl always resets, and accelerate rebuilds the state from the environment: on GPUs the
#    right NCCL one, here one with no backend (FSDP then fails with "Using fsdp only works in
#    distributed training"; DeepSpeed keeps working only because deepspeed.comm stays initialised).
#    When the state was built above, skip just the reset: the rest of the method's MRO runs as is.
_create_accelerator_and_postprocess = AxolotlTrainer.create_accelerator_and_postprocess


def create_accelerator_keeping_the_gloo_state(self):
    if not _state_built_here:
        return _create_accelerator_and_postprocess(self)
    return super(AxolotlTrainer, self).create_accelerator_and_postprocess()


_replace(AxolotlTrainer, "create_accelerator_and_postprocess", create_accelerator_keeping_the_gloo_state)


if __name__ == "__main__":
    # what `python -m axolotl.cli.train recipe.yml [--key value ...]` runs, with its argv
    sys.argv = ["axolotl.cli.train", *sys.argv[1:]]
    runpy.run_module("axolotl.cli.train", run_name="__main__", alter_sys=True)
