"""Synthetic multi-organ abdomen phantom in nnU-Net v2 raw format.

Each case is a CT-like 3-D volume of an abdomen with labelled organs (liver, spleen, kidneys, stomach,
pancreas, aorta) and unlabelled context (body wall fat and muscle, vertebra, ribs, psoas, inferior vena
cava, gallbladder, bowel). Intensities overlap between organs on purpose (liver vs spleen, pancreas vs
bowel and muscle, aorta vs vena cava), so that a network must use position and context, as in real CT.

Conventions:
    - arrays are ``(z, y, x)``; written with identity direction, so in ITK's LPS world x grows towards
      the patient's left, y towards posterior and z towards superior. In a plotted axial slice the
      patient's right is on the image's left and anterior is up (radiological view).
    - the anatomy is defined in coordinates normalised to the field of view (``[-1, 1]`` on every axis),
      so any grid shape contains the whole abdomen; ``spacing`` is written as metadata and sets how much
      more the partial-volume blur spreads along the thick-slice axis.
    - every case depends only on ``(seed, index)`` (and the grid), so a dataset of N cases is a prefix of
      a dataset of N + k cases.
    - a difficulty (:data:`DIFFICULTIES`) scales scan quality and anatomical variation without changing the
      sequence of random draws; ``standard`` is the phantom of :data:`PHANTOM_VERSION` 1 unchanged.

Command line: ``nnUNetv2_ext_generate_phantom`` (see :func:`main`).
"""
import argparse
import glob
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from nnunet_ext.errors import UserInputError

__all__ = [
    "DIFFICULTIES",
    "ORGANS",
    "PHANTOM_VERSION",
    "generate_case",
    "generate_dataset",
    "render_overview",
    "main",
]

#: Label value -> organ name (the names are the ``labels`` of ``dataset.json``).
ORGANS: Dict[int, str] = {
    0: "background",
    1: "liver",
    2: "spleen",
    3: "kidney_left",
    4: "kidney_right",
    5: "stomach",
    6: "pancreas",
    7: "aorta",
}

#: Bumped whenever the generator's output changes, so that stale datasets are not silently reused.
PHANTOM_VERSION = 1


@dataclass(frozen=True)
class Difficulty:
    """How hard a phantom is to segment: scan quality and how much anatomy varies between patients.

    Attributes:
        noise_hu: range of the white noise SD in HU (per case).
        correlated_noise_hu: range of the SD of the spatially correlated noise in HU.
        contrast: range of the contrast-phase factor scaling each tissue's enhancement (bolus timing).
        tissue_jitter_hu: SD of the per-case, per-tissue intensity offset in HU.
        bias: range of the multiplicative bias-field amplitude.
        organ_scale: range of the per-patient organ size factor.
        position_sd: factor on the SD of every organ position.
        deform: factor on every organ's boundary deformation.
        fat_gap: factor on the fat planes kept between neighbouring structures (smaller: organs abut).
    """

    noise_hu: Tuple[float, float] = (10.0, 20.0)
    correlated_noise_hu: Tuple[float, float] = (3.0, 8.0)
    contrast: Tuple[float, float] = (0.75, 1.2)
    tissue_jitter_hu: float = 6.0
    bias: Tuple[float, float] = (0.01, 0.03)
    organ_scale: Tuple[float, float] = (0.9, 1.1)
    position_sd: float = 1.0
    deform: float = 1.0
    fat_gap: float = 1.0


#: Named difficulties. ``standard`` is version 1's phantom, unchanged. ``hard`` is a low-dose scan at a
#: variable contrast phase (from almost unenhanced to portal-venous) of patients whose organs vary more in
#: size, place and shape and abut each other with thin fat planes, as in lean patients.
DIFFICULTIES: Dict[str, Difficulty] = {
    "standard": Difficulty(),
    "hard": Difficulty(noise_hu=(30.0, 50.0), correlated_noise_hu=(6.0, 14.0), contrast=(0.3, 1.0),
                       tissue_jitter_hu=10.0, bias=(0.03, 0.08), organ_scale=(0.8, 1.2), position_sd=1.6,
                       deform=1.8, fat_gap=0.35),
}


def _difficulty(name: str) -> Difficulty:
    if name not in DIFFICULTIES:
        raise PhantomConfigError(f"Unknown phantom difficulty '{name}'; choose one of {sorted(DIFFICULTIES)}.")
    return DIFFICULTIES[name]

_DEFAULT_SHAPE = (40, 80, 80)
_DEFAULT_SPACING = (2.5, 0.8, 0.8)
_SUBFOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "imagesUnlabeled")


class PhantomExistsError(UserInputError, FileExistsError):
    """The dataset folder exists and cannot be reused or replaced as requested."""


class PhantomConfigError(UserInputError, ValueError):
    """Invalid generator parameters or a conflicting dataset id."""


# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------
class _Grid:
    """Normalised open coordinate grids and smooth-field bases for one volume shape.

    Args:
        shape: volume shape ``(z, y, x)``.
    """

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(int(s) for s in shape)
        axes = [(np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1 for n in self.shape]
        self.z = axes[0][:, None, None]
        self.y = axes[1][None, :, None]
        self.x = axes[2][None, None, :]
        self._axes = axes
        self._bases = {}

    def _basis(self, axis: int, n_ctrl: int) -> np.ndarray:
        key = (axis, n_ctrl)
        if key not in self._bases:
            # Gaussian bumps on a fixed normalised lattice: the field depends on the coefficients only,
            # not on the grid resolution, and each point has unit variance for N(0, 1) coefficients.
            centers = np.linspace(-1.3, 1.3, n_ctrl, dtype=np.float32)
            width = centers[1] - centers[0]
            b = np.exp(-0.5 * ((self._axes[axis][:, None] - centers[None]) / width) ** 2)
            self._bases[key] = (b / np.linalg.norm(b, axis=1, keepdims=True)).astype(np.float32)
        return self._bases[key]

    def smooth_field(self, coef: np.ndarray) -> np.ndarray:
        """Evaluate a low-frequency random field from control-point coefficients.

        Args:
            coef: coefficients, shape ``(cz, cy, cx)`` with every entry >= 2 (more = higher frequency).

        Returns:
            float32 array of the grid shape, roughly unit variance for N(0, 1) coefficients.
        """
        bz, by, bx = (self._basis(a, n) for a, n in enumerate(coef.shape))
        f = np.einsum("abc,xc->abx", coef.astype(np.float32), bx)
        f = np.einsum("abx,yb->ayx", f, by)
        out = bz @ f.reshape(f.shape[0], -1)  # separable contraction: one BLAS call for the big axis
        return out.reshape(self.shape)


@dataclass
class _Blob:
    """A deformed, in-plane-rotated, z-tilted ellipsoid in normalised coordinates.

    Attributes:
        center: ``(z, y, x)`` centre.
        radii: ``(rz, ry, rx)`` semi-axes (``ry``/``rx`` before rotation).
        angle: in-plane rotation in radians.
        tilt: ``(dy/dz, dx/dz)``, how the centre drifts with z.
        deform: amplitude of the low-frequency boundary deformation (fraction of the radius).
        coef: control-point coefficients of the deformation field.
    """

    center: Tuple[float, float, float]
    radii: Tuple[float, float, float]
    angle: float = 0.0
    tilt: Tuple[float, float] = (0.0, 0.0)
    deform: float = 0.0
    coef: Optional[np.ndarray] = field(default=None, repr=False)

    def radius(self, g: _Grid) -> np.ndarray:
        """Normalised deformed radius: < 1 inside the blob, grows smoothly outside."""
        cz, cy, cx = self.center
        rz, ry, rx = self.radii
        dz = g.z - cz
        dy = g.y - (cy + self.tilt[0] * dz)
        dx = g.x - (cx + self.tilt[1] * dz)
        c, s = np.cos(self.angle), np.sin(self.angle)
        u = (c * dx + s * dy) / rx
        v = (c * dy - s * dx) / ry
        r = np.sqrt(u * u + v * v + (dz / rz) ** 2)
        if self.deform and self.coef is not None:
            r = r - self.deform * g.smooth_field(self.coef)
        return r


def _tube_radius(g: _Grid, cy: np.ndarray, cx: np.ndarray, ry: float, rx: float) -> np.ndarray:
    """Normalised radius of a tube along z with a z-dependent centre (arrays shaped ``(z, 1, 1)``)."""
    return np.sqrt(((g.y - cy) / ry) ** 2 + ((g.x - cx) / rx) ** 2)


# --------------------------------------------------------------------------------------------------
# Anatomy sampling (all in normalised coordinates; uses only the anatomy generator)
# --------------------------------------------------------------------------------------------------
def _jit(rng: np.random.Generator, value: float, sd: float) -> float:
    return float(value + rng.normal(0.0, sd))


def _coef(rng: np.random.Generator, n=(4, 4, 4)) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def _sample_anatomy(rng: np.random.Generator, d: Difficulty = DIFFICULTIES["standard"]) -> dict:
    """Draw one patient's anatomy: body outline, layers and organ blobs.

    All draws happen here, in a fixed order and independent of the grid, so the anatomy of case
    ``(seed, index)`` is the same at every resolution. The difficulty scales the spreads, never the
    sequence of draws, so a case's patient is the same one, more or less typical, at every difficulty.
    """
    ps, df = d.position_sd, d.deform

    def _pos(value, sd):  # an organ's pose (place and angle): spread scaled by the difficulty
        return _jit(rng, value, sd * ps)

    a = {"fat_gap": d.fat_gap}
    zs = rng.uniform(-0.15, 0.15)  # where the field of view sits along the patient's z axis
    a["z_shift"] = zs
    a["body"] = dict(
        cy=_jit(rng, 0.04, 0.02), cx=_jit(rng, 0.0, 0.02),
        ay=rng.uniform(0.66, 0.76), ax=rng.uniform(0.84, 0.93),
        taper=rng.uniform(0.0, 0.08), coef=_coef(rng, (3, 5, 5)),
        fat=rng.uniform(0.07, 0.16), muscle=rng.uniform(0.055, 0.08),
    )
    # Vertebra: posterior midline; discs repeat along z.
    a["spine"] = dict(cy=_jit(rng, 0.38, 0.02), cx=_jit(rng, 0.0, 0.01), r=rng.uniform(0.10, 0.12),
                      period=rng.uniform(0.55, 0.7), phase=rng.uniform(0, 1))
    a["ribs"] = dict(n=int(rng.integers(9, 12)), phase=rng.uniform(0, 2 * np.pi),
                     twist=rng.uniform(2.0, 3.5), z0=rng.uniform(-0.3, 0.0) + zs)
    a["psoas"] = dict(r=rng.uniform(0.05, 0.07), z0=rng.uniform(0.0, 0.3) + zs)

    sc = rng.uniform(*d.organ_scale)  # overall organ scale (patient size)
    side = rng.uniform(-0.03, 0.03)
    a["aorta"] = dict(cy=_pos(0.2, 0.015), cx=_pos(0.06, 0.015), r=rng.uniform(0.07, 0.085),
                      drift=(rng.normal(0, 0.02), rng.normal(0, 0.02)))
    a["ivc"] = dict(cy=_pos(0.2, 0.015), cx=_pos(-0.13, 0.015),
                    ry=rng.uniform(0.045, 0.06), rx=rng.uniform(0.065, 0.08))
    zl = _pos(-0.05, 0.08) + zs
    a["kidney_left"] = _Blob((zl, _pos(0.37, 0.02), _pos(0.37, 0.02) + side),
                             (0.42 * sc, 0.17 * sc, 0.115 * sc), angle=_pos(0.5, 0.1),
                             tilt=(0.0, rng.normal(0, 0.05)), deform=0.08 * df, coef=_coef(rng))
    a["kidney_right"] = _Blob((zl - rng.uniform(0.05, 0.2), _pos(0.37, 0.02), _pos(-0.37, 0.02) + side),
                              (0.42 * sc, 0.17 * sc, 0.115 * sc), angle=_pos(-0.5, 0.1),
                              tilt=(0.0, rng.normal(0, 0.05)), deform=0.08 * df, coef=_coef(rng))
    a["spleen"] = _Blob((_pos(0.45, 0.08) + zs, _pos(0.27, 0.03), _pos(0.53, 0.03)),
                        (0.32 * sc, 0.24 * sc, 0.13 * sc), angle=_pos(-0.6, 0.15),
                        tilt=(rng.normal(0, 0.1), rng.normal(0, 0.1)), deform=0.12 * df, coef=_coef(rng))
    a["pancreas"] = dict(z=_pos(0.1, 0.08) + zs, zslope=rng.uniform(0.1, 0.3), x0=_pos(-0.2, 0.03),
                         x1=_pos(0.48, 0.04), y0=_pos(0.04, 0.02), bend=rng.uniform(0.4, 0.7),
                         ry=rng.uniform(0.065, 0.08) * sc, rz=rng.uniform(0.14, 0.2), coef=_coef(rng),
                         deform=0.1 * df)
    a["stomach"] = _Blob((_pos(0.35, 0.08) + zs, _pos(-0.17, 0.03), _pos(0.3, 0.04)),
                         (0.33 * sc, 0.19 * sc, 0.23 * sc), angle=_pos(0.3, 0.15),
                         tilt=(rng.normal(0, 0.15), rng.normal(-0.1, 0.1)), deform=0.12 * df, coef=_coef(rng))
    a["stomach_fill"] = rng.uniform(0.15, 0.45)  # fraction of the stomach's depth filled with gas
    a["liver"] = [
        _Blob((_pos(0.45, 0.08) + zs, _pos(0.0, 0.03), _pos(-0.4, 0.03)),
              (0.7 * sc, 0.52 * sc, 0.46 * sc), angle=_pos(0.2, 0.1),
              tilt=(rng.normal(0, 0.1), rng.normal(0.1, 0.05)), deform=0.1 * df, coef=_coef(rng)),
        _Blob((_pos(0.55, 0.08) + zs, _pos(-0.3, 0.03), _pos(0.05, 0.05)),
              (0.4 * sc, 0.17 * sc, 0.36 * sc), angle=_pos(0.1, 0.1), deform=0.12 * df, coef=_coef(rng)),
    ]
    a["liver_vessels"] = _coef(rng, (8, 14, 14))
    a["gallbladder"] = None
    if rng.uniform() < 0.8:  # some patients have had a cholecystectomy
        a["gallbladder"] = _Blob((_pos(0.05, 0.06) + zs, _pos(-0.3, 0.03), _pos(-0.3, 0.03)),
                                 (0.15, 0.08, 0.06), angle=_jit(rng, 0.8, 0.2), deform=0.1 * df, coef=_coef(rng))
    a["bowel"] = dict(coef=_coef(rng, (10, 26, 26)), gas=_coef(rng, (6, 12, 12)),
                      level=rng.uniform(0.2, 0.5), z_top=rng.uniform(0.0, 0.3) + zs)
    return a


# --------------------------------------------------------------------------------------------------
# Rasterisation: tissue masks in priority order
# --------------------------------------------------------------------------------------------------
def _body_layers(g: _Grid, b: dict) -> Dict[str, np.ndarray]:
    """Body outline, subcutaneous fat, muscle wall and the abdominal cavity inside it.

    Returns:
        ``body``, ``muscle_wall`` and ``cavity`` masks, plus ``rho`` (normalised radius of the outline)
        and ``inner_wall`` (``rho`` at the fat/muscle border) used to place the ribs.
    """
    scale = 1.0 + b["taper"] * g.z  # upper abdomen slightly wider than lower
    dy = (g.y - b["cy"]) / (b["ay"] * scale)
    dx = (g.x - b["cx"]) / (b["ax"] * scale)
    # Flatter back than belly: a higher exponent posteriorly (supine patient on the table).
    p = np.where(dy > 0, 3.0, 2.0).astype(np.float32)
    rho = (np.abs(dx) ** p + np.abs(dy) ** p) ** (1.0 / p) - 0.025 * g.smooth_field(b["coef"])
    inner_wall = 1.0 - b["fat"] * (1.0 + 0.4 * np.clip(-g.y, 0, None))  # more fat anteriorly
    cavity = rho < inner_wall - b["muscle"]
    return dict(body=rho < 1.0, muscle_wall=~cavity & (rho < inner_wall), cavity=cavity, rho=rho,
                inner_wall=inner_wall)


def _spine(g: _Grid, s: dict, body: np.ndarray) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Vertebra (body with discs, canal, posterior arch) and paraspinal muscles.

    Returns:
        ``(masks, halo)``: tissue masks and the region that organs must keep out of.
    """
    m = {}
    rv = _tube_radius(g, s["cy"], s["cx"], s["r"] * 0.9, s["r"])
    canal_y = s["cy"] + s["r"] * 0.9 + 0.06
    rc = _tube_radius(g, canal_y, s["cx"], 0.05, 0.05)
    level = ((g.z - s["phase"]) / s["period"]) % 1.0  # position within one vertebra's height
    disc = level < 0.18
    arch = (rc >= 1.0) & (rc < 1.7) & (g.y > canal_y - 0.02)
    depth = (g.y - canal_y) / 0.24  # the spinous process tapers towards the back
    spinous = (np.abs(g.x - s["cx"]) < 0.04 * (1.0 - depth)) & (depth > 0) & (depth < 1)
    transverse = ((np.abs(g.y - canal_y + 0.03 - 0.15 * np.abs(g.x - s["cx"])) < 0.022)
                  & (np.abs(g.x - s["cx"]) < 0.21) & (level > 0.35) & (level < 0.7))
    m["canal"] = body & (rc < 1.0)
    m["disc"] = body & (rv < 1.0) & disc
    m["vertebra"] = body & ~disc & ((rv < 1.0) | ((arch | spinous | transverse) & ~m["canal"]))
    m["vertebra_cortex"] = m["vertebra"] & (rv < 1.0) & (rv > 0.8)
    para = np.minimum(_tube_radius(g, canal_y + 0.1, s["cx"] - 0.16, 0.14, 0.12),
                      _tube_radius(g, canal_y + 0.1, s["cx"] + 0.16, 0.14, 0.12))
    m["paraspinal"] = body & (para < 1.0) & ~m["vertebra"] & ~m["canal"]
    halo = np.broadcast_to((rv < 1.25) | (rc < 1.9) | (para < 1.1), g.shape).copy()  # full-size, writable
    return m, halo


def _kidney_radius(g: _Grid, k: _Blob, sign: float) -> np.ndarray:
    """Bean-shaped kidney: the blob minus a hilum notch on its medial-anterior side."""
    notch = _Blob((k.center[0], k.center[1] - 0.06, k.center[2] - sign * 0.1),
                  (k.radii[0] * 0.45, 0.06, 0.06)).radius(g)
    return np.maximum(k.radius(g), 2.0 - notch)


def _stomach_parts(g: _Grid, st: np.ndarray, r: np.ndarray, fill: float) -> Dict[str, np.ndarray]:
    """Gas cap (anterior, since the patient is supine) and wall of the stomach."""
    if not st.any():
        return {}
    ys = np.nonzero(st.any(axis=(0, 2)))[0]
    y_cut = (ys.min() + fill * (ys.max() - ys.min()) + 0.5) / g.shape[1] * 2 - 1
    return {"stomach_gas": st & (g.y < y_cut) & (r < 0.8), "stomach_wall": st & (r >= 0.82)}


def _organs(g: _Grid, a: dict, cavity: np.ndarray, halo: np.ndarray) -> Dict[str, np.ndarray]:
    """Place vessels and organs in priority order inside the cavity, without overlaps.

    Each structure is kept out of the slightly inflated outline (halo) of every structure placed before
    it, which leaves thin fat planes between neighbours, as in real CT. ``halo`` is updated in place.
    """
    m = {}

    def place(name, radius, gap=0.12):
        m[name] = (radius < 1.0) & ~halo & cavity
        halo[...] |= radius < 1.0 + gap * a["fat_gap"]
        return m[name]

    ps, s = a["psoas"], a["spine"]
    r_psoas = ps["r"] * np.clip((ps["z0"] - g.z) / 0.6, 0.0, 1.0) + 1e-3  # appears and thickens inferiorly
    place("psoas", np.minimum(_tube_radius(g, s["cy"] + 0.02, s["cx"] - 0.19, r_psoas, r_psoas),
                              _tube_radius(g, s["cy"] + 0.02, s["cx"] + 0.19, r_psoas, r_psoas)), gap=0.2)
    ao, iv = a["aorta"], a["ivc"]
    place("aorta", _tube_radius(g, ao["cy"] + ao["drift"][0] * g.z, ao["cx"] + ao["drift"][1] * g.z,
                                ao["r"], ao["r"]), gap=0.25)
    place("ivc", _tube_radius(g, iv["cy"], iv["cx"], iv["ry"], iv["rx"]), gap=0.2)
    for side, sign in (("kidney_left", 1.0), ("kidney_right", -1.0)):
        kidney = place(side, _kidney_radius(g, a[side], sign))
        m[side + "_medulla"] = kidney & (a[side].radius(g) < 0.6)
    place("spleen", a["spleen"].radius(g))
    place("pancreas", _pancreas_radius(g, a["pancreas"]))
    r_stomach = a["stomach"].radius(g)
    m.update(_stomach_parts(g, place("stomach", r_stomach), r_stomach, a["stomach_fill"]))
    if a["gallbladder"] is not None:
        place("gallbladder", a["gallbladder"].radius(g), gap=0.05)
    # The liver comes last: it fills the right upper quadrant around everything else.
    liver = place("liver", np.minimum(a["liver"][0].radius(g), a["liver"][1].radius(g)))
    m["liver_vessels"] = liver & (np.abs(g.smooth_field(a["liver_vessels"])) < 0.09)
    return m


def _bowel(g: _Grid, bw: dict, free: np.ndarray) -> Dict[str, np.ndarray]:
    """Bowel loops in the free cavity: peaks of a random field, wall at the rim, fluid or gas inside.

    Loops get sparser above ``z_top`` (the upper abdomen is filled by solid organs).
    """
    f = g.smooth_field(bw["coef"]) - 2.0 * np.clip(g.z - bw["z_top"], 0.0, None)
    bowel = free & (f > bw["level"]) & (g.y < 0.5)
    lumen = bowel & (f > bw["level"] + 0.35)
    gas = g.smooth_field(bw["gas"]) > 0.8
    return {"bowel": bowel, "bowel_content": lumen & ~gas, "bowel_gas": lumen & gas}


def _ribs(g: _Grid, rb: dict, b: dict, layers: Dict[str, np.ndarray]) -> np.ndarray:
    """Ribs: oblique bars in the muscle wall of the upper abdomen; the twist makes them wander with z."""
    theta = np.arctan2(g.y - b["cy"], g.x - b["cx"])
    bar = np.cos(rb["n"] * theta + rb["phase"] + rb["twist"] * np.pi * g.z) > 0.8
    lateral = np.abs(np.sin(theta)) < 0.93  # none at the anterior midline nor over the spine
    band = np.abs(layers["rho"] - (layers["inner_wall"] - 0.5 * b["muscle"])) < 0.6 * b["muscle"]
    return layers["body"] & ~layers["cavity"] & band & bar & lateral & (g.z > rb["z0"])


def _rasterise(g: _Grid, a: dict) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Turn an anatomy into boolean tissue masks and the label map.

    Returns:
        ``(masks, label)``: ``masks`` maps tissue names (organs and context, keys of ``_TISSUE_HU``) to
        boolean arrays; ``label`` is the uint8 ground truth (organs do not overlap by construction).
    """
    layers = _body_layers(g, a["body"])
    m = {"body": layers["body"], "muscle_wall": layers["muscle_wall"]}
    spine, halo = _spine(g, a["spine"], layers["body"])
    m.update(spine)
    m.update(_organs(g, a, layers["cavity"], halo))
    m.update(_bowel(g, a["bowel"], layers["cavity"] & ~halo))
    m["rib"] = _ribs(g, a["ribs"], a["body"], layers) & ~m["vertebra"]

    label = np.zeros(g.shape, np.uint8)
    for value, name in ORGANS.items():
        if value:
            label[m[name]] = value
    return m, label


def _pancreas_radius(g: _Grid, p: dict) -> np.ndarray:
    """Radius of a curved pancreas: head near the duodenum, tail rising posteriorly towards the spleen."""
    xm, hx = 0.5 * (p["x0"] + p["x1"]), 0.5 * (p["x1"] - p["x0"])
    t = np.clip((g.x - p["x0"]) / (p["x1"] - p["x0"]), 0, 1)  # 0 at the head, 1 at the tail
    yc = p["y0"] + p["bend"] * (g.x - p["x0"] - 0.2).clip(0) ** 2
    ry = p["ry"] * (1.5 - 0.7 * t)  # the head is thicker than the tail
    zc = p["z"] + p["zslope"] * (g.x - xm)
    r = np.sqrt(((g.x - xm) / hx) ** 4 + ((g.y - yc) / ry) ** 2 + ((g.z - zc) / p["rz"]) ** 2)
    return r - p["deform"] * g.smooth_field(p["coef"])


# --------------------------------------------------------------------------------------------------
# Intensities
# --------------------------------------------------------------------------------------------------
# (unenhanced HU, contrast enhancement HU at a nominal portal-venous phase, texture amplitude HU)
_TISSUE_HU = {
    "body": (-100, 0, 10),  # subcutaneous and intra-abdominal fat
    "muscle_wall": (50, 5, 6),
    "paraspinal": (50, 5, 6),
    "psoas": (50, 5, 6),
    "vertebra": (220, 0, 30),
    "vertebra_cortex": (600, 0, 40),
    "rib": (450, 0, 30),
    "disc": (85, 0, 8),
    "canal": (15, 0, 5),
    "aorta": (40, 140, 4),
    "ivc": (35, 85, 6),
    "kidney_left": (30, 120, 8),
    "kidney_right": (30, 120, 8),
    "kidney_left_medulla": (30, 60, 8),
    "kidney_right_medulla": (30, 60, 8),
    "spleen": (25, 30, 6),
    "pancreas": (35, 15, 10),
    "stomach": (15, 3, 6),
    "stomach_wall": (35, 20, 5),
    "stomach_gas": (-850, 0, 30),
    "gallbladder": (8, 0, 3),
    "liver": (30, 40, 7),
    "liver_vessels": (35, 90, 8),  # portal and hepatic veins (labelled liver, as in manual outlines)
    "bowel": (35, 15, 8),  # enhancing wall
    "bowel_content": (15, 0, 10),
    "bowel_gas": (-800, 0, 40),
}
# Painting order: later entries overwrite earlier ones (sub-structures after their parents).
_PAINT_ORDER = list(_TISSUE_HU)


def _paint(g: _Grid, masks: Dict[str, np.ndarray], rng: np.random.Generator,
           d: Difficulty = DIFFICULTIES["standard"]) -> np.ndarray:
    """Piecewise-constant CT with per-case contrast, per-tissue shifts and smooth texture."""
    contrast = rng.uniform(*d.contrast)  # bolus timing varies between scans
    shift = rng.normal(0.0, 6.0)  # scanner calibration offset
    texture = ndimage.gaussian_filter(rng.standard_normal(g.shape, dtype=np.float32), 1.2)
    texture /= texture.std() + 1e-6
    jitter = rng.normal(0.0, d.tissue_jitter_hu, len(_PAINT_ORDER))  # drawn for every tissue, present or not
    img = np.full(g.shape, -1000.0, np.float32)
    for name, dev in zip(_PAINT_ORDER, jitter):
        mask = masks.get(name)
        if mask is None:
            continue
        base, enh, tex = _TISSUE_HU[name]
        img[mask] = base + enh * contrast + shift + dev + tex * texture[mask]
    return img


def _degrade(img: np.ndarray, g: _Grid, spacing: Sequence[float], rng: np.random.Generator,
             d: Difficulty = DIFFICULTIES["standard"]) -> np.ndarray:
    """Scanner effects: partial-volume blur, smooth bias field and (partly correlated) noise."""
    sp = np.asarray(spacing, np.float64)
    # Thick slices average more tissue: the blur grows with each axis' spacing relative to the finest.
    sigma = 0.35 * np.sqrt(sp / sp.min())
    img = ndimage.gaussian_filter(img, sigma, truncate=3.0)
    # Only the spatial variation of the bias fields: global offsets are the intensity step's business.
    f_mul, f_add = (g.smooth_field(_coef(rng, (3, 3, 3))) for _ in range(2))
    bias_mul = 1.0 + rng.uniform(*d.bias) * (f_mul - f_mul.mean())
    bias_add = rng.uniform(2.0, 8.0) * (f_add - f_add.mean())
    img = (img + 1000.0) * bias_mul - 1000.0 + bias_add
    white = rng.standard_normal(g.shape, dtype=np.float32)
    corr = ndimage.gaussian_filter(rng.standard_normal(g.shape, dtype=np.float32), 0.8)
    corr /= corr.std() + 1e-6
    img += rng.uniform(*d.noise_hu) * white + rng.uniform(*d.correlated_noise_hu) * corr
    return np.clip(img, -1024.0, 3071.0).astype(np.float32)


def _case_rngs(index: int, seed: int) -> List[np.random.Generator]:
    """Independent generators for anatomy, intensities and noise, derived from ``(seed, index)`` only."""
    if seed < 0 or index < 0:
        raise PhantomConfigError(f"seed and case index must be >= 0 (got seed={seed}, index={index})")
    return [np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), int(index)]).spawn(3)]


