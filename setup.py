import re

from setuptools import find_packages, setup

with open("pdp_hf/version.py", encoding="utf-8") as f:
    version = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="pdp-hf",
    version=version,
    description="Differentiable pruning (PDP) for Hugging Face Transformers: sparse BERT and ViT with one-line changes",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["pdp_hf", "pdp_hf.*"]),
    package_data={"pdp_hf": ["templates/*.md", "metrics/*/*.py"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "transformers>=5.0,<6",
        "datasets>=3.0",
        "evaluate>=0.4",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "jinja2>=3.0",
        "numpy",
        "scipy",  # GLUE metric: Pearson / Spearman
        "scikit-learn",  # GLUE metric: F1, Matthews correlation
        "pillow",  # image classification script
    ],
    extras_require={
        "plot": ["matplotlib>=3.5"],
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],  # export_pruned(onnx=True), pdp-hf speed's ONNX Runtime rows
        "test": ["pytest>=8", "matplotlib>=3.5", "ruff>=0.6"],
    },
    entry_points={"console_scripts": ["pdp-hf=pdp_hf.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
