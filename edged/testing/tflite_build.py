"""Write small, valid ``.tflite`` files without TensorFlow.

Models are assembled with LiteRT's flatbuffers object API
(``ai_edge_litert.schema_py_generated``), imported lazily so that importing this
module costs nothing.  Two layers:

* :class:`GraphBuilder` – tensors, constant buffers and operators of a single
  subgraph; ``build()`` returns the serialized model.
* recipes – :func:`float_mlp`, :func:`quantized_mlp`, :func:`affine_model`,
  :func:`random_classifier`, :func:`nan_model`, :func:`custom_op_model`,
  :func:`slow_model`, :func:`ssd_detector_model` and :func:`mobilenet_class_model`.

Every recipe is deterministic (same arguments, same bytes), and uses operator
versions that tflite-runtime 2.14 resolves, unless a caller asks for another
version on purpose (``fc_version=`` / ``GraphBuilder.op(version=)``), e.g. to
produce a model an old runtime rejects.  Weight layouts follow TFLite, not
NumPy: a FULLY_CONNECTED weight is ``[units, in_features]``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Custom op name that no runtime provides (see :func:`custom_op_model`).
MISSING_CUSTOM_OP = "EdgedMissingOp"

#: builtin op -> name of its BuiltinOptions table (None: the op takes no options).
_OPTIONS: dict[str, str | None] = {
    "ADD": "AddOptions",
    "AVERAGE_POOL_2D": "Pool2DOptions",
    "CAST": None,
    "CONV_2D": "Conv2DOptions",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "DIV": "DivOptions",
    "FULLY_CONNECTED": "FullyConnectedOptions",
    "GATHER": "GatherOptions",
    "LOG": None,
    "LOGISTIC": None,
    "MEAN": "ReducerOptions",
    "MUL": "MulOptions",
    "QUANTIZE": "QuantizeOptions",
    "RESHAPE": "ReshapeOptions",
    "RESIZE_NEAREST_NEIGHBOR": "ResizeNearestNeighborOptions",
    "SOFTMAX": "SoftmaxOptions",
}

_TENSOR_TYPES: dict[str, str] = {
    "float32": "FLOAT32", "int32": "INT32", "uint8": "UINT8", "int8": "INT8", "int64": "INT64", "int16": "INT16",
}

# Options whose value is an enum name in the schema; lets callers write "RELU"/"SAME".
_ENUM_OPTIONS: dict[str, str] = {"fusedActivationFunction": "ActivationFunctionType", "padding": "Padding"}


def _schema() -> Any:
    # Lazy: the schema module is ~20k lines and only needed when building.
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


@dataclass(frozen=True)
class Quant:
    """Per-tensor affine quantization: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    @staticmethod
    def for_range(lo: float, hi: float, dtype: str = "int8") -> Quant:
        """Asymmetric parameters covering ``[lo, hi]`` (widened to include 0, so 0 is exact)."""
        info = np.iinfo(dtype)
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        if hi - lo <= 0.0:
            return Quant(1.0, 0)
        scale = (hi - lo) / (info.max - info.min)
        zp = int(np.clip(round(info.min - lo / scale), info.min, info.max))
        return Quant(scale, zp)

    def shifted(self, dtype: str) -> Quant:
        """The same real grid in the other 8-bit type (uint8 zero point = int8 zero point + 128)."""
        return Quant(self.scale, self.zero_point + (128 if dtype == "uint8" else -128))


