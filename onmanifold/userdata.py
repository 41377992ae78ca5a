"""The user's own images: a folder of PNG/JPEG files or a tensor file, read into ``(N, C, H, W)`` in [-1, 1].

Every command that takes the user's data (``train ... --data``, ``sample --images``, ``--mask``,
``--measurement``) reads it here, so the rules are the same everywhere:

* **an image folder** (``.png``, ``.jpg``, ``.jpeg``; sorted by file name; subfolders are classes,
  see :func:`load_image_folder`): 8-bit pixels ``u`` map to ``x = u / 127.5 - 1`` (the inverse of
  :func:`onmanifold.images.to_uint8`), 16-bit ones to ``u / 32767.5 - 1``. Greyscale files give one
  channel; any colour file makes the whole set RGB (3 channels; alpha is dropped). Images of several
  sizes need ``resize`` and/or ``crop``: without them a mixed-size folder is refused, naming the option.
* **a tensor file** (``.pt`` read with ``weights_only=True``, ``.npy`` without pickles): ``N x C x H x W``
  with ``C`` in {1, 3}, values in [-1, 1] (used as they are) or in [0, 255] (integers or floats above
  1: ``x = u / 127.5 - 1``). The scale found is reported (:attr:`UserImages.scale`). A channels-last
  array (``N x H x W x C``) or values in [0, 1] (ambiguous: [0, 1] data or [-1, 1] data without
  negatives) are refused with the fix in the message.

``resize=S`` scales each image so that its shorter side is ``S`` (bicubic, PIL), ``crop=S`` then cuts the
centre ``S x S`` square; with both, a folder of any sizes becomes ``S x S``.

Every error is a ``ValueError`` whose message starts with the option that gave the path (``--data: ...``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["UserImages", "load_user_images", "load_image_folder", "load_tensor_file", "load_mask", "load_labels",
           "write_image_folder", "model_image_shape", "IMAGE_SUFFIXES", "TENSOR_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TENSOR_SUFFIXES = (".pt", ".pth", ".npy")


@dataclass
class UserImages:
    """Images read from the user's path.

    Attributes:
        images: ``(N, C, H, W)`` float32 in [-1, 1].
        source: ``"images"`` (a folder or one image file) or ``"tensor"``.
        scale: what the values were read as: ``"[-1, 1]"``, ``"[0, 255]"``, ``"8-bit"`` or ``"16-bit"``.
        names: the file names (image folders), in the order of ``images``.
        classes: the class names when the folder had one subfolder per class (else empty).
        labels: ``(N,)`` class indices into ``classes`` (None without subfolders).
    """

    images: torch.Tensor
    source: str
    scale: str
    names: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    labels: torch.Tensor | None = None

    def describe(self) -> str:
        n, c, h, w = self.images.shape
        what = "image files" if self.source == "images" else "a tensor file"
        return f"{n} images of {c} x {h} x {w} from {what}, read as {self.scale} values"


def _check_size(value: int | None, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}: expected a positive number of pixels, got {value!r}")


def _pil_to_tensor(img, colour: bool) -> tuple[torch.Tensor, str]:
    """One PIL image -> ``(C, H, W)`` in [-1, 1] and its bit depth."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        x = torch.from_numpy(a / 32767.5 - 1.0).float()[None]
        return (x.expand(3, -1, -1).clone() if colour else x), "16-bit"
    img = img.convert("RGB" if colour else "L")
    a = np.asarray(img, dtype=np.float32)
    x = torch.from_numpy(a / 127.5 - 1.0)
    return (x.permute(2, 0, 1).contiguous() if colour else x[None]), "8-bit"


def _is_colour(img) -> bool:
    if img.mode in ("L", "LA", "1", "I;16", "I;16B", "I;16L", "I"):
        return False
    return _has_colour(img.convert("RGB"))  # an RGB file of grey pixels stays one channel


def _has_colour(rgb) -> bool:
    a = np.asarray(rgb)
    return bool((a[..., 0] != a[..., 1]).any() or (a[..., 1] != a[..., 2]).any())


def _resize_crop(img, resize: int | None, crop: int | None, option: str, name: str):
    from PIL import Image

    if resize is not None:
        w, h = img.size
        s = resize / min(w, h)
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    if crop is not None:
        w, h = img.size
        if crop > min(w, h):
            raise ValueError(f"{option}: {name} is {w} x {h} pixels, smaller than --crop {crop} (add --resize {crop})")
        left, top = (w - crop) // 2, (h - crop) // 2
        img = img.crop((left, top, left + crop, top + crop))
    return img


