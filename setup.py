"""Packaging of tb-gradhealth: the Python package, the frontend assets and the TensorBoard entry point."""

import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent

setuptools.setup(
    name="tb-gradhealth",
    version="0.1.0",
    description="Gradient Health for TensorBoard: per-layer gradient statistics and an explained diagnosis",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    # The top-level frontend/ folder ships inside the wheel as
    # tb_gradhealth/frontend, next to the plugin that serves it.
    packages=setuptools.find_packages(include=["tb_gradhealth", "tb_gradhealth.*"]) + ["tb_gradhealth.frontend"],
    package_dir={"tb_gradhealth.frontend": "frontend"},
    package_data={"tb_gradhealth.frontend": ["*.js", "*.css", "*.html", "vendor/**/*", "vendor/*"]},
    include_package_data=False,
    # The tab, the command line and the numpy writer need no deep learning
    # framework; each capture needs its own, as an extra.
    install_requires=[
        "tensorboard>=2.16",
        "werkzeug>=1.0",
        "numpy>=1.23",
    ],
    extras_require={
        # GradientHealthCallback and GradientHealthRecorder (Keras 3, TensorFlow).
        "keras": ["tensorflow>=2.16", "keras>=3.0"],
        "test": [
            "pytest>=7",
            "playwright>=1.40",
            "hypothesis>=6",
            "nbclient>=0.7",
            "nbformat>=5",
            "ipykernel>=6",
            "build>=1.0",
            "ruff>=0.6",
        ],
        # tb_gradhealth.torch, the PyTorch monitor.
        "torch": ["torch>=2.4"],
        # benchmarks/torch_overhead.py compares the monitor with wandb.watch.
        "benchmark": ["wandb>=0.17"],
    },
    entry_points={
        "tensorboard_plugins": [
            "gradient_health = tb_gradhealth.loader:GradientHealthLoader",
        ],
        "console_scripts": [
            "tb-gradhealth = tb_gradhealth.cli:main",
        ],
    },
    classifiers=[
        "Framework :: TensorFlow",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
