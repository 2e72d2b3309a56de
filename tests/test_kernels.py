"""Each kernel of speechdistill.kernels against the model's own code (the reference path), forward and
backward, on whatever this CPU is: a test asks the registry whether a kernel applies here and skips, with
the reason, where it does not. Also the registry's policy and the kept-tensor cache's invalidation."""
import copy
import io
import time

import pytest
import torch
import torch.nn.functional as F

from speechdistill import kernels
from speechdistill.kernels import conv as conv_kernels
from speechdistill.kernels import onednn, positional
from speechdistill.models.components import (ConvFeatureExtractor, Dropout, FeedForward, PositionalConv, dropout,
                                             linear, project_layer)
from speechdistill.models.heads import SplitLinear
from test_models_support import batch

torch.set_num_threads(2)
CPU = torch.device("cpu")


def applies(name, dtype=torch.float32, frozen=False, grad=False, size=1 << 30):
    """Whether kernel ``name`` runs such a call on this machine (and the policy allows it)."""
    op = name.split("/")[0]
    selected = [k for k in kernels.kernels(op) if k.name == name]
    assert selected, f"no kernel {name}"
    return selected[0].applies(kernels.Request(op, CPU, dtype, frozen=frozen, grad=grad, size=size))


def require(name, **request):
    if not applies(name, **request):
        pytest.skip(f"{name} does not apply here ({request}): this CPU or torch build lacks what it needs")


# ----------------------------------------------------------------------------------------- registry, policy
def test_policy_comes_from_use_then_the_environment_and_unknown_values_are_errors(monkeypatch):
    monkeypatch.delenv(kernels.ENV_VARIABLE, raising=False)
    assert kernels.policy() == "auto"
    assert kernels.parse_policy("auto") is None and kernels.parse_policy("reference") == frozenset()
    assert kernels.parse_policy("cpu, onednn") == {"cpu", "onednn"}
    with pytest.raises(ValueError, match="SPEECHDISTILL_KERNELS: 'mkl' is not a kernel policy.*onednn"):
        kernels.parse_policy("mkl")
    x = torch.randn(4, 8)
    assert kernels.find("dropout", x, (), 32) is not None  # a CPU kernel exists for dropout
    monkeypatch.setenv(kernels.ENV_VARIABLE, "reference")
    assert kernels.policy() == "reference" and kernels.find("dropout", x, (), 32) is None
    with kernels.use("cpu"):  # use() wins over the environment
        assert kernels.policy() == "cpu" and kernels.find("dropout", x, (), 32) is not None
        with kernels.use("onednn"):  # dropout is not an onednn kernel
            assert kernels.find("dropout", x, (), 32) is None
    assert kernels.find("dropout", x, (), 32) is None
    with pytest.raises(ValueError, match="kernels: 'fast' is not a kernel policy"):
        with kernels.use("fast"):
            pass


def test_every_op_has_a_kernel_and_kernels_say_when_they_apply():
    assert set(kernels.OPS) == {k.name.split("/")[0] for k in kernels.kernels()}
    assert set(kernels.backends()) == {"onednn", "frozen", "cpu"}
    gpu = kernels.Request("linear", torch.device("cuda", 0), torch.bfloat16, frozen=False, grad=True, size=1 << 30)
    assert kernels.select(gpu) is None  # a training product on a GPU: the model's own F.linear
    frozen_gpu = kernels.Request("linear", torch.device("cuda", 0), torch.bfloat16, frozen=True, grad=False,
                                 size=1 << 30)
    assert kernels.select(frozen_gpu).name == "linear/frozen-cast"
    for op in ("conv_features", "positional_conv", "dropout"):
        assert kernels.select(kernels.Request(op, torch.device("cuda", 0), torch.float32, False, True, 1 << 20)) is None
    empty = kernels.Request("linear", CPU, torch.float32, frozen=True, grad=False, size=0)
    assert kernels.select(empty) is None  # empty products and wrong widths stay on F.linear


