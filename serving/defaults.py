"""Default hooks, used for every hook the user's inference module does not define.

They follow the PyTorch inference toolkit: `model_fn` loads `model.pt` from the model directory
(TorchScript first, then a pickled module or a state dict), `input_fn` decodes JSON, CSV, NPY or
JSON Lines into a tensor, `predict_fn` runs the model without autograd, `output_fn` encodes the
prediction. torch is imported inside each function so that importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from serving import codecs
from serving.errors import ModelLoadError, NotAcceptable

MODEL_FILES = ("model.pt", "model.pth")


# (pid, device): this process's device, asked of torch once per process. Keyed by pid because
# the master may ask before it forks workers that pin a GPU of their own.
_DEVICE: tuple[int, Any] | None = None


def _device() -> Any:
    global _DEVICE  # noqa: PLW0603 (a per-process cache, see above)
    pid = os.getpid()
    if _DEVICE is None or _DEVICE[0] != pid:
        # torch is imported lazily everywhere here: the master only pays for it if it loads.
        import torch  # noqa: PLC0415

        # A worker on a GPU host has exactly one visible device (it pinned itself to it).
        _DEVICE = (pid, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return _DEVICE[1]


def find_model_file(model_dir: Path) -> Path:
    """`model.pt` (or `model.pth`, or the only *.pt/*.pth file) in `model_dir`.

    Raises ModelLoadError listing what the directory holds when there is no single candidate.
    """
    for name in MODEL_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    found = sorted(p for p in model_dir.glob("*.pt*") if p.suffix in (".pt", ".pth"))
    if len(found) == 1:
        return found[0]
    listing = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else None
    raise ModelLoadError(
        f"no model file in {model_dir}: expected one of {', '.join(MODEL_FILES)} "
        f"(found {listing if listing is not None else 'no such directory'}); "
        "or define model_fn(model_dir) in code/inference.py"
    )


def load_model(model_dir: str, build_model: Callable[[], Any] | None = None) -> Any:
    """Load the model in `model_dir`, in eval mode, on this worker's device.

    A TorchScript archive loads as is; otherwise the file is unpickled: a module is used as
    is, a state dict is loaded into `build_model()` when the user module defines
    `build_model`. Anything else raises ModelLoadError saying what to add.
    """
    import torch  # noqa: PLC0415

    path = find_model_file(Path(model_dir))
    device = _device()
    try:
        model = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    except RuntimeError:
        # Not a TorchScript archive: a torch.save checkpoint, from the user's own training.
        try:
            # The model directory is the user's own artefact: unpickling it is trusted.
            model = torch.load(path, map_location=device, weights_only=False)
        except Exception as exc:
            raise ModelLoadError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(model, Mapping):
        if build_model is None:
            raise ModelLoadError(
                f"{path} holds a state dict, not a module: define build_model() (returning "
                "the untrained module) or model_fn(model_dir) in code/inference.py"
            )
        module = build_model()
        module.load_state_dict(model)
        model = module.to(device)
    if not callable(model):
        raise ModelLoadError(f"{path} holds a {type(model).__name__}, not a callable module")
    if hasattr(model, "eval"):
        model.eval()
    return model


def model_fn(model_dir: str) -> Any:
    """The toolkit-compatible default: `load_model` with no architecture for state dicts."""
    return load_model(model_dir)


def input_fn(body: bytes | str, content_type: str) -> Any:
    """Decode the body into a tensor on this worker's device (float32 for text payloads)."""
    return as_tensor(codecs.decode(body, codecs.media_type(content_type)))


def as_tensor(array: np.ndarray) -> Any:
    """`array` as a tensor on this worker's device (what `input_fn` returns for a body that
    decoded to `array`; `serving.batching` joins decoded arrays first and converts once)."""
    import torch  # noqa: PLC0415

    if not array.flags.writeable:
        array = array.copy()
    tensor = torch.from_numpy(array)
    device = _device()
    return tensor if device.type == "cpu" else tensor.to(device)


def predict_fn(data: Any, model: Any) -> Any:
    """Run the model on `data` with autograd off."""
    import torch  # noqa: PLC0415

    with torch.inference_mode():
        return model(data)


def to_numpy(prediction: Any) -> np.ndarray:
    """A prediction (tensor, array, nested lists or numbers) as a numpy array."""
    if hasattr(prediction, "detach"):
        return np.asarray(prediction.detach().cpu().numpy())
    if isinstance(prediction, (list, tuple)) and prediction and hasattr(prediction[0], "detach"):
        return np.stack([to_numpy(item) for item in prediction])
    return np.asarray(prediction)


def output_fn(prediction: Any, accept: str) -> bytes:
    """Encode the prediction as `accept`; raises NotAcceptable for an unsupported type."""
    kind = codecs.negotiate(accept, codecs.SUPPORTED, codecs.JSON)
    if kind is None:
        raise NotAcceptable(f"cannot produce {accept!r}; use one of {', '.join(codecs.SUPPORTED)}")
    return codecs.encode(to_numpy(prediction), kind)
