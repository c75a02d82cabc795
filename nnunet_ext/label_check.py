"""A check, in the data-loading workers, that training patches hold only the labels dataset.json defines.

nnU-Net verifies the raw labels only when planning is run with ``--verify_dataset_integrity``. Without it, a
label file with a value that dataset.json does not list is preprocessed as it is, and training later fails
inside the cross-entropy (an index error on the CPU, a device-side assert on CUDA) with no word about the
data. The check costs one min/max per patch on the CPU worker.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

from nnunet_ext.errors import UserInputError

__all__ = ["allowed_label_values", "CheckLabelValuesTransform"]

# nnU-Net's preprocessing marks voxels outside the nonzero region with -1 (crop_to_nonzero)
OUTSIDE_NONZERO_REGION = -1


def allowed_label_values(foreground_labels: Iterable[int], ignore_label: Optional[int] = None) -> list[int]:
    """Values a preprocessed segmentation may hold: -1 (outside the nonzero region), 0, the foreground labels
    and the ignore label."""
    values = {OUTSIDE_NONZERO_REGION, 0, *(int(v) for v in foreground_labels)}
    if ignore_label is not None:
        values.add(int(ignore_label))
    return sorted(values)


class CheckLabelValuesTransform(BasicTransform):
    """Raises :class:`UserInputError` when ``data_dict['segmentation']`` holds a value outside ``allowed``.

    Args:
        allowed: the legal values (:func:`allowed_label_values`).
        dataset_name: named in the message, with the commands that find and fix the case.
    """

    def __init__(self, allowed: Iterable[int], dataset_name: str = "the dataset"):
        super().__init__()
        self.allowed = sorted(int(v) for v in allowed)
        self.dataset_name = dataset_name
        # contiguous allowed values (the usual case) need only the min and max of the patch
        self._contiguous = self.allowed == list(range(self.allowed[0], self.allowed[-1] + 1))

    def apply(self, data_dict: dict, **params) -> dict:
        seg = data_dict.get("segmentation")
        if seg is None:
            return data_dict
        seg = seg[0] if isinstance(seg, (list, tuple)) else seg
        low, high = int(seg.min()), int(seg.max())
        if low >= self.allowed[0] and high <= self.allowed[-1] and self._contiguous:
            return data_dict
        present = torch.unique(seg).tolist()
        unexpected = sorted(set(int(v) for v in present) - set(self.allowed))
        if unexpected:
            dataset_id = self.dataset_name[len("Dataset"):].split("_")[0] \
                if self.dataset_name.startswith("Dataset") else self.dataset_name
            raise UserInputError(
                f"A training case of {self.dataset_name} has label value(s) {unexpected} that its dataset.json "
                f"does not define (it defines {[v for v in self.allowed if v >= 0]}). Training cannot use such a "
                f"segmentation. Find the label file(s) with `nnUNetv2_extract_fingerprint -d {dataset_id} "
                f"--verify_dataset_integrity` (it checks the raw labels and overwrites nothing), then either fix "
                f"the label file(s) or add the label(s) to dataset.json, and run nnUNetv2_preprocess again.")
        return data_dict