def test_the_model_under_torch_compile_takes_no_kernel():
    layer = torch.nn.Linear(8, 8).requires_grad_(False)

    @torch.compile(backend="eager", fullgraph=False)
    def compiled(x):
        assert kernels.find("linear", x, (layer.weight,), 1 << 30) is None
        return project_layer(layer, x)

    torch.testing.assert_close(compiled(torch.randn(3, 8)).shape, torch.Size([3, 8]))


# ----------------------------------------------------------------------------------------- linear
@pytest.mark.parametrize("name,dtype,frozen,grad", [
    ("linear/onednn-packed", torch.float32, True, False), ("linear/onednn-packed", torch.bfloat16, True, False),
    ("linear/onednn-dense", torch.float32, False, True), ("linear/onednn-dense", torch.float32, False, False),
    ("linear/frozen-cast", torch.bfloat16, True, False), ("linear/frozen-cast", torch.float32, True, True)])
def test_linear_kernels_equal_f_linear_with_gelu_and_gradients(name, dtype, frozen, grad):
    """Each linear kernel gives F.linear (+ GELU) and, where autograd records, the same input gradient and
    (trainable weights) the same weight and bias gradients."""
    require(name, dtype=dtype, frozen=frozen, grad=grad)
    kernel = next(k for k in kernels.kernels("linear") if k.name == name)
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 320).requires_grad_(not frozen)
    x = torch.randn(3, 300, 512)[..., ::2].requires_grad_(grad)  # non-contiguous, 900 x 256 x 320 MACs
    parts = (layer.weight, layer.bias)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    with torch.set_grad_enabled(grad), autocast:
        for gelu in (False, True):
            got = kernel.run(x, layer, "linear", parts, lambda p: (p[0], p[1]), gelu)
            want = F.linear(x, layer.weight, layer.bias)
            want = F.gelu(want) if gelu else want
            assert got.dtype == want.dtype == dtype
            tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-5
            torch.testing.assert_close(got.float(), want.float(), rtol=tolerance, atol=tolerance)
    if grad:
        inputs = [x] + ([] if frozen else [layer.weight, layer.bias])
        upstream = torch.randn_like(got)
        mine = torch.autograd.grad(kernel.run(x, layer, "linear", parts, lambda p: (p[0], p[1]), True), inputs,
                                   upstream)
        theirs = torch.autograd.grad(F.gelu(F.linear(x, layer.weight, layer.bias)), inputs, upstream)
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_split_linear_per_split_kernel_products_equal_einsum():
    """The heads' K independent maps: one kernel product per split (where a linear kernel applies to
    products of this size) equals the einsum of the model's own code, values and gradients."""
    require("linear/onednn-dense", grad=True)
    torch.manual_seed(0)
    split = SplitLinear(3, 256, 320)
    h = torch.randn(4, 300, 768, requires_grad=True)
    out = split(h)
    assert "Stack" in type(out.grad_fn).__name__  # the per-split path ran
    out.square().sum().backward()
    ours = [t.grad.clone() for t in (h, split.weight, split.bias)]
    for t in (h, split.weight, split.bias):
        t.grad = None
    with kernels.use("reference"):
        reference = split(h)
    assert "Stack" not in type(reference.grad_fn).__name__
    reference.square().sum().backward()
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(ours, (h.grad, split.weight.grad, split.bias.grad)):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_onednn_plain_matmul_equals_mm_on_every_operand_layout_the_cnn_passes():
    """Window views (rows apart by the stride), overlapping windows, column slices and transposes, as the
    window products pass them; a weight operand with gaps between its rows is copied first (oneDNN's
    reference kernel took seconds for it)."""
    if not onednn.available(torch.float32):
        pytest.skip("this torch build has no oneDNN matmul")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4000, 512, generator=generator)
    third_tap = torch.as_strided(x, (1999, 512), (1024, 1), 1024)  # rows 1024 apart, 512 wide
    overlapping = torch.randn(16000, generator=generator).unfold(0, 10, 5)  # [3199, 10], strides (5, 1)
    weight = torch.randn(512, 1536, generator=generator)
    grad = torch.randn(1999, 512, generator=generator)
    cases = [(third_tap, weight[:, 1024:].t()), (grad.t(), third_tap), (grad, weight[:, :512]),
             (torch.randn(512, 3199, generator=generator), overlapping),
             (x[0, :3998].reshape(1999, 1024), weight[:, :1024].t())]
    for a, b in cases:
        start = time.perf_counter()
        product = onednn.matmul_plain(a, b)
        assert time.perf_counter() - start < 2.0  # not the reference kernel
        torch.testing.assert_close(product, torch.mm(a, b), rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(onednn.matmul(a, b), product, rtol=1e-4, atol=1e-3)
        out = torch.ones(a.shape[0], b.shape[1])
        onednn.matmul_into(out, a, b, accumulate=True)
        torch.testing.assert_close(out, product + 1, rtol=1e-4, atol=1e-3)
        onednn.matmul_into(out, a, b)
        torch.testing.assert_close(out, product, rtol=1e-4, atol=1e-3)
    assert not onednn.worth_it(torch.randn(10, 10), 1000)  # tiny products stay on torch.mm


# ----------------------------------------------------------------------------------------- kept tensors
def test_kept_tensors_are_reused_per_precision_and_renewed_by_every_kind_of_weight_change():
    """A frozen layer keeps its derived weight per autocast dtype and reuses it; an in-place edit,
    load_state_dict, .to(), a replaced parameter and an optimizer step (fused, which leaves the version
    counter alone) each make the next call derive it again; trainable weights are never kept."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8).requires_grad_(False)
    x = torch.randn(5, 16)
    calls = []

    def derive(parts):
        calls.append(1)
        return parts[0] * 2, parts[1]

    def value():
        return kernels.kept(layer, "double", (layer.weight, layer.bias), derive)[0]

    first = value()
    assert value() is first and len(calls) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value()
    assert len(calls) == 2 and value() is first  # each precision its own entry
    with torch.no_grad():
        layer.weight.mul_(0.5)
    torch.testing.assert_close(value(), layer.weight * 2)
    layer.load_state_dict({"weight": torch.ones(8, 16), "bias": torch.zeros(8)})
    torch.testing.assert_close(value(), torch.full((8, 16), 2.0))
    layer.to(torch.float64)
    assert value().dtype == torch.float64
    layer.to(torch.float32)
    layer.weight = torch.nn.Parameter(torch.full((8, 16), 3.0), requires_grad=False)
    torch.testing.assert_close(value(), torch.full((8, 16), 6.0))
    # trained, then frozen again: a fused step does not bump the version counter, the hook does
    kept_before = value()
    layer.weight.requires_grad_(True)
    optimizer = torch.optim.AdamW([layer.weight], lr=0.1, fused=True)
    layer(x).sum().backward()
    count = len(calls)
    assert kernels.kept(layer, "double", (layer.weight, layer.bias), derive)[0] is not kept_before  # trainable: fresh
    assert len(calls) == count + 1
    optimizer.step()
    layer.weight.requires_grad_(False)
    torch.testing.assert_close(value(), layer.weight * 2)
    assert not torch.equal(value(), kept_before)


def test_modules_with_kept_tensors_can_be_copied_and_pickled():
    """After a frozen forward (packed or cast weights kept), deepcopy and torch.save of the module work and
    the copy starts without the kept tensors, then gives the same output."""
    torch.manual_seed(0)
    block = FeedForward(8, 16).eval().requires_grad_(False)
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        expected = block(x)
        assert kernels.kept_entries(block.fc1)
        clone = copy.deepcopy(block)
        assert not kernels.kept_entries(clone.fc1)
        torch.testing.assert_close(clone(x), expected)
        buffer = io.BytesIO()
        torch.save(block, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        torch.testing.assert_close(loaded(x), expected)


def test_frozen_projections_handle_empty_inputs_pruned_layers_and_wrong_widths_like_f_linear():
    pruned, full = linear(8, 0).requires_grad_(False), linear(8, 4).requires_grad_(False)
    with torch.no_grad():
        assert project_layer(pruned, torch.randn(3, 8)).shape == (3, 0)
        assert project_layer(full, torch.randn(0, 8)).shape == (0, 4)
        x = torch.randn(3, 8)
        torch.testing.assert_close(project_layer(full, x, gelu=True), F.gelu(F.linear(x, full.weight, full.bias)))
    with torch.no_grad(), pytest.raises(RuntimeError, match="cannot be multiplied"):  # F.linear's own message
        project_layer(full, torch.randn(3, 7))


def test_gradients_flow_through_frozen_projections_to_trainable_inputs():
    """A frozen layer between trainable ones (adapters) keeps autograd: its input gets F.linear's gradient,
    not the packed product's missing one."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4).requires_grad_(False)
    x = torch.randn(3, 8, requires_grad=True)
    y = project_layer(layer, x, gelu=True)
    (grad,) = torch.autograd.grad(y.sum(), x)
    reference = x.detach().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.gelu(F.linear(reference, layer.weight, layer.bias)).sum(), reference)
    torch.testing.assert_close(grad, expected)


