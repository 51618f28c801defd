"""The matrix forms of depthwise and 1x1 convolutions compute what ``F.conv2d`` computes, gradients included."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from tritune.kernels import small_maps
from tritune.kernels.small_maps import depthwise_conv2d, pointwise_conv2d

CASES = [(hw, k, s, p) for hw, k, s, p in itertools.product([(1, 1), (2, 2), (3, 3), (3, 5), (6, 6)], [1, 3, 5, 7], [1, 2], ["same", 0])
         if p == "same" or (hw[0] >= k and hw[1] >= k)]


@pytest.mark.parametrize("hw,k,stride,padding", CASES)
def test_matches_conv2d_and_its_gradients(hw, k, stride, padding):
    torch.manual_seed(0)
    pad = k // 2 if padding == "same" else padding
    x = torch.randn(3, 5, *hw, requires_grad=True)
    w = torch.randn(5, 1, k, k, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    want = F.conv2d(x, w, b, stride, pad, 1, 5)
    got = depthwise_conv2d(x, w, b, stride, pad)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(want)
    for a, c in zip(torch.autograd.grad(want, (x, w, b), g), torch.autograd.grad(got, (x, w, b), g)):
        torch.testing.assert_close(c, a, atol=1e-4, rtol=1e-4)


def test_takes_the_matrix_form_only_while_recording_on_small_maps(monkeypatch):
    calls = []
    real = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(1) or real(*a))
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    depthwise_conv2d(torch.randn(2, 4, 6, 6), w, None, 1, 1)
    assert calls == [1]
    with torch.no_grad():
        depthwise_conv2d(torch.randn(2, 4, 6, 6), w, None, 1, 1)
    depthwise_conv2d(torch.randn(2, 4, 7, 7), w, None, 1, 1)  # 49 pixels > MAP_PER_TAP * 9
    assert calls == [1]
    monkeypatch.setattr(small_maps, "MAP_PER_TAP", 0)
    depthwise_conv2d(torch.randn(2, 4, 2, 2), w, None, 1, 1)
    assert calls == [1]


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (6, 6), (12, 12), (13, 13)])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_matches_conv2d_and_its_gradients(hw, bias):
    torch.manual_seed(1)
    x = torch.randn(3, 6, *hw, requires_grad=True)
    w = torch.randn(5, 6, 1, 1, requires_grad=True)
    b = torch.randn(5, requires_grad=True) if bias else None
    want = F.conv2d(x, w, b)
    got = pointwise_conv2d(x, w, b)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    inputs = (x, w, b) if bias else (x, w)
    g = torch.randn_like(want)
    for a, c in zip(torch.autograd.grad(want, inputs, g), torch.autograd.grad(got, inputs, g)):
        torch.testing.assert_close(c, a, atol=1e-4, rtol=1e-4)


def test_pointwise_takes_the_matrix_form_only_while_recording_on_small_maps(monkeypatch):
    calls = []
    real = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: calls.append(1) or real(a, b))
    w = torch.randn(4, 3, 1, 1, requires_grad=True)
    pointwise_conv2d(torch.randn(2, 3, 12, 12), w)
    assert calls == [1]
    with torch.no_grad():
        pointwise_conv2d(torch.randn(2, 3, 4, 4), w)
    pointwise_conv2d(torch.randn(2, 3, 13, 13), w)  # 169 pixels > POINTWISE_MAP
    monkeypatch.setattr(small_maps, "POINTWISE_MAP", 0)
    pointwise_conv2d(torch.randn(2, 3, 1, 1), w)
    assert calls == [1]
