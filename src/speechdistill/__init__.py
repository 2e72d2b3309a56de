"""speechdistill: distil self-supervised speech models into small students and evaluate them.

``load_model`` / ``save_model`` are imported lazily so that ``import speechdistill`` stays cheap
for entry points that never touch a model.
"""
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "save_model"]


def load_model(path: Any):  # noqa: ANN201 -- returns speechdistill.models.Encoder
    """Load our model directory, a Hugging Face directory, a fairseq .pt or an s3prl checkpoint."""
    from .models import load_model as _load_model
    return _load_model(path)


def save_model(model: Any, out_dir: Any, **kwargs: Any):  # noqa: ANN201 -- returns the directory Path
    """Write ``config.yaml`` + ``model.safetensors`` (see ``speechdistill.models.save_model``)."""
    from .models import save_model as _save_model
    return _save_model(model, out_dir, **kwargs)
