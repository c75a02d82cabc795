"""How much of each organ MedContext's block mask hides, over many masks drawn on a dataset's training labels.

Used to test one explanation of MedContext's per-organ results on the CPU grid (docs/benchmarks.md): whether a
small organ vanishes under the mask more often than the others. The mask is the trainer's own (the library's
``block_mask`` with ``default_cell_size`` of the patch), drawn with a seeded generator; each label image must
have the patch's shape (the CPU grid's patch is its whole volume).

    python scripts/medcontext_hidden_fraction.py work_data/benchmark_cpu/raw/Dataset510_PhantomBenchmark/labelsTr \
        --patch 24 48 48 --cases 50 --masks 200
"""
import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from nnunet_ext.masking import block_mask, default_cell_size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labels", type=Path, help="a labelsTr folder of nnU-Net raw data")
    parser.add_argument("--patch", type=int, nargs=3, required=True, help="patch size (z y x) = label image size")
    parser.add_argument("--ratio", type=float, default=0.4, help="mask ratio (the trainer's default 0.4)")
    parser.add_argument("--cases", type=int, default=50, help="first N label images, sorted by name")
    parser.add_argument("--masks", type=int, default=200, help="masks drawn per case")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    files = sorted(args.labels.glob("*.nii.gz"))[:args.cases]
    if not files:
        parser.error(f"no .nii.gz label images in {args.labels}")
    names = json.loads((args.labels.parent / "dataset.json").read_text())["labels"]
    organs = {int(v): k for k, v in names.items() if int(v) > 0}
    cell = default_cell_size(args.patch, 8, 4)
    generator = torch.Generator().manual_seed(args.seed)
    hidden = {label: [] for label in organs}
    voxels = {label: [] for label in organs}
    for f in files:
        labels = torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.int64))
        if tuple(labels.shape) != tuple(args.patch):
            parser.error(f"{f.name} has shape {tuple(labels.shape)}, not the patch {tuple(args.patch)}")
        masks = block_mask(args.masks, args.patch, cell, args.ratio, generator=generator)[:, 0]
        for label in organs:
            organ = labels == label
            if organ.any():
                voxels[label].append(int(organ.sum()))
                hidden[label].append((masks & organ).flatten(1).sum(1).float() / organ.sum())

    print(f"cell {cell}, ratio {args.ratio}, {len(files)} cases x {args.masks} masks\n")
    print("| organ | median voxels | mean hidden | P(>= 75 % hidden) | P(>= 90 % hidden) |")
    print("|---|---|---|---|---|")
    for label, name in organs.items():
        h = torch.cat(hidden[label])
        print(f"| {name} | {np.median(voxels[label]):.0f} | {h.mean():.2f} | {(h >= 0.75).float().mean():.3f} | "
              f"{(h >= 0.9).float().mean():.3f} |")


if __name__ == "__main__":
    main()
