"""Tests for tritune.evaluators.data: embedded sets, user data (npz, folder, callable), errors."""
from __future__ import annotations

import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from importlib.metadata import EntryPoint

from tritune.evaluators import data as data_module
from tritune.evaluators.data import ImageData, available_datasets, load_dataset, register_dataset
from tritune.spaces.plugins import PluginGroup

EMBEDDED = {"digits": (1797, 8), "mnist5k": (5000, 28), "mnist5k-hard": (5000, 32)}


def raw(data: ImageData, split: str = "train") -> torch.Tensor:
    """Undo the normalisation: back to the [0, 1] pixel scale."""
    x = getattr(data, split).tensors[0]
    mean = torch.tensor(data.mean)[None, :, None, None]
    std = torch.tensor(data.std)[None, :, None, None]
    return x * std + mean


def test_available_datasets():
    assert available_datasets() == list(EMBEDDED)


@pytest.mark.parametrize("name", list(EMBEDDED))
def test_embedded_shapes_dtypes_normalisation(name):
    n, size = EMBEDDED[name]
    d = load_dataset(name)
    xtr, ytr = d.train.tensors
    xte, yte = d.test.tensors
    assert (d.name, d.num_classes, d.channels, d.image_size) == (name, 10, 1, size)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64 and xte.dtype == torch.float32
    assert xtr.shape[1:] == (1, size, size) and xte.shape[1:] == (1, size, size)
    assert len(xtr) + len(xte) == n and len(xte) == pytest.approx(0.2 * n, abs=10)
    # normalised with the training split's statistics
    assert abs(float(xtr.mean())) < 1e-4 and float(xtr.std()) == pytest.approx(1.0, abs=1e-3)
    assert 0.0 <= float(raw(d).min()) + 1e-5 and float(raw(d).max()) <= 1.0 + 1e-5
    # stratified: every class holds about test_fraction of its images in the test split
    counts_all = torch.bincount(torch.cat([ytr, yte]), minlength=10)
    counts_test = torch.bincount(yte, minlength=10)
    assert torch.all((counts_test - 0.2 * counts_all).abs() <= 1)
    assert d.classes == tuple(str(i) for i in range(10))


def test_resize_and_split_options():
    d = load_dataset("digits", image_size=16, test_fraction=0.5)
    assert d.train.tensors[0].shape[1:] == (1, 16, 16) and d.image_size == 16
    assert len(d.test) == pytest.approx(1797 / 2, abs=10)


def test_deterministic_given_seed():
    a, b = load_dataset("mnist5k-hard", seed=3), load_dataset("mnist5k-hard", seed=3)
    for sa, sb in ((a.train, b.train), (a.test, b.test)):
        assert torch.equal(sa.tensors[0], sb.tensors[0]) and torch.equal(sa.tensors[1], sb.tensors[1])
    c = load_dataset("mnist5k-hard", seed=4)
    assert not torch.equal(a.test.tensors[1], c.test.tensors[1]) or not torch.equal(a.test.tensors[0], c.test.tensors[0])
    # the corrupted images themselves do not depend on the split seed, only which split holds them
    sums = [torch.sort(torch.cat([raw(d, "train"), raw(d, "test")]).flatten(1).sum(1)).values for d in (a, c)]
    assert torch.allclose(sums[0], sums[1], atol=1e-2)


def test_the_same_bytes_whatever_the_callers_thread_count():
    """A state fine-tuned in a 2-thread pipeline is checked against the data an export loads in
    another process; the warps of mnist5k-hard once differed between thread counts."""
    import hashlib

    from tritune.kernels.timing import torch_threads

    digests = []
    for threads in (1, 2):
        data_module._mnist5k_hard.cache_clear()
        with torch_threads(threads):
            d = load_dataset("mnist5k-hard", image_size=28)
        digests.append(hashlib.sha256(d.train.tensors[0].numpy().tobytes() + d.test.tensors[0].numpy().tobytes()).hexdigest())
    assert digests[0] == digests[1]


def test_hard_variant_is_harder_for_a_linear_model():
    from sklearn.linear_model import LogisticRegression

    scores = {}
    for name in ("mnist5k", "mnist5k-hard"):
        d = load_dataset(name, seed=0)
        x, y = d.train.tensors
        xt, yt = d.test.tensors
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs may stop at max_iter; the comparison still holds
            clf = LogisticRegression(C=0.01, max_iter=100).fit(x[:1500].flatten(1).numpy(), y[:1500].numpy())
        scores[name] = clf.score(xt.flatten(1).numpy(), yt.numpy())
    assert scores["mnist5k"] > 0.8
    assert scores["mnist5k-hard"] < scores["mnist5k"] - 0.25, scores


# ------------------------------------------------------------------------------------ user data

def _images(n_per_class=6, classes=3, h=9, w=9, c=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n_per_class * classes, h, w) + ((c,) if c else ())
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    y = np.repeat(np.arange(classes), n_per_class)
    return x, y