# ----------------------------------------------------------------------------------------- the CNN
def _cnn(norm="group", prunable=False, output_scale=True, channels=32):
    torch.manual_seed(0)
    cnn = ConvFeatureExtractor([[channels, 10, 5], [channels, 3, 2], [channels, 3, 2], [channels, 2, 2]], norm=norm,
                               bias=norm == "layer", prunable=prunable, output_scale=output_scale)
    with torch.no_grad():
        if output_scale:
            cnn.output_scale.uniform_(0.5, 1.5)
        for block in cnn.blocks:
            if block.norm is not None:
                block.norm.weight.uniform_(0.5, 1.5)
                block.norm.bias.normal_()
    return cnn


def _features(cnn, wavs, lengths, policy, grad, dtype=torch.float32):
    cnn.zero_grad()
    with kernels.use(policy), torch.set_grad_enabled(grad), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        features, _ = cnn(wavs, lengths, host_lengths=lengths.tolist())
    if not grad:
        return features.float(), None
    frames = cnn.output_lengths(lengths)
    valid = torch.arange(features.shape[1])[None, :] < frames[:, None]
    (features.float().pow(2) * valid[..., None]).mean().backward()
    return features.detach().float(), {n: p.grad.clone() for n, p in cnn.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("norm,prunable", [("group", False), ("layer", False), ("layer", True)])
@pytest.mark.parametrize("frozen", [False, True])
def test_cpu_cnn_kernel_equals_the_reference_cnn_in_inference_and_training(norm, prunable, frozen, monkeypatch):
    """The time-major window-product CNN (folded GroupNorm, packed products when frozen, LayerNorm with
    channel gates) gives the channels-first conv1d CNN's features on a padded batch, padded frames 0, and
    its gradients."""
    require("conv_features/cpu-windows")
    # the toy's products sit under the size from which oneDNN's plain matmul is used: use it anyway, as a
    # full-size CNN does
    monkeypatch.setattr(onednn, "MIN_MACS", 0)
    cnn = _cnn(norm, prunable)
    cnn.requires_grad_(not frozen)
    if prunable:
        for block in cnn.blocks:
            block.gate.eval()
    wavs, lengths = batch([4000, 2500])
    for grad in ([False] if frozen else [False, True]):
        fast, fast_grads = _features(cnn, wavs, lengths, "auto", grad)
        slow, slow_grads = _features(cnn, wavs, lengths, "reference", grad)
        assert fast.shape == slow.shape == (2, int(cnn.output_lengths(torch.tensor(4000))), 32)
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
        frames = int(cnn.output_lengths(torch.tensor(2500)))
        assert bool((fast[1, frames:] == 0).all()) and bool((slow[1, frames:] == 0).all())
        if grad:
            assert fast_grads.keys() == slow_grads.keys()
            for name in slow_grads:
                torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=1e-4, atol=1e-6)
    if frozen and norm == "group":
        packed = [conv_kernels.packs_for_onednn(block, torch.float32) for block in cnn.blocks[1:]]
        assert all(packed) == onednn.available(torch.float32)


