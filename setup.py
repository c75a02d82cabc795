"""nnunet-ext: label-efficient training methods for nnU-Net v2 (MedContext, Volume Fusion, SimCVD)."""
from setuptools import setup

setup(
    name="nnunet-ext",
    version="0.1.0",
    description="Label-efficient training methods (MedContext, Volume Fusion, SimCVD) as nnU-Net v2 trainers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # trainers/ and plans/ live at the top of the repository (design card) but ship inside the package, so
    # that a non-editable install can locate them at run time.
    packages=["nnunet_ext", "nnunet_ext.training", "nnunet_ext.benchmark", "nnunet_ext.trainer_modules",
              "nnunet_ext.plans_presets"],
    package_dir={"nnunet_ext.trainer_modules": "trainers", "nnunet_ext.plans_presets": "plans"},
    package_data={"nnunet_ext.plans_presets": ["*.json"], "nnunet_ext.benchmark": ["*.json"]},
    install_requires=[
        "nnunetv2>=2.8,<2.9",
        "torch>=2.1",
        "numpy",
        "scipy>=1.15",  # stats.bootstrap(rng=...)
        "SimpleITK",
        "nibabel",
        "batchgenerators>=0.25",
        "batchgeneratorsv2",
        "acvl-utils",
        "dynamic-network-architectures",
        "matplotlib",
        "tqdm",
        "monai",
        "edt",
    ],
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            "nnUNetv2_ext_env = nnunet_ext.env:main",
            "nnUNetv2_ext_add_preset = nnunet_ext.presets:main",
            "nnUNetv2_ext_generate_phantom = nnunet_ext.phantom:main",
            "nnUNetv2_ext_benchmark_cost = nnunet_ext.cost_benchmark:main",
            "nnUNetv2_ext_benchmark = nnunet_ext.benchmark.run:main",
            "nnUNetv2_ext_preprocess_unlabeled = nnunet_ext.unlabeled:main_preprocess",
            "nnUNetv2_ext_make_splits = nnunet_ext.splits:main",
            "nnUNetv2_ext_prepare_pretraining = nnunet_ext.pretraining:main",
            "nnUNetv2_ext_check_pretrained = nnunet_ext.pretrained_check:main",
        ]
    },
)