def _same_images(a: torch.Tensor, b: np.ndarray, atol=1e-5):
    """The two stacks hold the same images, in any order."""
    b = torch.as_tensor(b, dtype=torch.float32)
    ka, kb = torch.argsort(a.flatten(1) @ torch.arange(a[0].numel(), dtype=torch.float32)), \
        torch.argsort(b.flatten(1) @ torch.arange(b[0].numel(), dtype=torch.float32))
    return torch.allclose(a[ka], b[kb], atol=atol)


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_round_trip(tmp_path, layout):
    x, y = _images(c=None if layout == "NHW" else 3)
    stored = x if layout != "NCHW" else x.transpose(0, 3, 1, 2)
    np.savez(tmp_path / "d.npz", x=stored, y=y + 5)  # labels 5, 6, 7 -> 0, 1, 2
    d = load_dataset({"npz": tmp_path / "d.npz"}, test_fraction=0.5)
    channels = 1 if layout == "NHW" else 3
    assert (d.channels, d.image_size, d.num_classes, d.classes) == (channels, 9, 3, ("5", "6", "7"))
    nchw = x[:, None] if layout == "NHW" else x.transpose(0, 3, 1, 2)
    both = torch.cat([raw(d, "train"), raw(d, "test")])
    assert _same_images(both, nchw / 255.0, atol=1e-4)
    assert sorted(torch.cat([d.train.tensors[1], d.test.tensors[1]]).tolist()) == sorted((y).tolist())


def test_arrays_float_and_resize():
    x, y = _images(h=12, w=12)
    d = load_dataset({"x": x.astype(np.float64) / 255.0, "y": y}, image_size=6)
    assert d.train.tensors[0].shape[1:] == (1, 6, 6) and d.name == "arrays"


def _write_folder(root, modes=("L", "L", "RGB"), size=10, n=4):
    rng = np.random.default_rng(1)
    for k, cls in enumerate(("cat", "dog", "emu")):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            mode = modes[(k * n + i) % len(modes)]
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(root / cls / f"{i}.png")
    return root


def test_folder_round_trip(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    # one JPEG of another size joins a class; it is resized to the common size
    Image.fromarray(np.full((14, 14), 128, np.uint8), "L").save(root / "emu" / "big.jpg")
    for spec in (root, {"folder": str(root)}):
        d = load_dataset(spec, test_fraction=0.25)
        assert d.classes == ("cat", "dog", "emu") and d.num_classes == 3
        assert d.channels == 1 and d.image_size == 10  # L is the majority mode, 10 the common size
        assert len(d.train) + len(d.test) == 13
    # a grayscale PNG comes back with its own pixels
    png = np.asarray(Image.open(root / "cat" / "0.png"), dtype=np.float32) / 255.0
    both = torch.cat([raw(d, "train"), raw(d, "test")])[:, 0]
    assert (both - torch.from_numpy(png)).abs().flatten(1).max(1).values.min() < 1e-4
    rgb = load_dataset(_write_folder(tmp_path / "rgb", modes=("RGB", "RGB", "L")), image_size=7)
    assert rgb.channels == 3 and rgb.train.tensors[0].shape[1:] == (3, 7, 7)


def _dataset(n=30, classes=3):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, 1, 6, 6, generator=g), torch.arange(n) % classes)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, n=20):
        self.items = [(np.full((5, 5), i, np.float32), i % 2) for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_callable_round_trips(tmp_path, monkeypatch, request):
    d = load_dataset(_dataset)
    assert (d.num_classes, d.channels, d.image_size, len(d.train) + len(d.test)) == (3, 1, 6, 30)
    pair = load_dataset(lambda: (_dataset(30), _dataset(9)))
    assert (len(pair.train), len(pair.test)) == (30, 9)  # the caller's split is kept
    assert _same_images(raw(pair, "test"), _dataset(9).tensors[0].numpy())
    lst = load_dataset({"callable": ListDataset, "kwargs": {"n": 10}}, test_fraction=0.4)
    assert (len(lst.train), len(lst.test), lst.image_size) == (6, 4, 5)
    # a job file names a function of the user's own Python by the name it was registered under
    def make(n: int = 12):
        return TensorDataset(torch.rand(n, 3, 4, 4), torch.arange(n) % 2)

    register_dataset("my-data", make)
    request.addfinalizer(lambda: data_module.DATASETS.unregister("my-data"))
    s = load_dataset("my-data")
    assert (s.channels, s.num_classes, s.name, len(s.train) + len(s.test)) == (3, 2, "my-data", 12)
    assert len(load_dataset({"name": "my-data", "kwargs": {"n": 20}}).train) == 16
    with pytest.raises(ValueError, match=r"dataset.kwargs.n: '20' \(str\) not allowed; expected an integer"):
        load_dataset({"name": "my-data", "kwargs": {"n": "20"}})
    with pytest.raises(ValueError, match=r"dataset.kwargs: unknown options \['size'\]"):
        load_dataset({"name": "my-data", "kwargs": {"size": 20}})


def test_plugin_datasets_come_from_entry_points(tmp_path, monkeypatch):
    module = "tritune_test_plugin_data"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import TensorDataset
        def make():
            return TensorDataset(torch.rand(10, 1, 4, 4), torch.arange(10) % 2)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(name="plug-data", value=f"{module}:make", group="tritune.datasets")
    monkeypatch.setattr(data_module.DATASETS, "plugins", PluginGroup("tritune.datasets", lambda group: [ep]))
    try:
        assert module not in sys.modules
        with pytest.raises(ValueError, match="unknown data set 'other'.*plug-data"):
            load_dataset("other")
        assert module not in sys.modules  # listed, not imported
        assert load_dataset("plug-data").num_classes == 2 and module in sys.modules
    finally:
        sys.modules.pop(module, None)
        data_module.DATASETS.unregister("plug-data")


@pytest.mark.parametrize("spec", ["os:system", {"callable": "os:system", "kwargs": {"command": "true"}},
                                  {"callable": "tritune.evaluators.data:_digits"}, "builtins:exec"])
def test_strings_never_name_code(spec, tmp_path, monkeypatch):
    """A job file is data: a 'module:function' string is refused, nothing is imported or called."""
    calls = []
    monkeypatch.setattr("os.system", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match="never names code to import.*register_dataset"):
        load_dataset(spec)
    assert calls == []


# --------------------------------------------------------------------------------------- errors

def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="unknown data set 'cifar10'.*digits, mnist5k, mnist5k-hard"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="dataset.name: unknown data set"):
        load_dataset({"name": "svhn"})


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.npz: no file"):
        load_dataset({"npz": tmp_path / "nope.npz"})
    with pytest.raises(FileNotFoundError, match="dataset.folder: no directory"):
        load_dataset(tmp_path / "nope")