def _check_grid(shape: Sequence[int], spacing: Sequence[float]) -> Tuple[Tuple[int, ...], Tuple[float, ...]]:
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 8:
        raise PhantomConfigError(f"shape must be 3 sizes (z, y, x), each >= 8; got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise PhantomConfigError(f"spacing must be 3 positive values (z, y, x) in mm; got {spacing}")
    return shape, spacing


def generate_case(index: int, seed: int, shape: Sequence[int] = _DEFAULT_SHAPE,
                  spacing: Sequence[float] = _DEFAULT_SPACING,
                  difficulty: str = "standard") -> Tuple[np.ndarray, np.ndarray]:
    """Generate one phantom case.

    Args:
        index: case index; with ``seed`` it fully determines the case.
        seed: dataset seed.
        shape: volume shape ``(z, y, x)``.
        spacing: voxel spacing ``(z, y, x)`` in mm (metadata; also shapes the partial-volume blur).
        difficulty: a key of :data:`DIFFICULTIES` (scan quality and anatomical variation).

    Returns:
        ``(image, label)``: float32 CT-like image in HU and the uint8 label map (values of :data:`ORGANS`),
        both of shape ``shape``. The label is the sharp ground truth; the image is blurred and noisy.
    """
    shape, spacing = _check_grid(shape, spacing)
    d = _difficulty(difficulty)
    rng_anat, rng_int, rng_noise = _case_rngs(index, seed)
    g = _Grid(shape)
    anatomy = _sample_anatomy(rng_anat, d)
    masks, label = _rasterise(g, anatomy)
    image = _degrade(_paint(g, masks, rng_int, d), g, spacing, rng_noise, d)
    return image, label


# --------------------------------------------------------------------------------------------------
# Dataset on disk
# --------------------------------------------------------------------------------------------------
_TMP_PREFIX = ".tmp-phantom-"


def _check_dataset_args(dataset_id: int, dataset_name: str, counts: Sequence[int], seed: int) -> None:
    if not 1 <= int(dataset_id) <= 999:
        raise PhantomConfigError(f"dataset id must be between 1 and 999 (nnU-Net's 3-digit ids); got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", dataset_name or ""):
        raise PhantomConfigError(f"dataset name {dataset_name!r} must be letters, digits, '_' or '-' "
                                 "(it becomes part of folder and file names)")
    num_train, num_test, num_unlabeled = counts
    if num_train < 1 or num_test < 0 or num_unlabeled < 0:
        raise PhantomConfigError(f"need at least 1 training case and non-negative test/unlabeled counts; got "
                                 f"train={num_train}, test={num_test}, unlabeled={num_unlabeled}")
    if seed < 0:
        raise PhantomConfigError(f"seed must be >= 0; got {seed}")


def _refuse_id_clash(raw_root: str, dataset_id: int, folder_name: str) -> None:
    """nnU-Net resolves a dataset by its id prefix, so two folders with one id make it ambiguous."""
    others = sorted(os.path.basename(p) for p in glob.glob(os.path.join(raw_root, f"Dataset{dataset_id:03d}_*"))
                    if os.path.basename(p) != folder_name)
    if others:
        raise PhantomConfigError(
            f"{raw_root} already holds {', '.join(others)} with dataset id {dataset_id}; nnU-Net cannot tell two "
            f"datasets with the same id apart. Choose another id (-d) or use the existing name (-n).")


def _case_list(folder: str, name: str, counts: Sequence[int]) -> List[Tuple[int, str, Optional[str]]]:
    """``(index, image path, label path or None)`` for every case: train, then test, then unlabeled."""
    num_train, num_test, num_unlabeled = counts
    cases = []
    groups = [("imagesTr", "labelsTr", num_train), ("imagesTs", "labelsTs", num_test),
              ("imagesUnlabeled", None, num_unlabeled)]
    index = 0
    for images, labels, n in groups:
        for _ in range(n):
            case_id = f"{name}_{index:03d}"
            cases.append((index, os.path.join(folder, images, case_id + "_0000.nii.gz"),
                          os.path.join(folder, labels, case_id + ".nii.gz") if labels else None))
            index += 1
    return cases


def _dataset_json(name: str, counts: Sequence[int], shape, spacing, seed: int, difficulty: str) -> dict:
    num_train, num_test, num_unlabeled = counts
    return {
        "channel_names": {"0": "CT"},
        "labels": {organ: value for value, organ in ORGANS.items()},
        "numTraining": num_train,
        "file_ending": ".nii.gz",
        "name": name,
        "description": "Synthetic multi-organ abdomen CT phantom generated by nnunet_ext.phantom "
                       "(test cases in imagesTs/labelsTs, unlabeled cases in imagesUnlabeled).",
        "numTest": num_test,
        "numUnlabeled": num_unlabeled,
        "phantom": {"seed": seed, "shape": list(shape), "spacing": list(spacing), "version": PHANTOM_VERSION,
                    "difficulty": difficulty},
    }


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _differences(existing: dict, requested: dict) -> List[str]:
    """Human-readable list of the generation parameters that differ."""
    diffs = []
    for key in ("numTraining", "numTest", "numUnlabeled"):
        if existing.get(key) != requested[key]:
            diffs.append(f"{key}: existing {existing.get(key)}, requested {requested[key]}")
    old = dict(existing.get("phantom") or {})
    old.setdefault("difficulty", "standard")  # written before difficulties existed
    for key, value in requested["phantom"].items():
        if old.get(key) != value:
            diffs.append(f"{key}: existing {old.get(key)}, requested {value}")
    return diffs


def _remove_generated(folder: str, existing: Optional[dict]) -> None:
    """Delete a dataset folder, but only one that this module wrote and that holds nothing else."""
    if not isinstance(existing, dict) or "phantom" not in existing:
        raise PhantomExistsError(
            f"{folder} exists and was not generated by nnunet_ext.phantom (its dataset.json has no 'phantom' "
            f"block); refusing to delete it even with overwrite. Choose another dataset id or name, or remove "
            f"the folder yourself.")
    foreign = sorted(set(os.listdir(folder)) - set(_SUBFOLDERS) - {"dataset.json"})
    if foreign:
        raise PhantomExistsError(
            f"{folder} was generated by nnunet_ext.phantom but now also holds {', '.join(foreign)}; refusing "
            f"to delete it. Move those entries away or remove the folder yourself.")
    shutil.rmtree(folder)


def _warn_if_preprocessed(folder_name: str) -> None:
    """Regenerated raw data makes nnU-Net's preprocessed copy stale; nnU-Net would not notice."""
    pre = os.environ.get("nnUNet_preprocessed")
    if pre and os.path.isdir(os.path.join(pre, folder_name)):
        warnings.warn(f"{os.path.join(pre, folder_name)} was made from the replaced raw data; run "
                      f"nnUNetv2_plan_and_preprocess again before training.", stacklevel=3)


def _write_nifti(array: np.ndarray, path: str, spacing: Sequence[float]) -> None:
    """Write atomically (temporary file + rename), so an interrupted run never leaves a truncated case."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in reversed(spacing)])  # SimpleITK orders axes (x, y, z)
    tmp = os.path.join(os.path.dirname(path), _TMP_PREFIX + os.path.basename(path))
    try:
        sitk.WriteImage(image, tmp, useCompression=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_json_atomic(obj: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def generate_dataset(raw_root: str, dataset_id: int = 501, dataset_name: str = "Phantom", num_train: int = 20,
                     num_test: int = 10, num_unlabeled: int = 0, shape: Sequence[int] = _DEFAULT_SHAPE,
                     spacing: Sequence[float] = _DEFAULT_SPACING, seed: int = 0, overwrite: bool = False,
                     progress: bool = True, difficulty: str = "standard") -> str:
    """Write a phantom dataset in nnU-Net v2 raw format.

    Layout: ``raw_root/Dataset{id:03d}_{name}/`` with ``imagesTr``/``labelsTr`` (cases ``0..num_train-1``),
    ``imagesTs``/``labelsTs`` (the next ``num_test`` indices), ``imagesUnlabeled`` (the next
    ``num_unlabeled``, only when > 0) and ``dataset.json``, whose extra ``phantom`` block records the
    generation parameters.

    An existing folder with the same parameters is reused: missing cases are generated (an interrupted
    run resumes), and nothing happens when all are present. Different parameters raise unless
    ``overwrite`` is set; folders that this function did not write are never deleted.

    Args:
        raw_root: nnU-Net raw folder (``$nnUNet_raw``); created if missing.
        dataset_id: nnU-Net dataset id (1-999).
        dataset_name: dataset name; also the case-id prefix.
        num_train: number of labelled training cases.
        num_test: number of labelled test cases.
        num_unlabeled: number of image-only cases for semi-/self-supervised methods.
        shape: volume shape ``(z, y, x)``.
        spacing: voxel spacing ``(z, y, x)`` in mm.
        seed: dataset seed; case ``i`` depends only on ``(seed, i)``, shape and spacing.
        overwrite: replace an existing phantom dataset generated with other parameters.
        progress: show a tqdm progress bar.
        difficulty: a key of :data:`DIFFICULTIES`: ``standard`` or ``hard`` (low-dose noise, variable
            contrast phase, more anatomical variation, organs that abut).

    Returns:
        Path of the dataset folder.

    Raises:
        FileExistsError: the folder exists with other parameters (and ``overwrite`` is off), or it was not
            generated by this function.
        ValueError: invalid parameters, or another ``Dataset{id:03d}_*`` folder exists in ``raw_root``.
    """
    shape, spacing = _check_grid(shape, spacing)
    _difficulty(difficulty)
    counts = (int(num_train), int(num_test), int(num_unlabeled))
    seed = int(seed)
    _check_dataset_args(dataset_id, dataset_name, counts, seed)
    raw_root = os.path.abspath(os.path.expanduser(raw_root))
    folder_name = f"Dataset{int(dataset_id):03d}_{dataset_name}"
    folder = os.path.join(raw_root, folder_name)
    os.makedirs(raw_root, exist_ok=True)
    _refuse_id_clash(raw_root, int(dataset_id), folder_name)

    meta = _dataset_json(dataset_name, counts, shape, spacing, seed, difficulty)
    json_path = os.path.join(folder, "dataset.json")
    if os.path.lexists(folder):
        if not os.path.isdir(folder):
            raise PhantomExistsError(f"{folder} exists and is not a folder; remove it or choose another id/name.")
        existing = _read_json(json_path)
        if overwrite:
            _remove_generated(folder, existing)
            _warn_if_preprocessed(folder_name)
        elif not isinstance(existing, dict) or "phantom" not in existing:
            raise PhantomExistsError(
                f"{folder} exists but was not generated by nnunet_ext.phantom (no dataset.json with a 'phantom' "
                f"block). Choose another dataset id (-d) or name (-n); it will not be overwritten.")
        else:
            diffs = _differences(existing, meta)
            if diffs:
                raise PhantomExistsError(
                    f"{folder} holds a phantom generated with other parameters ({'; '.join(diffs)}). Pass "
                    f"overwrite=True (--overwrite) to regenerate it, or choose another dataset id.")

    cases = _case_list(folder, dataset_name, counts)
    for sub in {os.path.dirname(p) for _, img, lab in cases for p in (img, lab) if p}:
        os.makedirs(sub, exist_ok=True)
        for stale in glob.glob(os.path.join(sub, _TMP_PREFIX + "*")):  # left by a killed run
            os.remove(stale)
    if _read_json(json_path) != meta:
        _write_json_atomic(meta, json_path)

    todo = [c for c in cases if not (os.path.isfile(c[1]) and (c[2] is None or os.path.isfile(c[2])))]
    if not todo:
        return folder
    from tqdm import tqdm

    for index, image_path, label_path in tqdm(todo, desc=f"Generating {folder_name}", unit="case",
                                              disable=not progress):
        image, label = generate_case(index, seed, shape, spacing, difficulty)
        for array, path in ((label, label_path), (image, image_path)):
            if path is not None and not os.path.isfile(path):  # a resumed run keeps what is there
                _write_nifti(array, path, spacing)
    return folder


# --------------------------------------------------------------------------------------------------
# Overview figure
# --------------------------------------------------------------------------------------------------
def _overview_slices(label: np.ndarray, num_slices: int) -> List[int]:
    """Axial slices spread evenly over the labelled z range (the whole volume if nothing is labelled)."""
    zs = np.nonzero(label.any(axis=(1, 2)))[0]
    lo, hi = (zs.min(), zs.max()) if zs.size else (0, label.shape[0] - 1)
    return [int(round(lo + (hi - lo) * (k + 1) / (num_slices + 1))) for k in range(num_slices)]


def render_overview(dataset_folder: str, png_path: str, num_cases: int = 3, num_slices: int = 3) -> str:
    """Save a PNG of axial slices of the first training cases with the labels overlaid.

    Images are shown in an abdominal CT window (W 400 / L 40), radiological view (patient's right on the
    left, anterior up), labels in distinct colours with a legend of organ names.

    Args:
        dataset_folder: nnU-Net raw dataset folder (with ``imagesTr``, ``labelsTr``, ``dataset.json``).
        png_path: output PNG path (parent folders are created).
        num_cases: number of training cases (rows).
        num_slices: axial slices per case (columns).

    Returns:
        ``png_path``.
    """
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk
    from matplotlib.patches import Patch

    meta = _read_json(os.path.join(dataset_folder, "dataset.json")) or {}
    names = {int(v): k for k, v in meta.get("labels", {o: v for v, o in ORGANS.items()}).items()}
    label_files = sorted(glob.glob(os.path.join(dataset_folder, "labelsTr", "*.nii.gz")))[:num_cases]
    if not label_files:
        raise UserInputError(f"no labels found in {os.path.join(dataset_folder, 'labelsTr')}")
    colours = plt.get_cmap("tab10")
    rgba = np.zeros((max(names) + 1, 4))
    for value in names:
        if value:
            rgba[value] = (*colours((value - 1) % 10)[:3], 0.4)

    fig, axes = plt.subplots(len(label_files), num_slices, figsize=(3.2 * num_slices, 3.2 * len(label_files) + 0.6),
                             squeeze=False)
    for row, label_file in zip(axes, label_files):
        case_id = os.path.basename(label_file)[: -len(".nii.gz")]
        image_itk = sitk.ReadImage(os.path.join(dataset_folder, "imagesTr", case_id + "_0000.nii.gz"))
        image = sitk.GetArrayFromImage(image_itk)
        label = sitk.GetArrayFromImage(sitk.ReadImage(label_file)).astype(int)
        sx, sy = image_itk.GetSpacing()[:2]
        for ax, z in zip(row, _overview_slices(label, num_slices)):
            ax.imshow(image[z], cmap="gray", vmin=40 - 200, vmax=40 + 200, aspect=sy / sx, interpolation="nearest")
            ax.imshow(rgba[np.clip(label[z], 0, len(rgba) - 1)], aspect=sy / sx, interpolation="nearest")
            ax.set_title(f"{case_id}  z={z}", fontsize=9)
            ax.axis("off")
    handles = [Patch(color=rgba[v][:3], label=names[v]) for v in sorted(names) if v]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if len(label_files) > 1 else 0.12, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_ext_generate_phantom",
        description="Generate a synthetic multi-organ abdomen CT phantom as an nnU-Net v2 raw dataset "
                    f"(labels: {', '.join(o for v, o in ORGANS.items() if v)}). Cases depend only on the seed "
                    "and their index, so re-running with more cases keeps the existing ones. Re-running with "
                    "identical parameters does nothing (or completes an interrupted run).",
    )
    parser.add_argument("-o", "--output", default=None,
                        help="nnU-Net raw folder to write into (default: $nnUNet_raw)")
    parser.add_argument("-d", "--dataset-id", type=int, default=501, help="dataset id, 1-999 (default: 501)")
    parser.add_argument("-n", "--name", default="Phantom",
                        help="dataset name; the folder is DatasetXXX_NAME and cases NAME_000 ... (default: Phantom)")
    parser.add_argument("--train", type=int, default=20, help="labelled training cases, imagesTr/labelsTr (default: 20)")
    parser.add_argument("--test", type=int, default=10, help="labelled test cases, imagesTs/labelsTs (default: 10)")
    parser.add_argument("--unlabeled", type=int, default=0,
                        help="image-only cases in imagesUnlabeled for semi-/self-supervised training (default: 0)")
    parser.add_argument("--shape", type=int, nargs=3, default=list(_DEFAULT_SHAPE), metavar=("Z", "Y", "X"),
                        help="volume size in voxels (default: 40 80 80)")
    parser.add_argument("--spacing", type=float, nargs=3, default=list(_DEFAULT_SPACING), metavar=("Z", "Y", "X"),
                        help="voxel spacing in mm, written into the files; a larger Z spacing also blurs more "
                             "along z (default: 2.5 0.8 0.8)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument("--difficulty", default="standard", choices=sorted(DIFFICULTIES),
                        help="standard, or hard: low-dose noise, a contrast phase from almost unenhanced to "
                             "portal-venous, organs that vary more in size, place and shape and abut each other "
                             "(default: standard)")
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate an existing phantom dataset that has other parameters (folders not made "
                             "by this command are never deleted)")
    parser.add_argument("--overview", metavar="PNG", default=None,
                        help="also save a PNG with a few labelled axial slices of the training cases")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command-line entry point ``nnUNetv2_ext_generate_phantom``; prints the dataset folder.

    Returns None: console scripts pass the return value to ``sys.exit``, where a string means failure.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    raw_root = args.output or os.environ.get("nnUNet_raw")
    if not raw_root:
        parser.error("no output folder: pass -o RAW_ROOT or set the nnUNet_raw environment variable")

    def run():
        folder = generate_dataset(raw_root, args.dataset_id, args.name, args.train, args.test, args.unlabeled,
                                  args.shape, args.spacing, args.seed, args.overwrite, not args.no_progress,
                                  args.difficulty)
        print(folder)
        if args.overview:
            print(render_overview(folder, args.overview))

    from nnunet_ext.errors import run_cli

    run_cli(run, parser.prog)


if __name__ == "__main__":
    main()
