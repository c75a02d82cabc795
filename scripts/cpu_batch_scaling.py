"""How the plans network's forward+backward time scales with the batch on this device.

Why MedContext runs its clean and masked student passes separately on the CPU (docs/cost.md): compares one pass
of the configuration's batch B, one concatenated pass of 2B, two passes of B with one backward, and the
forward alone at batch 1 and B. Interleaved repetitions, medians.

    python scripts/cpu_batch_scaling.py -d 501 -c 3d_small [-p nnUNetPlans] [--repeats 12] [-device cpu]

Needs nnUNet_preprocessed (and nnUNet_results, for the trainer's log folder: use a scratch folder).
"""
import argparse
import contextlib
import io
import os
import time

import numpy as np
import torch


def build_network(dataset: str, configuration: str, plans_name: str, device: torch.device):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    folder = os.path.join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset))
    plans = load_json(os.path.join(folder, plans_name + ".json"))
    plans["continue_training"] = False
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = nnUNetTrainer(plans=plans, configuration=configuration, fold=0,
                                dataset_json=load_json(os.path.join(folder, "dataset.json")), device=device)
        trainer.initialize()
    trainer.network.train()
    return trainer.network, trainer.configuration_manager


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset", required=True)
    parser.add_argument("-c", dest="configuration", required=True)
    parser.add_argument("-p", dest="plans", default="nnUNetPlans")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("-device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    network, configuration = build_network(args.dataset, args.configuration, args.plans, device)
    b = configuration.batch_size
    shape = (1, *configuration.patch_size)
    x1, xb, x2b = (torch.randn(n, *shape, device=device) for n in (1, b, 2 * b))

    def backward(*outputs):
        sum(o.float().mean() for out in outputs for o in (out if isinstance(out, (list, tuple)) else [out])).backward()

    cases = {
        f"forward+backward, one pass of B={b}": lambda: backward(network(xb)),
        f"forward+backward, one pass of 2B={2 * b}": lambda: backward(network(x2b)),
        f"forward+backward, two passes of B={b}": lambda: backward(network(xb), network(xb + 1)),
        f"forward only (no grad), B={b}": lambda: network(xb),
        "forward only (no grad), B=1": lambda: network(x1),
    }
    times = {name: [] for name in cases}
    for repeat in range(args.repeats + 2):
        for name, run in cases.items():
            network.zero_grad(set_to_none=True)
            with contextlib.nullcontext() if "backward" in name else torch.no_grad():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run()
                if device.type == "cuda":
                    torch.cuda.synchronize()
            if repeat >= 2:
                times[name].append(time.perf_counter() - start)
    reference = np.median(times[f"forward+backward, one pass of B={b}"])
    print(f"{args.configuration}, patch {configuration.patch_size}, {device}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print("| what | median s | relative to one pass of B |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {np.median(values):.4f} | {np.median(values) / reference:.2f} |")


if __name__ == "__main__":
    main()
