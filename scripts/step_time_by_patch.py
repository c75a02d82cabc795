"""Median training-step time of one planned nnU-Net network on several patch sizes, side by side in one process.

Used to size the benchmark's modes (docs/benchmarks.md, "The CPU grid"): the same network, optimiser and batch
size, one forward and backward pass per step on random data, the patch sizes interleaved so that a machine that
slows down part-way affects all alike. Data augmentation is not included.

    python scripts/step_time_by_patch.py PLANS.json 3d_small --patches 32 64 64 24 48 48 [--repeats 8]
"""
import argparse
import json
import statistics
import time

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plans", help="an nnU-Net plans file (nnUNetPlans.json)")
    parser.add_argument("configuration")
    parser.add_argument("--patches", type=int, nargs="+", required=True, help="patch sizes, 3 numbers each")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--classes", type=int, default=8, help="output channels (labels with background)")
    args = parser.parse_args(argv)
    if len(args.patches) % 3:
        parser.error("--patches takes 3 numbers per patch")
    config = PlansManager(json.load(open(args.plans))).get_configuration(args.configuration)
    torch.manual_seed(0)
    net = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                 config.network_arch_init_kwargs_req_import, 1, args.classes, allow_init=True,
                                 deep_supervision=True)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    patches = [tuple(args.patches[i:i + 3]) for i in range(0, len(args.patches), 3)]
    inputs = {p: torch.randn(config.batch_size, 1, *p) for p in patches}

    def step(x):
        optimiser.zero_grad()
        loss = sum(o.float().mean() for o in net(x))
        loss.backward()
        optimiser.step()

    for x in inputs.values():  # warm-up: oneDNN picks its kernels per shape
        for _ in range(3):
            step(x)
    seconds = {p: [] for p in patches}
    for _ in range(args.repeats):
        for p, x in inputs.items():
            start = time.perf_counter()
            step(x)
            seconds[p].append(time.perf_counter() - start)
    reference = statistics.median(seconds[patches[0]])
    print(f"{args.configuration}, batch {config.batch_size}, torch threads {torch.get_num_threads()}")
    for p in patches:
        median = statistics.median(seconds[p])
        print(f"patch {'x'.join(map(str, p))}: median step {median:.3f} s, {median / reference:.2f}x the first")


if __name__ == "__main__":
    main()