def _image_files(folder: Path) -> tuple[list[Path], list[str], list[int]]:
    """The image files of ``folder`` (or of its class subfolders), their class names and labels."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if files or not subdirs:
        return files, [], []
    out, labels, classes = [], [], []
    for k, d in enumerate(subdirs):
        inner = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        classes.append(d.name)
        out += inner
        labels += [k] * len(inner)
    return out, classes, labels


def load_image_folder(path: str | os.PathLike, option: str = "--data", resize: int | None = None, crop: int | None = None) -> UserImages:
    """Read a folder of PNG/JPEG images (or one image file) into ``(N, C, H, W)`` in [-1, 1] (module docstring).

    A folder that holds no image files but subfolders of them is a classified set: each subfolder is a
    class (sorted names), its images get that class's index as label.
    """
    from PIL import Image, UnidentifiedImageError

    _check_size(resize, "--resize")
    _check_size(crop, "--crop")
    p = Path(path)
    if p.is_file():
        files, classes, labels = [p], [], []
    elif p.is_dir():
        files, classes, labels = _image_files(p)
    else:
        raise ValueError(f"{option}: no such file or folder {str(p)!r}")
    if not files:
        raise ValueError(f"{option}: {str(p)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}), neither directly nor in class subfolders")
    opened = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                opened.append(_resize_crop(im.copy(), resize, crop, option, f.name))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{option}: {str(f)!r} is not a readable image ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})") from e
    sizes = sorted({im.size for im in opened})
    if len(sizes) > 1:
        (w0, h0), (w1, h1) = sizes[0], sizes[-1]
        raise ValueError(f"{option}: the images have {len(sizes)} different sizes ({w0} x {h0} ... {w1} x {h1}); "
                         "give --resize S and/or --crop S to bring them to one size")
    colour = any(_is_colour(im) for im in opened)
    tensors, depths = zip(*(_pil_to_tensor(im, colour) for im in opened))
    scale = "16-bit" if "16-bit" in depths else "8-bit"
    return UserImages(torch.stack(tensors), "images", scale, [f.name if not classes else f"{f.parent.name}/{f.name}" for f in files],
                      classes, torch.tensor(labels, dtype=torch.long) if classes else None)


def _read_array(path: Path, option: str):
    if path.suffix.lower() == ".npy":
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except (ValueError, OSError) as e:
            raise ValueError(f"{option}: {str(path)!r} is not a readable .npy array without pickles ({str(e)[:100]})") from e
    from .io import load_tensors

    t = load_tensors(path, option)
    if not torch.is_tensor(t):
        raise ValueError(f"{option}: {str(path)!r} holds a {type(t).__name__}, expected one tensor")
    return t


def load_tensor_file(path: str | os.PathLike, option: str = "--data") -> UserImages:
    """Read an ``N x C x H x W`` tensor file (``.pt``/``.npy``) in [-1, 1] or [0, 255] (module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{option}: no such file {str(p)!r}")
    t = _read_array(p, option)
    shape = tuple(t.shape)
    if t.dim() != 4:
        raise ValueError(f"{option}: expected a tensor N x C x H x W, got {t.dim()} dimensions {shape}")
    if shape[1] not in (1, 3) and shape[3] in (1, 3):
        raise ValueError(f"{option}: shape {shape} looks channels-last (N x H x W x C); expected N x C x H x W "
                         "(transpose it: x.permute(0, 3, 1, 2))")
    if shape[1] not in (1, 3):
        raise ValueError(f"{option}: expected N x C x H x W with C = 1 (grey) or 3 (RGB) channels, got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"{option}: the tensor holds no images (shape {shape})")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{option}: expected real pixel values, got dtype {t.dtype}")
    integer = not t.is_floating_point()
    x = t.double()
    if not torch.isfinite(x).all():
        raise ValueError(f"{option}: contains NaN or Inf")
    lo, hi = float(x.min()), float(x.max())
    if integer or (hi > 1.0 + 1e-6 and lo >= 0):
        if lo < 0 or hi > 255:
            raise ValueError(f"{option}: values in [{lo:.4g}, {hi:.4g}]; expected [-1, 1] or [0, 255]")
        return UserImages((x / 127.5 - 1.0).float(), "tensor", "[0, 255]")
    if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
        raise ValueError(f"{option}: values in [{lo:.4g}, {hi:.4g}]; expected [-1, 1] or [0, 255]")
    if lo >= 0:
        raise ValueError(f"{option}: values in [{lo:.4g}, {hi:.4g}] look like [0, 1] data (no negative value); expected [-1, 1] "
                         "(rescale with 2 x - 1) or [0, 255]")
    return UserImages(t.float() if t.dtype != torch.float32 else t, "tensor", "[-1, 1]")


def load_user_images(path: str | os.PathLike, option: str = "--data", resize: int | None = None, crop: int | None = None) -> UserImages:
    """A folder or file of images, or a tensor file, as :class:`UserImages` (module docstring)."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() in TENSOR_SUFFIXES:
        if resize is not None or crop is not None:
            flag = "--resize" if resize is not None else "--crop"
            raise ValueError(f"{flag}: applies to image files; {str(p)!r} is a tensor file (resize it before saving)")
        return load_tensor_file(p, option)
    if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{option}: {str(p)!r} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a tensor file ({', '.join(TENSOR_SUFFIXES)})")
    return load_image_folder(p, option, resize, crop)


def load_mask(path: str | os.PathLike, n: int, size: tuple[int, int], option: str = "--mask") -> torch.Tensor:
    """Inpainting masks ``(n, 1, H, W)`` in {0, 1} (1 = observed pixel) from a PNG, a folder of PNGs or a tensor file.

    Images: a pixel is observed where its grey value is at least 128 (white), missing where it is dark.
    Tensors: ``H x W``, ``1 x H x W``, ``K x H x W`` or ``K x 1 x H x W`` with values 0 and 1. One mask is used
    for every image; ``K`` masks must be one per image (``K = n``). Sizes must be the images' ``H x W``.
    """
    p = Path(path)
    if p.is_file() and p.suffix.lower() in TENSOR_SUFFIXES:
        m = _read_array(p, option)
        if m.dim() == 2:
            m = m[None, None]
        elif m.dim() == 3:
            m = m[:, None] if m.shape[0] != 1 or n == 1 else m[None]
        if m.dim() != 4 or m.shape[1] != 1:
            raise ValueError(f"{option}: expected a mask H x W, K x H x W or K x 1 x H x W, got shape {tuple(_read_array(p, option).shape)}")
        m = m.double()
        if ((m != 0) & (m != 1)).any():
            raise ValueError(f"{option}: mask values must be 0 (missing) or 1 (observed)")
    else:
        read = load_image_folder(p, option)
        m = (read.images.mean(1, keepdim=True) >= (128 / 127.5 - 1.0) - 1e-6).double()
    if tuple(m.shape[-2:]) != tuple(size):
        raise ValueError(f"{option}: masks of {m.shape[-2]} x {m.shape[-1]} pixels do not match the images' {size[0]} x {size[1]}")
    if m.shape[0] == 1:
        m = m.expand(n, -1, -1, -1)
    elif m.shape[0] != n:
        raise ValueError(f"{option}: {m.shape[0]} masks for {n} images; give one mask for all or one per image")
    kept = m.flatten(1).sum(1)
    if (kept == 0).any():
        raise ValueError(f"{option}: masks {torch.nonzero(kept == 0).flatten().tolist()[:5]} observe no pixel (all dark)")
    return m.float().contiguous()


def load_labels(path: str | os.PathLike, n: int, option: str = "--labels") -> torch.Tensor:
    """Class labels ``(n,)`` from a tensor file (``.pt``/``.npy``, ``N`` integers) or a text file (one integer per line)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{option}: no such file {str(p)!r}")
    if p.suffix.lower() in TENSOR_SUFFIXES:
        t = _read_array(p, option)
    else:
        try:
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
            t = torch.tensor([int(v) for v in lines])
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{option}: expected one integer class label per line ({str(e)[:80]})") from e
    if t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"{option}: expected {n} integer class labels (a vector), got shape {tuple(t.shape)} of {t.dtype}")
    if t.shape[0] != n:
        raise ValueError(f"{option}: {t.shape[0]} labels for {n} images")
    if int(t.min()) < 0:
        raise ValueError(f"{option}: class labels must be >= 0, got {int(t.min())}")
    return t.long()


