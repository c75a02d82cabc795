"""Forward+backward time of SimCVD's SDM head as nn.Conv3d (1x1x1) and as the einsum it uses (docs/cost.md).

    python scripts/sdm_head_microbench.py [--shape 2 8 32 64 64] [--maps 7] [--repeats 20]
"""
import argparse
import time

import torch

from nnunet_ext.simcvd import SignedDistanceHead


def _median_ms(fn, repeats):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=5, default=[2, 8, 32, 64, 64], help="decoder features B C D H W")
    parser.add_argument("--maps", type=int, default=7, help="foreground classes")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    features = torch.randn(*args.shape, requires_grad=True)
    head = SignedDistanceHead(args.shape[1], args.maps, 3)

    def conv():
        torch.tanh(head.conv(features)).sum().backward()

    def einsum():
        head(features).sum().backward()

    print(f"torch threads {torch.get_num_threads()}, features {args.shape}, {args.maps} maps")
    print(f"nn.Conv3d 1x1x1 + tanh, forward+backward: {_median_ms(conv, args.repeats):.1f} ms")
    print(f"einsum + tanh (SignedDistanceHead), forward+backward: {_median_ms(einsum, args.repeats):.1f} ms")


if __name__ == "__main__":
    main()