def quantize_symmetric(w: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-tensor symmetric int8 weights (zero point 0, range ±127) and their scale."""
    w = np.asarray(w, dtype=np.float64)
    peak = float(np.max(np.abs(w))) if w.size else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


class GraphBuilder:
    """One subgraph under construction.

    Add inputs with :meth:`input`, weights with :meth:`const`, intermediate and
    output tensors with :meth:`tensor`, operators with :meth:`op`, then call
    :meth:`build`.  Tensor handles are plain ints (indices into the subgraph).
    """

    def __init__(self) -> None:
        self._s = _schema()
        self._tensors: list[Any] = []
        self._buffers: list[Any] = [self._s.BufferT()]  # buffer 0 is the empty sentinel by convention
        self._opcodes: dict[tuple[int, str | None, int], int] = {}
        self._ops: list[Any] = []
        self._inputs: list[int] = []

    # -- tensors ---------------------------------------------------------------------------

    def tensor(self, name: str, shape: Sequence[int], dtype: str = "float32", quant: Quant | None = None,
               *, _buffer: int = 0) -> int:
        """Declare a tensor without data (an activation or a graph output); returns its index.

        Raises ``KeyError`` for a dtype the builder does not map.
        """
        t = self._s.TensorT()
        t.name = name
        t.shape = [int(d) for d in shape]
        t.type = getattr(self._s.TensorType, _TENSOR_TYPES[str(np.dtype(dtype))])
        t.buffer = _buffer
        if quant is not None:
            q = self._s.QuantizationParametersT()
            q.scale = [float(quant.scale)]
            q.zeroPoint = [int(quant.zero_point)]
            t.quantization = q
        self._tensors.append(t)
        return len(self._tensors) - 1

    def input(self, name: str, shape: Sequence[int], dtype: str = "float32", quant: Quant | None = None) -> int:
        """Declare a graph input (inputs are listed in the order they are declared)."""
        index = self.tensor(name, shape, dtype, quant)
        self._inputs.append(index)
        return index

    def const(self, name: str, array: np.ndarray, quant: Quant | None = None) -> int:
        """A constant tensor holding ``array`` (its dtype and shape are kept)."""
        array = np.ascontiguousarray(array)
        buf = _AlignedBuffer()
        buf.data = np.frombuffer(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(), np.uint8)
        self._buffers.append(buf)
        return self.tensor(name, array.shape, str(array.dtype), quant, _buffer=len(self._buffers) - 1)

    def shape_of(self, index: int) -> list[int]:
        return list(self._tensors[index].shape)

    def rename(self, index: int, name: str) -> None:
        self._tensors[index].name = name

    # -- operators -------------------------------------------------------------------------

    def op(self, op: str, inputs: Sequence[int], outputs: Sequence[int], *, version: int = 1,
           custom_code: str | None = None, custom_options: bytes | None = None, **options: Any) -> None:
        """Append an operator.

        ``op`` is a ``BuiltinOperator`` name (``"FULLY_CONNECTED"``) or ``"CUSTOM"``
        with ``custom_code`` (and its flexbuffer-encoded ``custom_options``, if any).  ``options`` are fields of the op's options table in
        the schema's camelCase (``fusedActivationFunction="RELU"``); enum fields
        accept names.  Raises ``ValueError`` for an op this builder has no options
        mapping for, and ``TypeError`` for an unknown option field (a typo would
        otherwise silently produce a default).
        """
        s = self._s
        code = getattr(s.BuiltinOperator, op)
        if op == "CUSTOM" and not custom_code:
            raise ValueError("a CUSTOM op needs custom_code")
        key = (code, custom_code, int(version))
        self._opcodes.setdefault(key, len(self._opcodes))
        o = s.OperatorT()
        o.opcodeIndex = self._opcodes[key]
        o.inputs = [int(i) for i in inputs]
        o.outputs = [int(i) for i in outputs]
        if custom_options is not None:
            o.customOptions = list(custom_options)
            o.customOptionsFormat = s.CustomOptionsFormat.FLEXBUFFERS
        if op != "CUSTOM":
            if op not in _OPTIONS:
                raise ValueError(f"no options mapping for builtin op {op}; add it to _OPTIONS")
            table = _OPTIONS[op]
            if table is not None:
                opts = getattr(s, table + "T")()
                for field, value in options.items():
                    if not hasattr(opts, field):
                        raise TypeError(f"{table} has no field {field!r}")
                    if field in _ENUM_OPTIONS and isinstance(value, str):
                        value = getattr(getattr(s, _ENUM_OPTIONS[field]), value)
                    setattr(opts, field, value)
                o.builtinOptionsType = getattr(s.BuiltinOptions, table)
                o.builtinOptions = opts
            elif options:
                raise TypeError(f"{op} takes no options, got {sorted(options)}")
        self._ops.append(o)

    # -- output ----------------------------------------------------------------------------

    def build(self, outputs: Sequence[int], description: str = "edged.testing") -> bytes:
        """Serialize the model with ``outputs`` as the graph outputs; returns the file bytes."""
        import flatbuffers

        s = self._s
        sg = s.SubGraphT()
        sg.tensors, sg.inputs, sg.outputs, sg.operators = self._tensors, list(self._inputs), list(outputs), self._ops
        sg.name = "main"
        m = s.ModelT()
        m.version = 3
        codes: list[Any] = [None] * len(self._opcodes)
        for (code, custom, version), index in self._opcodes.items():
            oc = s.OperatorCodeT()
            oc.builtinCode, oc.customCode, oc.version = code, custom, version
            # Readers older than schema v3a look only at the int8 field; codes
            # above 127 must put PLACEHOLDER_FOR_GREATER_OP_CODES there.
            oc.deprecatedBuiltinCode = min(code, s.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
            codes[index] = oc
        m.operatorCodes = codes
        m.subgraphs = [sg]
        m.buffers = self._buffers
        m.description = description
        fb = flatbuffers.Builder(1024)
        fb.Finish(m.Pack(fb), file_identifier=b"TFL3")
        return bytes(fb.Output())

    # -- common layers ---------------------------------------------------------------------

    def reshape(self, x: int, shape: Sequence[int], name: str, quant: Quant | None = None,
                dtype: str | None = None) -> int:
        """RESHAPE ``x`` to ``shape`` (shape given both as input tensor and option, as converters do)."""
        dtype = dtype or _DTYPE_NAMES[self._tensors[x].type]
        y = self.tensor(name, shape, dtype, quant)
        s = self.const(name + "/shape", np.asarray(shape, np.int32))
        self.op("RESHAPE", [x, s], [y], newShape=[int(d) for d in shape])
        return y


_DTYPE_NAMES = {0: "float32", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}  # TensorType values


@functools.cache
def _aligned_buffer_cls() -> type:
    s = _schema()

    class AlignedBuffer(s.BufferT):  # type: ignore[name-defined,misc]
        """A ``BufferT`` whose data starts on a 16-byte boundary.

        The stock ``Pack`` aligns uint8 data to 1 byte; kernels then read float and
        int32 weights through misaligned pointers, which is undefined behaviour
        (and a SIGBUS on some ARM cores).  The TFLite converter aligns to 16.
        """

        def Pack(self, builder: Any) -> int:  # noqa: N802 - flatbuffers naming
            data = None
            if self.data is not None and len(self.data):
                payload = bytes(np.asarray(self.data, np.uint8))
                builder.StartVector(1, len(payload), 16)
                builder.head = builder.head - len(payload)
                builder.Bytes[builder.head:builder.head + len(payload)] = payload
                data = builder.EndVector()
            s.BufferStart(builder)
            if data is not None:
                s.BufferAddData(builder, data)
            return s.BufferEnd(builder)

    return AlignedBuffer


def _AlignedBuffer() -> Any:  # noqa: N802 - reads like the class it instantiates
    return _aligned_buffer_cls()()


# ---------------------------------------------------------------------------------------
# float recipes
# ---------------------------------------------------------------------------------------

Layer = tuple[np.ndarray, np.ndarray]  # (weights [units, in], bias [units])


def float_mlp(input_shape: Sequence[int], layers: Sequence[Layer], *, softmax: bool = True,
              input_name: str = "input", output_name: str = "output", hidden_activation: str = "RELU",
              fc_version: int = 1) -> bytes:
    """A float32 MLP: input → RESHAPE [batch, K] → FULLY_CONNECTED… → (SOFTMAX).

    Hidden layers get ``hidden_activation`` fused; the last layer none.
    ``fc_version`` sets the declared FULLY_CONNECTED op version (1 loads
    everywhere; see :data:`FC_VERSION_TOO_NEW`).  Raises ``ValueError`` when the
    layer shapes do not chain.
    """
    if not layers:
        raise ValueError("an MLP needs at least one layer")
    batch = int(input_shape[0])
    features = int(np.prod(input_shape[1:]))
    g = GraphBuilder()
    x = g.input(input_name, input_shape)
    if list(input_shape) != [batch, features]:
        x = g.reshape(x, [batch, features], "flatten")
    for i, (w, b) in enumerate(layers):
        w = np.asarray(w, np.float32)
        b = np.asarray(b, np.float32)
        if w.ndim != 2 or w.shape[1] != features or b.shape != (w.shape[0],):
            raise ValueError(f"layer {i}: weights {w.shape} / bias {b.shape} do not fit {features} inputs")
        last = i == len(layers) - 1
        name = output_name if last and not softmax else f"fc{i}"
        y = g.tensor(name, [batch, w.shape[0]])
        g.op("FULLY_CONNECTED", [x, g.const(f"fc{i}/weights", w), g.const(f"fc{i}/bias", b)], [y],
             version=fc_version, fusedActivationFunction="NONE" if last else hidden_activation)
        x, features = y, w.shape[0]
    if softmax:
        y = g.tensor(output_name, [batch, features])
        g.op("SOFTMAX", [x], [y], beta=1.0)
        x = y
    return g.build([x])


#: A FULLY_CONNECTED version LiteRT resolves but tflite-runtime 2.14 does not:
#: 2.14 registers versions 1..10 ("Didn't find op for builtin opcode
#: 'FULLY_CONNECTED' version '12'", a ValueError from the constructor), LiteRT
#: 2.3 registers 1..14.  Kernels never look at the declared version, only the
#: op resolver does, so the model computes the same as a version-1 one.
FC_VERSION_TOO_NEW = 12


def random_classifier(input_shape: Sequence[int] = (1, 8, 8, 1), classes: int = 10, *, seed: int = 0,
                      hidden: Sequence[int] = (), input_name: str = "image", output_name: str = "probs",
                      fc_version: int = 1) -> bytes:
    """A softmax classifier with deterministic random weights from ``seed``.

    Two seeds give two models with the same contract and different outputs,
    which is what swap/rollback tests need.
    """
    rng = np.random.default_rng(seed)
    sizes = [int(np.prod(input_shape[1:])), *hidden, classes]
    layers = [(rng.normal(0, 1 / math.sqrt(n_in), (n_out, n_in)), rng.normal(0, 0.1, n_out))
              for n_in, n_out in zip(sizes, sizes[1:])]
    return float_mlp(input_shape, layers, input_name=input_name, output_name=output_name, fc_version=fc_version)


def nan_model(input_shape: Sequence[int] = (1, 8, 8, 1), classes: int = 10, *, input_name: str = "image",
              output_name: str = "probs") -> bytes:
    """Loads and runs fine, but every output is NaN (NaN weights): what validation must catch."""
    features = int(np.prod(input_shape[1:]))
    w = np.full((classes, features), np.nan, np.float32)
    return float_mlp(input_shape, [(w, np.zeros(classes, np.float32))], softmax=False,
                     input_name=input_name, output_name=output_name)


def affine_model(shape: Sequence[int], a: float, b: float, *, input_name: str = "input",
                 output_name: str = "output") -> bytes:
    """``y = x * a + b`` elementwise (MUL then ADD with scalar constants); float32."""
    g = GraphBuilder()
    x = g.input(input_name, shape)
    t = g.tensor("scaled", shape)
    g.op("MUL", [x, g.const("a", np.asarray([a], np.float32))], [t])
    y = g.tensor(output_name, shape)
    g.op("ADD", [t, g.const("b", np.asarray([b], np.float32))], [y])
    return g.build([y])


def custom_op_model(input_shape: Sequence[int] = (1, 8, 8, 1), output_shape: Sequence[int] = (1, 10), *,
                    custom_code: str = MISSING_CUSTOM_OP, input_name: str = "image",
                    output_name: str = "probs") -> bytes:
    """A single CUSTOM op that no runtime registers: loading must fail naming it."""
    g = GraphBuilder()
    x = g.input(input_name, input_shape)
    y = g.tensor(output_name, output_shape)
    g.op("CUSTOM", [x], [y], custom_code=custom_code)
    return g.build([y])


def slow_model(input_shape: Sequence[int] = (1, 8, 8, 1), classes: int = 10, *, size: int = 128,
               channels: int = 32, depth: int = 8, seed: int = 0, input_name: str = "image",
               output_name: str = "probs") -> bytes:
    """Same contract as :func:`random_classifier`, but compute-heavy.

    input → RESIZE_NEAREST_NEIGHBOR to ``size``×``size`` → CONV_2D to ``channels``
    → ``depth`` × 3×3 CONV_2D (one shared weight tensor, so the file stays small)
    → AVERAGE_POOL_2D → FC → SOFTMAX.  Cost grows with ``size² · channels² · depth``.
    Raises ``ValueError`` unless the input is NHWC.
    """
    if len(input_shape) != 4:
        raise ValueError(f"slow_model needs an NHWC input, got {list(input_shape)}")
    rng = np.random.default_rng(seed)
    n, _, _, c_in = (int(d) for d in input_shape)
    g = GraphBuilder()
    x = g.input(input_name, input_shape)
    up = g.tensor("upsampled", [n, size, size, c_in])
    g.op("RESIZE_NEAREST_NEIGHBOR", [x, g.const("size", np.asarray([size, size], np.int32))], [up])
    he = math.sqrt(2.0 / (9 * channels))
    w0 = g.const("conv0/weights", rng.normal(0, math.sqrt(2.0 / (9 * c_in)) / 16, (channels, 3, 3, c_in))
                 .astype(np.float32))
    wk = g.const("convk/weights", rng.normal(0, he, (channels, 3, 3, channels)).astype(np.float32))
    bias = g.const("conv/bias", np.zeros(channels, np.float32))
    h = g.tensor("conv0", [n, size, size, channels])
    g.op("CONV_2D", [up, w0, bias], [h], padding="SAME", strideW=1, strideH=1, fusedActivationFunction="RELU")
    for i in range(depth):
        nxt = g.tensor(f"conv{i + 1}", [n, size, size, channels])
        g.op("CONV_2D", [h, wk, bias], [nxt], padding="SAME", strideW=1, strideH=1, fusedActivationFunction="RELU")
        h = nxt
    pooled = g.tensor("pool", [n, 1, 1, channels])
    g.op("AVERAGE_POOL_2D", [h], [pooled], padding="VALID", strideW=size, strideH=size, filterWidth=size,
         filterHeight=size)
    flat = g.reshape(pooled, [n, channels], "flatten")
    logits = g.tensor("logits", [n, classes])
    g.op("FULLY_CONNECTED", [flat, g.const("fc/weights", rng.normal(0, 1, (classes, channels)).astype(np.float32)),
                             g.const("fc/bias", np.zeros(classes, np.float32))], [logits])
    y = g.tensor(output_name, [n, classes])
    g.op("SOFTMAX", [logits], [y], beta=1.0)
    return g.build([y])


#: The custom op TFLite's SSD converters append; LiteRT and tflite-runtime register it.
DETECTION_POSTPROCESS = "TFLite_Detection_PostProcess"


def ssd_detector_model(*, size: int = 320, grid: int = 8, classes: int = 3, max_detections: int = 25,
                       score_threshold: float = 0.3, iou_threshold: float = 0.5,
                       gain: float = 1 / 32) -> bytes:
    """A tiny synthetic SSD-style detector with the real four-output post-process layout.

    ``uint8 [1, size, size, 3]`` → CAST → AVERAGE_POOL_2D (``grid`` × ``grid`` cells) →
    per-cell FULLY_CONNECTED → box encodings ``[1, grid², 4]`` and LOGISTIC class
    predictions ``[1, grid², classes + 1]`` (column 0 is the background) →
    ``TFLite_Detection_PostProcess`` with one anchor per cell.  Outputs, as the
    TFLite object detection API writes them: boxes ``[1, max_detections, 4]``
    (``ymin, xmin, ymax, xmax`` normalised), classes ``[1, max_detections]``, scores
    ``[1, max_detections]``, count ``[1]``.

    What it detects: class ``k`` (0 red, 1 green, 2 blue for 3 classes) in a cell
    whose mean colour leans to channel ``k``: logit = ``gain · (2·m_k − Σ m_other) / 2 − 4``
    with channel means ``m`` in 0..255, so a cell filled with pure red scores ~1 and a
    grey or black one ~0.02.  Box encodings are zero, so every box is its cell's anchor.
    Raises ``ValueError`` unless ``size`` is a multiple of ``grid`` and 1 <= classes <= 3.
    """
    if size % grid or not 1 <= classes <= 3:
        raise ValueError(f"need size % grid == 0 and 1..3 classes, got size {size}, grid {grid}, {classes} classes")
    from flatbuffers import flexbuffers

    cell, n = size // grid, grid * grid
    g = GraphBuilder()
    x = g.input("normalized_input_image_tensor", [1, size, size, 3], "uint8")
    xf = g.tensor("to_float", [1, size, size, 3])
    g.op("CAST", [x], [xf])
    pooled = g.tensor("cell_means", [1, grid, grid, 3])
    g.op("AVERAGE_POOL_2D", [xf], [pooled], padding="VALID", strideW=cell, strideH=cell, filterWidth=cell,
         filterHeight=cell)
    means = g.reshape(pooled, [n, 3], "cells")
    w = np.zeros((classes + 1, 3), np.float32)
    for k in range(classes):
        w[k + 1] = -gain / 2
        w[k + 1, k] = gain
    bias = np.asarray([0.0] + [-4.0] * classes, np.float32)
    logits = g.tensor("class_logits", [n, classes + 1])
    g.op("FULLY_CONNECTED", [means, g.const("class/weights", w), g.const("class/bias", bias)], [logits])
    probs = g.tensor("class_probs", [n, classes + 1])
    g.op("LOGISTIC", [logits], [probs])
    scores_in = g.reshape(probs, [1, n, classes + 1], "raw_outputs/class_predictions")
    enc = g.tensor("box_flat", [n, 4])
    g.op("FULLY_CONNECTED", [means, g.const("box/weights", np.zeros((4, 3), np.float32)),
                             g.const("box/bias", np.zeros(4, np.float32))], [enc])
    boxes_in = g.reshape(enc, [1, n, 4], "raw_outputs/box_encodings")
    centres = (np.arange(grid, dtype=np.float32) + 0.5) / grid
    yc, xc = np.meshgrid(centres, centres, indexing="ij")
    anchors = np.stack([yc.ravel(), xc.ravel(), np.full(n, 1 / grid, np.float32), np.full(n, 1 / grid, np.float32)],
                       axis=1).astype(np.float32)
    outs = [g.tensor(DETECTION_POSTPROCESS, [1, max_detections, 4]),
            g.tensor(f"{DETECTION_POSTPROCESS}:1", [1, max_detections]),
            g.tensor(f"{DETECTION_POSTPROCESS}:2", [1, max_detections]),
            g.tensor(f"{DETECTION_POSTPROCESS}:3", [1])]
    options = flexbuffers.Dumps({
        "max_detections": max_detections, "max_classes_per_detection": 1, "detections_per_class": 100,
        "use_regular_nms": False, "nms_score_threshold": float(score_threshold),
        "nms_iou_threshold": float(iou_threshold), "num_classes": classes,
        "y_scale": 10.0, "x_scale": 10.0, "h_scale": 5.0, "w_scale": 5.0,
    })
    g.op("CUSTOM", [boxes_in, scores_in, g.const("anchors", anchors)], outs, custom_code=DETECTION_POSTPROCESS,
         custom_options=options)
    return g.build(outs, description="edged synthetic SSD detector")


# ---------------------------------------------------------------------------------------
# full-integer recipes
# ---------------------------------------------------------------------------------------

# Declared versions for int8 kernels, as the TFLite converter writes them; all are
# within what tflite-runtime 2.14 registers.
_INT8_VERSIONS = {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 4, "AVERAGE_POOL_2D": 2,
                  "SOFTMAX": 2, "QUANTIZE": 2, "RESHAPE": 1}


def _io_in(g: GraphBuilder, name: str, shape: Sequence[int], q8: Quant, io_dtype: str) -> int:
    """Graph input in ``io_dtype``; returns the int8 tensor the body consumes."""
    if io_dtype == "int8":
        return g.input(name, shape, "int8", q8)
    if io_dtype != "uint8":
        raise ValueError(f"io_dtype must be 'uint8' or 'int8', got {io_dtype!r}")
    x = g.input(name, shape, "uint8", q8.shifted("uint8"))
    y = g.tensor(name + "/int8", shape, "int8", q8)
    g.op("QUANTIZE", [x], [y], version=_INT8_VERSIONS["QUANTIZE"])
    return y


def _io_out(g: GraphBuilder, x: int, name: str, q8: Quant, io_dtype: str) -> int:
    """Turn the body's int8 result into the graph output in ``io_dtype``."""
    if io_dtype == "int8":
        return x
    y = g.tensor(name, g.shape_of(x), "uint8", q8.shifted("uint8"))
    g.op("QUANTIZE", [x], [y], version=_INT8_VERSIONS["QUANTIZE"])
    return y


def _fc_int8(g: GraphBuilder, x: int, x_q: Quant, w: np.ndarray, b: np.ndarray, out_q: Quant, name: str,
             relu: bool) -> int:
    wq, w_scale = quantize_symmetric(w)
    bias_scale = x_q.scale * w_scale
    bq = np.round(np.asarray(b, np.float64) / bias_scale).astype(np.int32)
    y = g.tensor(name, [g.shape_of(x)[0], w.shape[0]], "int8", out_q)
    g.op("FULLY_CONNECTED", [x, g.const(name + "/weights", wq, Quant(w_scale, 0)),
                             g.const(name + "/bias", bq, Quant(bias_scale, 0))], [y],
         version=_INT8_VERSIONS["FULLY_CONNECTED"], fusedActivationFunction="RELU" if relu else "NONE")
    return y


def quantized_mlp(input_shape: Sequence[int], layers: Sequence[Layer], calibration: np.ndarray, *,
                  io_dtype: str = "uint8", softmax: bool = False, input_name: str = "input",
                  output_name: str = "output") -> bytes:
    """Full-integer version of :func:`float_mlp` (post-training quantization).

    Weights become per-tensor symmetric int8, biases int32 with scale
    ``input_scale * weight_scale``; activation ranges come from running the float
    network over ``calibration`` (``[N, *input_shape[1:]]`` float samples).  The
    body is int8; ``io_dtype="uint8"`` adds QUANTIZE ops at both ends, as the
    converter does for uint8 interfaces.  A softmax output uses the fixed
    ``1/256`` scale TFLite requires.
    """
    batch = int(input_shape[0])
    features = int(np.prod(input_shape[1:]))
    acts = np.asarray(calibration, np.float64).reshape(-1, features)
    g = GraphBuilder()
    in_q = Quant.for_range(acts.min(), acts.max())
    x = _io_in(g, input_name, input_shape, in_q, io_dtype)
    if list(input_shape) != [batch, features]:
        x = g.reshape(x, [batch, features], "flatten", in_q, "int8")
    x_q = in_q
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        acts = acts @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)
        if not last:
            acts = np.maximum(acts, 0.0)
        out_q = Quant.for_range(acts.min(), acts.max())
        x = _fc_int8(g, x, x_q, np.asarray(w), np.asarray(b), out_q, f"fc{i}", relu=not last)
        x_q = out_q
    if softmax:
        sm_q = Quant(1.0 / 256.0, -128)
        y = g.tensor(output_name if io_dtype == "int8" else "softmax", g.shape_of(x), "int8", sm_q)
        g.op("SOFTMAX", [x], [y], version=_INT8_VERSIONS["SOFTMAX"], beta=1.0)
        x, x_q = y, sm_q
    elif io_dtype == "int8":
        g.rename(x, output_name)  # the last FC output is the graph output
    return g.build([_io_out(g, x, output_name, x_q, io_dtype)])


