"""Reader for dlib's binary serialization of DNNs (numpy only).

dlib writes a network as a nested stream: the loss layer, one version integer
per layer wrapper from the outside in, then each layer's details from the
bottom (input) up.  This module turns that stream into a flat list of
:class:`Layer` records holding numpy parameters; it knows nothing about torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


class DlibFormatError(ValueError):
    """The file is not a dlib DNN stream of a kind this reader understands."""


@dataclass
class Layer:
    """One computational layer as stored by dlib (bottom-up order)."""

    kind: str
    attrs: dict[str, int | float | tuple[float, ...]] = field(default_factory=dict)
    params: dict[str, FloatArray] = field(default_factory=dict)


@dataclass
class DlibNet:
    """A parsed network: its loss, input description and layers, input first."""

    loss: Layer
    input: Layer
    layers: list[Layer]
    wrapper_versions: list[int]


class Reader:
    """Cursor over a dlib stream with dlib's primitive decoders."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"unexpected end of stream at byte {self.pos} (wanted {n} more)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def integer(self) -> int:
        """Control byte (low nibble: byte count, 0x80: negative), then little-endian bytes."""
        control = self._take(1)[0]
        size = control & 0x0F
        if size > 8:
            raise DlibFormatError(f"bad integer control byte {control:#x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little") if size else 0
        return -value if control & 0x80 else value

    def string(self) -> str:
        length = self.integer()
        if length < 0 or length > 1 << 16:
            raise DlibFormatError(f"implausible string length {length} at byte {self.pos}")
        return self._take(length).decode("latin-1")

    def boolean(self) -> bool:
        ch = self._take(1)
        if ch not in (b"0", b"1"):
            raise DlibFormatError(f"expected boolean '0'/'1' at byte {self.pos - 1}, got {ch!r}")
        return ch == b"1"

    def scalar(self) -> float:
        """A scalar float: int64 mantissa then int16 exponent, value = m * 2**e."""
        mantissa = self.integer()
        exponent = self.integer()
        return float(np.ldexp(float(mantissa), exponent))

    def tensor(self) -> FloatArray:
        version = self.integer()
        if version != 2:
            raise DlibFormatError(f"tensor version {version} at byte {self.pos}; expected 2")
        n, k, nr, nc = (self.integer() for _ in range(4))
        count = n * k * nr * nc
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(n, k, nr, nc)

    def alias_tensor(self) -> tuple[int, ...]:
        version = self.integer()
        if version != 1:
            raise DlibFormatError(f"alias tensor version {version} at byte {self.pos}; expected 1")
        return tuple(self.integer() for _ in range(4))


def _read_con(r: Reader, layer: Layer) -> None:
    params = r.tensor().ravel()
    names = ("num_filters", "nr", "nc", "stride_y", "stride_x", "pad_y", "pad_x")
    layer.attrs.update({name: r.integer() for name in names})
    filters_shape = r.alias_tensor()
    biases_shape = r.alias_tensor()
    for _ in range(4):  # learning-rate and weight-decay multipliers: training only
        r.scalar()
    n_w = int(np.prod(filters_shape))
    n_b = int(np.prod(biases_shape))
    if n_w + n_b != params.size:
        raise DlibFormatError(f"con layer holds {params.size} values, shapes need {n_w + n_b}")
    layer.params["weight"] = params[:n_w].reshape(filters_shape)
    layer.params["bias"] = params[n_w:].copy()


def _read_affine(r: Reader, layer: Layer) -> None:
    params = r.tensor().ravel()
    gamma_shape = r.alias_tensor()
    r.alias_tensor()  # beta has gamma's shape
    layer.attrs["mode"] = r.integer()  # 0: per channel (conv), 1: per element (fc)
    n = int(np.prod(gamma_shape))
    if 2 * n != params.size:
        raise DlibFormatError(f"affine layer holds {params.size} values, expected {2 * n}")
    layer.params["gamma"] = params[:n].copy()
    layer.params["beta"] = params[n:].copy()


def _read_pool(r: Reader, layer: Layer) -> None:
    names = ("nr", "nc", "stride_y", "stride_x", "pad_y", "pad_x")
    layer.attrs.update({name: r.integer() for name in names})


def _read_fc(r: Reader, layer: Layer) -> None:
    num_outputs, num_inputs = r.integer(), r.integer()
    params = r.tensor().ravel()
    r.alias_tensor()  # weights
    biases_shape = r.alias_tensor()
    layer.attrs["bias_mode"] = r.integer()  # 0: with bias, 1: without
    for _ in range(4):
        r.scalar()
    n_w = num_inputs * num_outputs
    # dlib stores the weight matrix as (inputs, outputs); torch wants (outputs, inputs).
    layer.params["weight"] = params[:n_w].reshape(num_inputs, num_outputs).T.copy()
    if int(np.prod(biases_shape)):
        layer.params["bias"] = params[n_w:].copy()
    layer.attrs.update(num_outputs=num_outputs, num_inputs=num_inputs)


def _no_details(r: Reader, layer: Layer) -> None:
    """relu_ and add_prev_ carry only their names."""


_DETAIL_READERS: dict[str, Callable[[Reader, Layer], None]] = {
    "con_4": _read_con,
    "affine_": _read_affine,
    "max_pool_2": _read_pool,
    "avg_pool_2": _read_pool,
    "fc_2": _read_fc,
    "relu_": _no_details,
    "add_prev_": _no_details,
}


def _read_layer(r: Reader) -> Layer:
    kind = r.string()
    read = _DETAIL_READERS.get(kind)
    if read is None:
        raise DlibFormatError(f"unsupported layer type {kind!r} at byte {r.pos}")
    layer = Layer(kind)
    read(r, layer)
    for _ in range(3):  # setup-called, gradient-stale, output-and-gradient-together
        r.boolean()
    for _ in range(3):  # x_grad, cached_output, params_grad: empty in a saved model
        r.tensor()
    return layer


def read_net(path: str | Path) -> DlibNet:
    """Parse a dlib DNN file (e.g. ``dlib_face_recognition_resnet_model_v1.dat``)."""
    return parse_net(Path(path).read_bytes())


def parse_net(data: bytes) -> DlibNet:
    r = Reader(data)
    r.integer()  # network version
    loss = Layer(r.string())
    if loss.kind != "loss_metric_2":
        raise DlibFormatError(f"loss layer {loss.kind!r}; only loss_metric_2 networks are supported")
    loss.attrs.update(margin=r.scalar(), distance_threshold=r.scalar())

    versions: list[int] = []
    while True:  # one version per wrapper, outside in; 3 marks the layer on the input
        v = r.integer()
        versions.append(v)
        if v == 3:
            break
        if v not in (1, 2):
            raise DlibFormatError(f"unexpected layer wrapper version {v} at byte {r.pos}")

    inp = Layer(r.string())
    if inp.kind != "input_rgb_image_sized":
        raise DlibFormatError(f"input layer {inp.kind!r}; expected input_rgb_image_sized")
    inp.attrs["mean"] = (r.scalar(), r.scalar(), r.scalar())
    inp.attrs["rows"], inp.attrs["cols"] = r.integer(), r.integer()

    n_layers = versions.count(2) + 1
    layers = [_read_layer(r)]
    inp.attrs["sample_expansion_factor"] = r.integer()
    layers.extend(_read_layer(r) for _ in range(n_layers - 1))
    if r.pos != len(data):
        raise DlibFormatError(f"{len(data) - r.pos} trailing bytes after the last layer")
    return DlibNet(loss=loss, input=inp, layers=layers, wrapper_versions=versions)
