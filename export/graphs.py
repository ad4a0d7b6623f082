"""Torch -> ONNX graphs for the device: MC dropout with live masks, and a deep ensemble.

Both graphs take :data:`~voicegate.device.contract.INPUT_NAME` float32 (B, 1, 224, 224) and
return :data:`~voicegate.device.contract.OUTPUT_NAME` float32 (B, S) = p(allowed) per sample.

**MC dropout.** The trunk (convolutions and fc1 + ReLU) runs once; the head's dropout is
sampled T times inside the graph. onnxruntime's default optimiser deletes ``Dropout`` nodes
(even with ``training_mode=True``), which would make every sample identical, so the masks are
built from a ``RandomUniformLike`` op instead::

    feats = trunk(x)                                  # (B, D)
    keep  = (rand(T, D) >= p) / (1 - p)              # inverted-dropout masks, fresh every run
    p_allow = softmax(linear(feats[:, None] * keep))[..., 1]     # (B, T)

The T masks are shared by every row of the batch, so column t is one sampled network applied to
all the windows of an utterance (the runtime sends one utterance per batch). The dropout rate is
a named initializer (:data:`DROPOUT_P_NAME`); parity checks set it to 0 in a copy of the graph,
which turns every mask into ones and must then reproduce the torch model in eval mode.

**Ensemble.** The K members (eval mode, no dropout) run side by side on the same input.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from voicegate.device.contract import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

DROPOUT_P_NAME = "mc_dropout_p"  # scalar float32 initializer of the MC graph
DEFAULT_OPSET = 17
FP16_MIN_ELEMENTS = 1024  # smaller tensors (biases, scalars) stay float32


def head_parts(model: nn.Module) -> tuple[float, nn.Linear]:
    """(dropout p, final Linear) of a model whose head is Sequential(Dropout(p), Linear(D, 2))."""
    head = getattr(model, "head", None)
    if not (isinstance(head, nn.Sequential) and len(head) == 2
            and isinstance(head[0], nn.Dropout) and isinstance(head[1], nn.Linear)):
        raise ValueError("model.head must be nn.Sequential(nn.Dropout(p), nn.Linear(D, 2))")
    if not hasattr(model, "trunk"):
        raise ValueError("model must expose trunk(x) -> (B, D)")
    if head[1].out_features != 2:
        raise ValueError(f"the head must give 2 logits, gives {head[1].out_features}")
    return float(head[0].p), head[1]


class MCDropoutGraph(nn.Module):
    """trunk once, then T dropout masks on the features inside the graph -> (B, T) p(allowed)."""

    def __init__(self, model: nn.Module, samples: int):
        super().__init__()
        self.p, self.linear = head_parts(model)
        if not 0.0 < self.p < 1.0:
            raise ValueError(f"MC dropout needs a head dropout rate in (0, 1), the model has {self.p}")
        self.model = model
        self.samples = int(samples)

    def forward(self, x: torch.Tensor, dropout_p: torch.Tensor) -> torch.Tensor:
        feats = self.model.trunk(x)  # (B, D)
        u = torch.rand(self.samples, feats.shape[1], dtype=feats.dtype)  # (T, D)
        keep = (u >= dropout_p).to(feats.dtype) / (1.0 - dropout_p)
        logits = self.linear(feats.unsqueeze(1) * keep)  # (B, T, 2)
        return torch.softmax(logits, dim=-1)[..., 1]

    def torch_samples(self, x: torch.Tensor) -> torch.Tensor:
        """The same computation in torch with its own masks (for statistical parity checks)."""
        with torch.no_grad():
            return self.forward(x, torch.tensor(self.p))


class EnsembleGraph(nn.Module):
    """K members on the same input -> (B, K) p(allowed)."""

    def __init__(self, models: list):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.softmax(m(x), dim=-1)[:, 1] for m in self.members], dim=1)


def _to_onnx(module: nn.Module, args: tuple, input_names: list, opset: int,
             output_name: str = OUTPUT_NAME) -> onnx.ModelProto:
    """TorchScript-based ONNX export (the one whose torch.rand -> RandomUniformLike we test)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            module, args, buf,
            input_names=input_names, output_names=[output_name],
            dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    return onnx.load_from_string(buf.getvalue())


def _example_input(image_size: int) -> torch.Tensor:
    return torch.rand(2, 1, image_size, image_size, generator=torch.Generator().manual_seed(0))


def export_mc(model: nn.Module, samples: int, opset: int = DEFAULT_OPSET, image_size: int = 224) -> onnx.ModelProto:
    """The MC-dropout graph (T = ``samples``) of ``model``, with its dropout rate as an initializer."""
    model = model.eval().cpu()
    graph = MCDropoutGraph(model, samples).eval()
    proto = _to_onnx(graph, (_example_input(image_size), torch.tensor(graph.p)), [INPUT_NAME, DROPOUT_P_NAME], opset)
    # the dropout rate becomes a constant of the graph (not a runtime input)
    (p_input,) = [i for i in proto.graph.input if i.name == DROPOUT_P_NAME]
    proto.graph.input.remove(p_input)
    proto.graph.initializer.append(numpy_helper.from_array(np.array(graph.p, np.float32), DROPOUT_P_NAME))
    ops = {n.op_type for n in proto.graph.node}
    if "RandomUniformLike" not in ops and "RandomUniform" not in ops:
        raise RuntimeError("MC export lost its random op: the samples would not vary")
    onnx.checker.check_model(proto)
    return proto


def export_ensemble(models: list, opset: int = DEFAULT_OPSET, image_size: int = 224) -> onnx.ModelProto:
    graph = EnsembleGraph([m.eval().cpu() for m in models]).eval()
    proto = _to_onnx(graph, (_example_input(image_size),), [INPUT_NAME], opset)
    onnx.checker.check_model(proto)
    return proto


def with_dropout_p(proto: onnx.ModelProto, p: float) -> onnx.ModelProto:
    """A copy of an MC graph with its dropout rate replaced (p=0: every mask is all ones)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for i, init in enumerate(out.graph.initializer):
        if init.name == DROPOUT_P_NAME:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array(p, np.float32), DROPOUT_P_NAME))
            return out
    raise ValueError(f"not a voicegate MC graph: no {DROPOUT_P_NAME} initializer")


def set_metadata(proto: onnx.ModelProto, meta: dict) -> None:
    """Replace the graph's metadata_props with ``meta`` (str -> str)."""
    del proto.metadata_props[:]
    for k, v in sorted(meta.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(k), str(v)
    proto.producer_name = "voicegate"


def store_weights_fp16(proto: onnx.ModelProto, min_elements: int = FP16_MIN_ELEMENTS) -> onnx.ModelProto:
    """A copy whose large float32 weights are stored as float16 and cast back to float32.

    Halves the file; onnxruntime folds the casts when it loads the model, so inference still
    runs in float32 (with the weights rounded to float16). The MC dropout rate is never touched.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "__fp16")
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "__cast"))
        graph.initializer.remove(init)
        graph.initializer.append(half)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(out)
    return out