@pytest.mark.parametrize("x, y, match", [
    (np.zeros((6, 2, 3, 3, 3), np.uint8), np.arange(6) % 2, r"x: shape \(6, 2, 3, 3, 3\) not allowed"),
    (np.zeros((6, 5, 7, 7), np.uint8), np.arange(6) % 2, "has no channel axis"),
    (np.zeros((6, 7, 7), np.uint8), np.arange(5) % 2, "x holds 6 images but y holds 5 labels"),
    (np.zeros((6, 7, 7), np.uint8), np.linspace(0, 1, 6), "y: dtype float64 not allowed; allowed: integer"),
    (np.zeros((6, 7, 7), np.uint8), np.zeros((6, 2), np.int64), r"y: shape \(6, 2\) not allowed"),
    (np.zeros((6, 7, 7), np.int32), np.arange(6) % 2, "x: dtype int32 not allowed; allowed: uint8 or float"),
    (np.zeros((6, 7, 7), np.uint8), np.zeros(6, np.int64), "need at least 2"),
    (np.full((6, 7, 7), np.nan, np.float32), np.arange(6) % 2, "NaN"),
    (np.zeros((6, 7, 9), np.uint8), np.arange(6) % 2, "not square; pass image_size"),
])
def test_bad_arrays(tmp_path, x, y, match):
    np.savez(tmp_path / "bad.npz", x=x, y=y)
    with pytest.raises(ValueError, match=match):
        load_dataset({"npz": tmp_path / "bad.npz"})


def test_npz_without_y_and_not_npz(tmp_path):
    np.savez(tmp_path / "noy.npz", x=np.zeros((4, 3, 3)))
    with pytest.raises(ValueError, match=r"lacks arrays \['y'\]"):
        load_dataset({"npz": tmp_path / "noy.npz"})
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot read"):
        load_dataset({"npz": tmp_path / "junk.npz"})


def test_folder_errors(tmp_path):
    root = _write_folder(tmp_path / "a")
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="class folder 'empty' is empty"):
        load_dataset(root)
    root = _write_folder(tmp_path / "b")
    (root / "dog" / "notes.png").write_text("this is not an image")
    with pytest.raises(ValueError, match="cannot read .*notes.png.* as an image"):
        load_dataset(root)
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(one / "only" / "x.png")
    with pytest.raises(ValueError, match="need at least 2"):
        load_dataset({"folder": one})


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, "0.2", True])
def test_bad_test_fraction(fraction):
    with pytest.raises(ValueError, match="dataset.test_fraction.*open interval"):
        load_dataset("digits", test_fraction=fraction)


def test_bad_spec_forms():
    with pytest.raises(ValueError, match="dataset.image_size"):
        load_dataset("digits", image_size=0)
    with pytest.raises(ValueError, match="exactly one of"):
        load_dataset({"npz": "a", "folder": "b"})
    with pytest.raises(ValueError, match="unknown fields"):
        load_dataset({"name": "digits", "colour": True})
    with pytest.raises(ValueError, match="never names code to import"):
        load_dataset("no_such_module_xyz:make")
    with pytest.raises(ValueError, match="dataset.name: 7 not allowed"):
        load_dataset({"name": 7})
    with pytest.raises(ValueError, match="takes no kwargs"):
        load_dataset({"name": "digits", "kwargs": {}})
    with pytest.raises(ValueError, match="expected a torch Dataset"):
        load_dataset(lambda: 123)
    with pytest.raises(ValueError, match="int not allowed"):
        load_dataset(42)
