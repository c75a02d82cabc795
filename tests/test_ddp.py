"""nnU-Net's DDP code path with a 2-process gloo group on the CPU (NCCL replaced by gloo, nothing else).

Each rank builds the trainer as nnUNetv2_train does under DDP (nnU-Net wraps the network in DDP in
``initialize``; the network is moved to the CPU and ``device_ids`` dropped, which CPU modules require), then takes
two optimiser steps on its own, different batches. Afterwards the student (averaged by DDP), the extra trainable
modules (heads, mask value: averaged by our trainers) and the EMA teachers must be identical on both ranks.
"""
import json
import os
import socket

import numpy as np
import pytest
import torch

from conftest import nnunet_env

TRAINERS = ["nnUNetTrainerMedContext", "nnUNetTrainerSimCVD", "nnUNetTrainerVolumeFusion"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(trainer, rank: int) -> dict:
    """A synthetic batch in the form the trainer's loader gives (deep-supervision targets, SDMs, unlabeled)."""
    from nnunet_ext.sdm import AppendSignedDistanceMapTransform

    generator = torch.Generator().manual_seed(100 + rank)  # every rank sees other data
    patch = trainer.configuration_manager.patch_size
    b, heads = trainer.batch_size, trainer.label_manager.num_segmentation_heads
    full = torch.randint(0, 8, (b, 1, *patch), generator=generator).float()
    scales = np.cumprod(trainer.configuration_manager.pool_op_kernel_sizes[1:-1], axis=0)
    target = [full] + [torch.nn.functional.interpolate(full, scale_factor=[1 / s for s in scale], mode="nearest")
                       for scale in scales]
    batch = {"data": torch.randn(b, 1, *patch, generator=generator), "target": target}
    if hasattr(trainer, "complete_batch"):  # SimCVD
        sdm = torch.stack([AppendSignedDistanceMapTransform(heads).maps(s) for s in full])
        batch["target"] = target + [sdm]
        batch["unlabeled"] = torch.randn(b, 1, *patch, generator=generator)
    return batch


def _worker(rank: int, world: int, port: int, env: dict, trainer_name: str, out: str):
    import torch.distributed as dist
    from batchgenerators.utilities.file_and_folder_operations import load_json

    os.environ.update(env)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
        from torch.nn.parallel import DistributedDataParallel

        from nnunet_ext.ema import unwrap_module
        from nnunet_ext.training import medcontext, simcvd, volume_fusion

        # CPU modules take no device_ids; everything else is nnU-Net's own DDP path
        nnunet_trainer_module.DDP = lambda module, device_ids=None: DistributedDataParallel(module)
        cls = {**{n: getattr(medcontext, n) for n in medcontext.__all__},
               **{n: getattr(simcvd, n) for n in simcvd.__all__},
               **{n: getattr(volume_fusion, n) for n in volume_fusion.__all__}}[trainer_name]
        folder = os.path.join(env["nnUNet_preprocessed"], env["DATASET_NAME"])
        plans = load_json(os.path.join(folder, "nnUNetPlans.json"))
        plans["continue_training"] = False
        plans["configurations"]["3d_tiny"]["batch_size"] = 4  # the global batch: 2 per rank
        trainer = cls(plans=plans, configuration="3d_tiny", fold="all" if "VolumeFusion" in trainer_name else 0,
                      dataset_json=load_json(os.path.join(folder, "dataset.json")), device=torch.device("cpu"))
        trainer.device, trainer.grad_scaler = torch.device("cpu"), None  # nnU-Net assumes CUDA under DDP
        torch.manual_seed(0)  # same initial weights on both ranks, as nnU-Net's DDP broadcast makes them
        trainer.initialize()
        assert trainer.is_ddp and isinstance(trainer.network, DistributedDataParallel)
        if hasattr(trainer, "teacher"):
            unwrap_module(trainer.teacher).load_state_dict(trainer.unwrapped_network.state_dict())
        trainer.network.train()
        trainer.on_train_epoch_start()
        losses = [float(trainer.train_step(_batch(trainer, rank))["loss"]) for _ in range(2)]
        states = {"network": trainer.unwrapped_network.state_dict()}
        for name, module in trainer._extra_modules.items():
            states[name] = unwrap_module(module).state_dict()
        gathered = [None] * world
        dist.all_gather_object(gathered, {k: {n: t.detach().cpu() for n, t in v.items()} for k, v in states.items()})
        identical = {module: all(torch.equal(gathered[0][module][n], gathered[1][module][n])
                                 for n in gathered[0][module]) for module in states}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"losses": losses, "identical": identical, "batch_size": trainer.batch_size,
                       "global_step": trainer.global_step}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_two_ranks_stay_in_sync(tiny_semi_dataset, tmp_path, trainer_name):
    import torch.multiprocessing as mp

    env = {k: v for k, v in nnunet_env(tiny_semi_dataset, training=True).items() if k.startswith("nnUNet_")}
    env["nnUNet_results"] = str(tmp_path / "results")
    env["DATASET_NAME"] = tiny_semi_dataset["dataset_name"]
    mp.spawn(_worker, args=(2, _free_port(), env, trainer_name, str(tmp_path)), nprocs=2, join=True)
    reports = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    for report in reports:
        assert report["batch_size"] == 2 and report["global_step"] == 2
        assert all(np.isfinite(report["losses"]))
        # the student, every extra module (heads, mask value) and the teachers are the same on both ranks
        assert all(report["identical"].values()), report["identical"]
    assert set(reports[0]["identical"]) >= {"network"}
    # the ranks trained on different data
    assert reports[0]["losses"] != reports[1]["losses"]