def write_image_folder(x: torch.Tensor, folder: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Write ``(N, C, H, W)`` images in [-1, 1] as 8-bit PNGs ``folder/{prefix}{i:05d}.png`` (atomic writes); returns the paths.

    8 bits per pixel: :func:`load_image_folder` reads back ``round((x + 1) 127.5) / 127.5 - 1`` (exact when
    ``x`` is on that grid, e.g. binary masks).
    """
    from PIL import Image

    from .images import to_uint8
    from .io import write_atomic

    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"x: expected (N, 1 or 3, H, W) images, got shape {tuple(x.shape)}")
    folder = Path(folder)
    paths = []
    for i, u in enumerate(to_uint8(x)):
        img = Image.fromarray(u[..., 0] if u.shape[-1] == 1 else u)
        paths.append(write_atomic(folder / f"{prefix}{i:05d}.png", lambda f, img=img: img.save(f, format="PNG")))
    return paths


def model_image_shape(loaded) -> tuple[int, ...]:
    """The ``(C, H, W)`` of one image a loaded model makes (what the user's images must match): its sample shape,
    or for a latent model the VAE's decoded shape."""
    if loaded.data_range is not None or not hasattr(loaded.model, "decode"):
        return tuple(loaded.sample_shape)
    with torch.no_grad():
        return tuple(loaded.decode(torch.zeros(1, *loaded.sample_shape)).shape[1:])
