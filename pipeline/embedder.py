"""The embedding model at work: the seed's DINO ViT (or any transformers image model) on the
worker's device, pictures in, float32 vectors out; the mean of last_hidden_state over all
tokens by default. Only what embeds imports it (workers, image queries, bench: torch); what
a model is, without torch: pipeline/model_info.py."""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

from pipeline.errors import first_line
from pipeline.images import ImageError
from pipeline.model_info import (
    POOLINGS,
    TRIVIAL_DIM,
    TRIVIAL_MODEL,
    ModelError,
    fixed_input_size,
    hidden_size,
    trivial_vectors,
)
from pipeline.settings import PREPROCESSINGS, Settings

log = logging.getLogger(__name__)


def quiet_transformers() -> None:
    """transformers' notices (its PIL fallback for a missing torchvision, each load's report
    and bars) ask nothing of a medindex user; its errors still show. A randomly initialised
    model says so where it matters: on the search page."""
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


quiet_transformers()

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Kernels:
    """How the forward pass runs (the vectors it makes differ only within the parity that
    `medindex bench` prints): autocast precision, attention, torch.compile, memory layout,
    TF32 matmuls, JPEG decoding on the GPU."""

    precision: str = "auto"
    attention: str = "sdpa"
    compile: bool = False
    channels_last: bool = False
    tf32: bool = True
    gpu_decode: bool = False

    @classmethod
    def of(cls, settings: Settings) -> Kernels:
        return cls(settings.precision, settings.attention, settings.torch_compile,
                   settings.channels_last, settings.cuda_tf32, settings.gpu_decode)  # fmt: skip

    def half(self, device: str) -> torch.dtype | None:
        """The autocast dtype on `device`, None for float32. "auto": bf16 on CUDA only."""
        precision = self.precision
        if precision == "auto":
            precision = "bf16" if device.startswith("cuda") else "float32"
        return HALF.get(precision)