def test_cpu_cnn_kernel_in_bf16_trains_as_accurately_as_the_reference_in_bf16():
    """Under bf16 autocast the window products' gradients are as close to the float32 ones as the reference
    path's own bf16 gradients (conv1d with autocast casts)."""
    require("conv_features/cpu-windows", dtype=torch.bfloat16, grad=True)
    cnn = _cnn("group", channels=64)
    wavs, lengths = batch([8000, 6500])
    _, exact = _features(cnn, wavs, lengths, "reference", True)
    _, fast = _features(cnn, wavs, lengths, "auto", True, torch.bfloat16)
    _, slow = _features(cnn, wavs, lengths, "reference", True, torch.bfloat16)
    for name in exact:
        fast_error = float((fast[name] - exact[name]).norm() / exact[name].norm())
        slow_error = float((slow[name] - exact[name]).norm() / exact[name].norm())
        assert fast_error < 0.02 and fast_error <= 1.5 * slow_error + 1e-3, (name, fast_error, slow_error)


@pytest.mark.parametrize("kernel,stride,channels,bias,per_row", [
    (3, 2, 24, True, False), (2, 2, 24, False, False), (10, 5, 1, False, False), (10, 5, 1, True, True),
    (3, 2, 8, True, True)])
def test_window_conv_gradients_equal_conv1d(kernel, stride, channels, bias, per_row):
    """The window products with their hand-written backward, in float64, give conv1d's output and gradients:
    shared weights in the parameter layout, per-utterance weights (a folded GroupNorm), strided chunks and
    copied first-layer windows."""
    torch.manual_seed(0)
    batch_size, frames, out_channels = 3, 41, 16
    x = torch.randn(batch_size, frames, channels, dtype=torch.float64)
    copied = kernel > stride and kernel * channels <= out_channels
    x.requires_grad_(not copied)  # copied windows are the waveform: no input gradient
    if per_row:
        weight = torch.randn(batch_size, out_channels, kernel * channels, dtype=torch.float64, requires_grad=True)
        b = torch.randn(batch_size, out_channels, dtype=torch.float64, requires_grad=True) if bias else None
    else:
        weight = torch.randn(out_channels, channels, kernel, dtype=torch.float64, requires_grad=True)
        b = torch.randn(out_channels, dtype=torch.float64, requires_grad=True) if bias else None
    y = conv_kernels.WindowConv.apply(x, weight, b, kernel, stride, per_row)
    if per_row:  # one conv1d per utterance with its own [C_out, C_in, k] weight
        rows = [F.conv1d(x[i:i + 1].transpose(1, 2), weight[i].view(out_channels, kernel, channels).permute(0, 2, 1),
                         None if b is None else b[i], stride=stride) for i in range(batch_size)]
        expected = torch.cat(rows).transpose(1, 2)
    else:
        expected = F.conv1d(x.transpose(1, 2), weight, b, stride=stride).transpose(1, 2)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(y)
    inputs = [t for t in (x, weight, b) if t is not None and t.requires_grad]
    for a, r in zip(torch.autograd.grad(y, inputs, upstream), torch.autograd.grad(expected, inputs, upstream)):
        assert a.shape == r.shape and a.dtype == r.dtype
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel,stride,channels,per_row", [(3, 2, 24, False), (10, 5, 1, True), (3, 2, 8, True)])
def test_window_conv_computes_only_valid_frames_and_matches_conv1d_on_them(kernel, stride, channels, per_row):
    torch.manual_seed(0)
    batch_size, frames, out_channels = 3, 41, 16
    x = torch.randn(batch_size, frames, channels, dtype=torch.float64)
    copied = kernel > stride and kernel * channels <= out_channels
    x.requires_grad_(not copied)
    shape = (batch_size, out_channels, kernel * channels) if per_row else (out_channels, channels, kernel)
    weight = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(*((batch_size, out_channels) if per_row else (out_channels,)), dtype=torch.float64,
                       requires_grad=True)
    out_frames = (frames - kernel) // stride + 1
    rows = [out_frames, out_frames - 5, 3]
    valid = (torch.arange(out_frames)[None, :] < torch.tensor(rows)[:, None])[..., None]
    ours = conv_kernels.WindowConv.apply(x, weight, bias, kernel, stride, per_row, rows)
    assert bool((ours[~valid.expand_as(ours)] == 0).all())
    if per_row:
        per_utt = weight.view(batch_size, out_channels, kernel, channels).permute(0, 1, 3, 2)
        reference = torch.stack([F.conv1d(x[b].t()[None], per_utt[b], bias[b], stride=stride)[0].t()
                                 for b in range(batch_size)])
    else:
        reference = F.conv1d(x.transpose(1, 2), weight, bias, stride=stride).transpose(1, 2)
    torch.testing.assert_close(ours * valid, reference * valid, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(ours)
    inputs = [t for t in (x, weight, bias) if t.requires_grad]
    for got, want in zip(torch.autograd.grad((ours * upstream).sum(), inputs),
                         torch.autograd.grad((reference * valid * upstream).sum(), inputs)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_sum_over_frames_sums_bf16_blockwise_in_float32():
    torch.manual_seed(0)
    x = torch.randn(2, 1100, 512).to(torch.bfloat16)
    total = conv_kernels.sum_over_frames(x, torch.float32)
    assert total.dtype == torch.float32 and total.shape == (2, 512)
    torch.testing.assert_close(total.double(), x.double().sum(1), rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------------------- positional conv
@pytest.mark.parametrize("kernel", [16, 15])
def test_positional_conv_fft_kernel_equals_the_reference_across_kept_sizes_and_weight_updates(kernel):
    """Frozen inference through FFTs (spectra kept per size) equals the conv1d reference for batches of
    alternating lengths (kept sizes hit and evicted) and after an in-place weight update."""
    require("positional_conv/cpu", frozen=True)
    torch.manual_seed(0)
    conv = PositionalConv(hidden_size=32, kernel=kernel, groups=4).requires_grad_(False)
    with torch.no_grad():
        conv.bias.normal_()
        conv.weight_g.uniform_(0.5, 2.0)

    def both(x):
        with torch.no_grad():
            fast = conv(x)
            with kernels.use("reference"):
                return fast, conv(x)

    frame_counts = [7, 40, 7, 23, 40, 61, 90, 118, 7]  # more distinct FFT sizes than are kept
    for frames in frame_counts:
        fast, reference = both(torch.randn(2, frames, 32))
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
    (spectra,) = kernels.kept_entries(conv)[("spectra", None)]
    assert len(spectra) == positional.SPECTRUM_SIZES
    with torch.no_grad():
        conv.weight_v.mul_(-1.5)  # in-place update: the kept spectra are stale
    fast, reference = both(torch.randn(1, 7, 32))
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_positional_conv_training_kernel_equals_the_reference(dtype):
    """Training: the fused weight norm, then window products (bf16) or oneDNN's conv with the input
    gradient as a forward conv (float32); output and gradients as the reference's under the same autocast."""
    require("positional_conv/cpu", dtype=dtype, grad=True)
    torch.manual_seed(0)
    conv = PositionalConv(hidden_size=48, kernel=16, groups=4)
    x = torch.randn(2, 37, 48, requires_grad=True)
    results = []
    for policy in ("auto", "reference"):
        conv.zero_grad()
        x.grad = None
        with kernels.use(policy), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = conv(x)
        y.float().square().sum().backward()
        results.append((y.detach().float(), [t.grad.clone() for t in (x, conv.weight_v, conv.weight_g, conv.bias)]))
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(results[0][0], results[1][0], rtol=tolerance, atol=tolerance)
    for mine, theirs in zip(results[0][1], results[1][1]):
        scale = float(theirs.abs().max())
        torch.testing.assert_close(mine / scale, theirs / scale, rtol=tolerance, atol=tolerance)


def test_tap_weight_norm_equals_autograd_over_several_row_blocks():
    """The fused weight norm (reductions over ~1 MiB row blocks) gives the plain expression's weight and
    gradients in float64, and its bf16 output is the float64 weight rounded once."""
    torch.manual_seed(0)
    v = torch.randn(50, 107, 128, dtype=torch.float64, requires_grad=True)  # 5350 rows of 128 taps: 2048 per block
    g = torch.rand(1, 1, 128, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(50, 107, 128, dtype=torch.float64)
    reference = v * (g / torch.linalg.vector_norm(v, dim=(0, 1), keepdim=True))
    ref_v, ref_g = torch.autograd.grad(reference, (v, g), upstream)
    fused = positional.TapWeightNorm.apply(v, g, torch.float64)
    fused_v, fused_g = torch.autograd.grad(fused, (v, g), upstream)
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused_v, ref_v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused_g, ref_g, rtol=1e-10, atol=1e-12)
    in_bf16 = positional.TapWeightNorm.apply(v.detach().float(), g.detach().float(), torch.bfloat16)
    assert in_bf16.dtype == torch.bfloat16
    exact = reference.detach()
    assert bool(((in_bf16.double() - exact).abs() <= exact.abs() * 2 ** -8 + 1e-30).all())  # one bf16 rounding


@pytest.mark.parametrize("kernel,groups,block", [(8, 4, None), (7, 3, None), (8, 4, 64), (5, 3, 5)])
def test_grouped_conv_by_windows_equals_conv1d(kernel, groups, block, monkeypatch):
    """The bf16 training path's grouped conv (window products per group and block of frames) gives conv1d's
    "same"-length output and all three gradients in float64: even and odd kernels, one block or many."""
    if block is not None:
        monkeypatch.setattr(positional.GroupedConvByWindows, "BLOCK_ELEMENTS", block)
    torch.manual_seed(0)
    batch_size, frames, channels = 3, 41, 24
    x = torch.randn(batch_size, frames, channels, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(channels, channels // groups, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(channels, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(batch_size, frames, channels, dtype=torch.float64)
    ours = positional.GroupedConvByWindows.apply(x, weight, bias, groups)
    reference = F.conv1d(x.transpose(1, 2), weight, bias, padding=kernel // 2, groups=groups)[:, :, :frames]
    reference = reference.transpose(1, 2)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad(ours, (x, weight, bias), upstream),
                         torch.autograd.grad(reference, (x, weight, bias), upstream)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_keeps_each_element_with_probability_1_minus_p_and_scales_exactly(p):
    """Four 16-bit draws per 64-bit random word keep 1 - p of the elements at every position of the word (a
    draw with a constant top bit would keep 0.925 or 1.0 at one of them for p = 0.1), scale the kept ones by
    the exact inverse of their keep probability, pass the gradient through the same mask, and repeat under
    the same seed; the reference path is F.dropout."""
    require("dropout/cpu-words", size=10)
    x = torch.rand(1000, 1000, dtype=torch.float64) + 0.5
    x.requires_grad_(True)
    torch.manual_seed(0)
    y = dropout(x, p)
    kept = y != 0
    for slot in range(4):  # positions 0..3 of each 64-bit word
        fraction = float(kept.flatten()[slot::4].double().mean())
        assert abs(fraction - (1 - p)) < 0.004, (slot, fraction)
    scale = 65536 / (65536 - round(p * 65536))
    torch.testing.assert_close(y[kept], x.detach()[kept] * scale, rtol=0, atol=0)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.double() * scale, rtol=0, atol=0)
    torch.manual_seed(0)
    assert torch.equal(dropout(x.detach(), p), y.detach())
    with kernels.use("reference"):  # the model's own code: F.dropout's stream
        torch.manual_seed(0)
        reference = dropout(x.detach(), p)
    torch.manual_seed(0)
    assert torch.equal(reference, F.dropout(x.detach(), p, True)) and not torch.equal(reference, y.detach())
    layer = Dropout(p)
    assert torch.equal(layer.eval()(x), x) and repr(layer) == f"Dropout(p={p})"
    half = torch.randn(2, 129, 3072).to(torch.bfloat16)
    assert dropout(half, p).dtype == torch.bfloat16
    assert torch.equal(dropout(half, 1.0), torch.zeros_like(half)) and dropout(half, 0.0) is half
