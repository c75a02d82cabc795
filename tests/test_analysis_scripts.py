"""The analysis scripts under scripts/ that docs/benchmarks.md quotes figures from."""
import importlib.util
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_labels(folder, arrays):
    labels = folder / "labelsTr"
    labels.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "cell_organ": 1, "big": 2}}))
    for i, array in enumerate(arrays):
        sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(labels / f"case_{i:03d}.nii.gz"))
    return labels


def parse_table(text):
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("organ", "---"):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


def test_hidden_fraction_matches_the_mask_cell_arithmetic(tmp_path, capsys):
    # patch 16x32x32 -> cells of 4x4x4 (edge 32/8 = 4, at least 4): 4*8*8 = 256 cells, round(0.4*256) = 102 hidden.
    # An organ that is exactly one cell is hidden whole or not at all, with probability 102/256; an organ made of
    # whole cells is hidden by 102/256 on average.
    array = np.zeros((16, 32, 32))
    array[4:8, 8:12, 12:16] = 1
    array[8:16, 16:32, 0:16] = 2
    labels = write_labels(tmp_path, [array, array])
    load_script("medcontext_hidden_fraction").main(
        [str(labels), "--patch", "16", "32", "32", "--cases", "2", "--masks", "2000", "--seed", "3"])
    out = capsys.readouterr().out
    assert "cell (4, 4, 4)" in out
    rows = parse_table(out)
    expected = 102 / 256
    voxels, mean_hidden, p75, p90 = rows["cell_organ"]
    assert voxels == 64
    assert p75 == p90  # all or nothing
    assert p90 == pytest.approx(expected, abs=0.03)  # 4,000 draws: standard error 0.008
    assert mean_hidden == pytest.approx(expected, abs=0.03)
    assert rows["big"][0] == 8 * 16 * 16
    assert rows["big"][1] == pytest.approx(expected, abs=0.01)


def test_hidden_fraction_refuses_labels_of_another_shape(tmp_path):
    labels = write_labels(tmp_path, [np.zeros((8, 16, 16))])
    with pytest.raises(SystemExit):
        load_script("medcontext_hidden_fraction").main([str(labels), "--patch", "16", "32", "32"])