#: MobileNet v1 body after the stem: (depthwise stride, pointwise output channels).
_MOBILENET_V1_BLOCKS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
                        (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))


def mobilenet_class_model(*, seed: int = 0, input_size: int = 224, alpha: float = 1.0, classes: int = 1000,
                          input_name: str = "input", output_name: str = "output") -> bytes:
    """A MobileNet-v1-shaped full-int8 model with random weights (a benchmark workload).

    ``[1, S, S, 3]`` uint8 → QUANTIZE → 3×3/2 CONV_2D → 13 depthwise-separable
    blocks (DEPTHWISE_CONV_2D + 1×1 CONV_2D, ReLU6, four more stride-2 stages)
    → AVERAGE_POOL_2D → FULLY_CONNECTED → QUANTIZE → ``[1, classes]`` uint8.
    At the defaults that is ~4.2 M int8 parameters and ~570 M MACs, like the
    real network.  Weights are uniform int8 from ``seed`` with scales chosen so
    pre-activations have std ≈ 2 (ReLU6 outputs spread over the [0, 6] grid
    instead of saturating or collapsing to zero), so outputs vary with the input.
    """
    rng = np.random.default_rng(seed)
    w_std_q = math.sqrt((127 * 128) / 3.0)  # std of uniform integers in [-127, 127]
    relu6_q = Quant(6.0 / 255.0, -128)  # fixed [0, 6] activation grid, as in real MobileNets
    relu6_rms = 1.4  # rms of a ReLU'd N(0, 2): the typical input magnitude of each layer

    def ch(c: int) -> int:
        return max(8, int(c * alpha))

    def conv(x: int, x_q: Quant, rms_in: float, c_out: int, stride: int, depthwise: bool, name: str,
             kernel: int = 3) -> int:
        _, h, w_, c_in = g.shape_of(x)
        fan_in = kernel * kernel * (1 if depthwise else c_in)
        w_scale = 2.0 / (math.sqrt(fan_in) * rms_in) / w_std_q
        shape = (1, kernel, kernel, c_in) if depthwise else (c_out, kernel, kernel, c_in)
        wq = rng.integers(-127, 128, shape, dtype=np.int8)
        bias_scale = x_q.scale * w_scale
        bq = np.full(shape[0] if not depthwise else c_in, round(0.1 / bias_scale), np.int32)
        out_hw = -(-h // stride)
        y = g.tensor(name, [1, out_hw, out_hw, c_in if depthwise else c_out], "int8", relu6_q)
        inputs = [x, g.const(name + "/weights", wq, Quant(w_scale, 0)), g.const(name + "/bias", bq,
                                                                                Quant(bias_scale, 0))]
        common = dict(padding="SAME", strideW=stride, strideH=stride, fusedActivationFunction="RELU6")
        if depthwise:
            g.op("DEPTHWISE_CONV_2D", inputs, [y], version=_INT8_VERSIONS["DEPTHWISE_CONV_2D"],
                 depthMultiplier=1, **common)
        else:
            g.op("CONV_2D", inputs, [y], version=_INT8_VERSIONS["CONV_2D"], **common)
        return y

    g = GraphBuilder()
    in_q = Quant(1.0 / 127.5, 0)  # uint8 pixels p map to (p - 128) / 127.5 ≈ [-1, 1]
    x = _io_in(g, input_name, [1, input_size, input_size, 3], in_q, "uint8")
    x = conv(x, in_q, 0.58, ch(32), 2, False, "stem")
    for i, (stride, c_out) in enumerate(_MOBILENET_V1_BLOCKS):
        x = conv(x, relu6_q, relu6_rms, 0, stride, True, f"block{i}/dw")
        x = conv(x, relu6_q, relu6_rms, ch(c_out), 1, False, f"block{i}/pw", kernel=1)
    _, h, _, c = g.shape_of(x)
    pooled = g.tensor("pool", [1, 1, 1, c], "int8", relu6_q)  # int8 pooling keeps the input's grid
    g.op("AVERAGE_POOL_2D", [x], [pooled], version=_INT8_VERSIONS["AVERAGE_POOL_2D"], padding="VALID",
         strideW=h, strideH=h, filterWidth=h, filterHeight=h)
    flat = g.reshape(pooled, [1, c], "flatten", relu6_q, "int8")
    logits_q = Quant(16.0 / 255.0, 0)  # logits of std ≈ 2 on a ±5 grid
    # Pooled features are averages (rms ≈ their mean ≈ 1.1, little spread); the
    # weights are zero-mean, so logits still vary by class and by input.
    w = rng.integers(-127, 128, (classes, c), dtype=np.int8).astype(np.float64) * (2.0 / (math.sqrt(c) * 1.1) / w_std_q)
    logits = _fc_int8(g, flat, relu6_q, w, np.zeros(classes), logits_q, "logits", relu=False)
    return g.build([_io_out(g, logits, output_name, logits_q, "uint8")])