def resolve_device(setting: str) -> str:
    """Only ever called inside a worker process, after the fork: CUDA cannot survive a fork."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class Embedder:
    """Image processor + model, loaded once; `embed` maps RGB pictures to float32 vectors."""

    needs_pixels = True

    def __init__(
        self,
        model_name: str,
        device: str = "auto",
        pooling: str = "mean",
        preprocessing: str = "exact",
        kernels: Kernels = Kernels(),
    ) -> None:
        if pooling not in POOLINGS:
            raise ModelError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        if preprocessing not in PREPROCESSINGS:
            raise ModelError(
                f"preprocessing must be one of {', '.join(PREPROCESSINGS)}, not {preprocessing!r}"
            )
        self.device = resolve_device(device)
        self.pooling = pooling
        self.kernels = kernels
        self.half = kernels.half(self.device)
        on_cuda = self.device.startswith("cuda")
        if on_cuda:
            torch.backends.cuda.matmul.allow_tf32 = kernels.tf32
            torch.backends.cudnn.allow_tf32 = kernels.tf32
        try:
            self.processor = AutoImageProcessor.from_pretrained(model_name)
            self.model = _load_model(model_name, kernels.attention)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load model {model_name!r}: {first_line(exc)}") from exc
        self.model = self.model.eval().to(self.device)
        self.channels_last = kernels.channels_last and on_cuda
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if kernels.compile else self.model
        self.dim = hidden_size(self.model.config.to_dict())
        # Where the fast path does not apply (crops), the exact one runs.
        self.draft_size = (
            fixed_input_size(self.processor.to_dict()) if preprocessing == "fast" else None
        )
        self.jpeg_decoder = (
            DeviceJpeg(self.device) if kernels.gpu_decode and on_cuda and self.draft_size else None
        )
        log.info(
            "loaded model %s on %s (%d-d, %s preprocessing, %s)",
            model_name, self.device, self.dim, "fast" if self.draft_size else "exact",
            self.half or "float32",
        )  # fmt: skip

    @torch.inference_mode()
    def embed(self, images: list[Image.Image | torch.Tensor]) -> np.ndarray:
        """float32 vectors of the pictures (PIL images, or pixels already made on the device
        by `decode_on_device`), whatever precision the forward pass runs in."""
        if not images:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.vectors(self.pixels(images))

    @torch.inference_mode()
    def vectors(self, pixels: torch.Tensor) -> np.ndarray:
        """The forward pass alone, on pixels already on the device; float32 vectors out."""
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        device_type = self.device.split(":")[0]
        with torch.autocast(device_type, dtype=self.half or torch.float32, enabled=bool(self.half)):
            output = self.forward(pixel_values=pixels)
        if self.pooling == "pooler":
            pooled = output.pooler_output.flatten(start_dim=1)
        elif self.pooling == "cls":
            pooled = output.last_hidden_state[:, 0]
        else:  # the mean taken in float32, whatever the layers ran in
            pooled = output.last_hidden_state.float().mean(dim=1)
        return pooled.float().cpu().numpy()

    def prepare(self, picture: Image.Image) -> Image.Image | np.ndarray:
        """What a decoding thread does to a picture before its pass: on the fast path, the
        processor's resize (same filter) to 8-bit pixels; the exact path's processor runs on
        the whole batch."""
        if not self.draft_size:
            return picture
        return np.asarray(picture.resize(self.draft_size, self.processor.resample))

    def pixels(self, images: list[Image.Image | np.ndarray | torch.Tensor]) -> torch.Tensor:
        """The model's input for a batch, on the device: from pictures, prepared 8-bit pixels
        or pixels already made on the device (`decode_on_device`), in their order."""
        on_host = [image for image in images if not isinstance(image, torch.Tensor)]
        made = self._host_pixels(on_host) if on_host else None
        if len(on_host) == len(images):
            return made
        host = iter(made if made is not None else [])
        return torch.stack([i if isinstance(i, torch.Tensor) else next(host) for i in images])

    def _host_pixels(self, images: list[Image.Image | np.ndarray]) -> torch.Tensor:
        if not self.draft_size:
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
            return self._to_device(pixels)
        prepared = [self.prepare(i) if isinstance(i, Image.Image) else i for i in images]
        batch = self._to_device(torch.from_numpy(np.stack(prepared)))  # 8-bit: 1/4 the bytes
        return self._normalise(
            batch.permute(0, 3, 1, 2).float().mul_(self.processor.rescale_factor)
        )

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.startswith("cuda"):
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def decode_on_device(self, jpeg: bytes, max_pixels: int, max_bytes: int) -> torch.Tensor:
        """One JPEG decoded, resized and normalised on the GPU (`gpu_decode`), refused by the
        same limits as on the CPU."""
        if len(jpeg) > max_bytes:
            raise ImageError(f"image file is {len(jpeg)} bytes (limit {max_bytes})")
        with Image.open(io.BytesIO(jpeg)) as header:  # reads the header only
            width, height = header.size
        if width * height > max_pixels:
            raise ImageError(f"image is {width}x{height} pixels (limit {max_pixels} pixels)")
        processor = self.processor
        image = self.jpeg_decoder.decode(jpeg).float().unsqueeze(0)
        width, height = self.draft_size
        resized = torch.nn.functional.interpolate(
            image, size=(height, width), mode="bicubic", antialias=True, align_corners=False
        ).clamp_(0, 255)
        return self._normalise(resized.mul_(processor.rescale_factor))[0]

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.processor.image_mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.processor.image_std, device=pixels.device).view(1, 3, 1, 1)
        return (pixels - mean) / std


def _load_model(model_name: str, attention: str) -> torch.nn.Module:
    """The model with the attention implementation asked for; one without attention (a
    ResNet) or without that implementation keeps its own."""
    try:
        return AutoModel.from_pretrained(model_name, attn_implementation=attention)
    except ValueError as exc:
        if "attention implementation" not in str(exc):
            raise
        log.info("%s: %s attention not supported, using its own", model_name, attention)
        return AutoModel.from_pretrained(model_name)


class DeviceJpeg:
    """torchvision's nvJPEG decoder: an optional extra, imported only when asked for."""

    def __init__(self, device: str) -> None:
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except Exception as exc:  # not installed, or built for another torch
            raise ModelError(
                "MEDINDEX_GPU_DECODE needs torchvision built for this torch "
                f"(pip install 'medindex[gpu-decode]'): {first_line(exc)}"
            ) from exc
        self.device, self.read_mode, self._decode = device, ImageReadMode.RGB, decode_jpeg

    def decode(self, jpeg: bytes) -> torch.Tensor:
        data = torch.frombuffer(bytearray(jpeg), dtype=torch.uint8)
        try:
            return self._decode(data, mode=self.read_mode, device=self.device)
        except RuntimeError as exc:
            raise ImageError(f"cannot decode JPEG on the GPU: {first_line(exc)}") from exc


def is_jpeg(data: object) -> bool:
    return isinstance(data, bytes | bytearray) and data[:3] == b"\xff\xd8\xff"


class TrivialEmbedder:
    """The stand-in for TRIVIAL_MODEL: no decoding, no inference. Each row's vector is a
    function of its key (`trivial_vectors`): distinct, clustered as embeddings are, and known
    to whoever knows the keys (the scale bench's exact search)."""

    needs_pixels = False
    draft_size = None
    dim = TRIVIAL_DIM

    def embed(self, keys: list) -> np.ndarray:
        return trivial_vectors([str(key) for key in keys], self.dim)


@cache
def get_embedder(
    model_name: str,
    device: str,
    pooling: str = "mean",
    preprocessing: str = "exact",
    kernels: Kernels = Kernels(),
) -> Embedder | TrivialEmbedder:
    if model_name == TRIVIAL_MODEL:
        return TrivialEmbedder()
    return Embedder(model_name, device, pooling, preprocessing, kernels)


def share_cpu(processes: int) -> None:
    """Give each of `processes` embed processes its share of the cores, so that they do not
    oversubscribe them (one decodes while another runs the model)."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))
