"""Time the parts of a SimCVD step in isolation against one plain nnU-Net pass, on the same batches (docs/cost.md).

Needs nnUNet_raw / nnUNet_preprocessed set and a dataset with a preprocessed unlabeled pool:

    python scripts/simcvd_step_parts.py -d 501 -c 3d_fullres [--repeats 4]
"""
import argparse
import os
import tempfile
import time

import torch


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset", required=True)
    parser.add_argument("-c", dest="configuration", required=True)
    parser.add_argument("-p", dest="plans", default="nnUNetPlans")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_results", tempfile.mkdtemp())
    os.environ["nnUNet_n_proc_DA"] = "0"
    os.environ["nnUNet_compile"] = "f"
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.cost_benchmark import draw_batches, make_trainer, resolve_setup, trainer_batches
    from nnunet_ext.training.simcvd import nnUNetTrainerSimCVD

    torch.set_num_threads(os.cpu_count())
    setup = resolve_setup(args.dataset, args.configuration, args.plans)
    simcvd = make_trainer(nnUNetTrainerSimCVD, setup, torch.device("cpu"), 0)
    plain = make_trainer(nnUNetTrainer, setup, torch.device("cpu"), 0)
    batches = trainer_batches(simcvd, draw_batches(plain, args.repeats, 0))
    net = simcvd.network
    for batch in batches:
        data, unlabeled, target = batch["data"], batch["unlabeled"], batch["target"][:-1]
        simcvd.optimizer.zero_grad()
        out_l, fwd_l = _timed(lambda: net(data))
        out_u, fwd_u = _timed(lambda: net(unlabeled))
        loss = simcvd.loss(out_l, target) + out_u[0].float().softmax(1).mean()
        _, bwd = _timed(loss.backward)
        with torch.no_grad():
            _, teacher = _timed(lambda: simcvd.teacher(unlabeled))
        simcvd.optimizer.zero_grad()
        out, fwd = _timed(lambda: net(data))
        _, bwd_plain = _timed(simcvd.loss(out, target).backward)
        for tap in (*simcvd._student_taps, *simcvd._teacher_taps):
            tap.clear()
        print(f"two passes: forward {fwd_l:.2f} + {fwd_u:.2f} s, backward {bwd:.2f} s | teacher forward "
              f"{teacher:.2f} s | one plain pass: forward {fwd:.2f} s, backward {bwd_plain:.2f} s")


if __name__ == "__main__":
    main()
