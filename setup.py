"""faircalib: frontier-aware W4A4 calibration and kernels for diffusion LLMs.

`kernels/` sits at the repository root (reference beside each Triton kernel) and is installed as the subpackage
`faircalib.kernels`, never as a top-level `kernels` module: transformers probes for the Hugging Face package of
that name. In a source checkout `faircalib/kernels` is a symbolic link to it, so both layouts import the same way.
"""
import sys

from setuptools import find_packages, setup

packages = [p for p in find_packages(include=["faircalib", "faircalib.*"]) if not p.startswith("faircalib.kernels")]
packages += ["faircalib.kernels"]

setup(
    name="faircalib",
    version="0.1.0",
    description="Frontier-aware W4A4 calibration (FAIR-Calib) and INT4 kernels for diffusion LLMs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"faircalib.kernels": "kernels"},
    package_data={"faircalib.zoo": ["checkpoints/*/*", "data/*"], "faircalib.models": ["configs/*.json"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "numpy",
        "safetensors>=0.4",
        "transformers>=4.45",
        "tqdm",
        "matplotlib",
    ]
    + (["triton>=3.0"] if sys.platform.startswith("linux") else []),
    extras_require={
        "dev": ["pytest>=7", "pytest-benchmark", "pytest-xdist", "hypothesis", "compressed-tensors>=0.9"],
    },
    entry_points={"console_scripts": ["faircalib=faircalib.cli:main"]},
)
