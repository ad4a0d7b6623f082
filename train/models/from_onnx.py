"""Fine-tune a shipped encoder without its training checkpoint: the weights, read back from the
exported MC-dropout ONNX model (``voicegate train-encoder --init models/voicegate-encoder-mc.onnx``).

The export folds every BatchNorm into the convolution before it, so the graph holds, per conv
block, one weight and one bias. They go back into :class:`SpeakerEncoder` as the convolution's
weight and the BatchNorm's shift, with the BatchNorm set to the identity (scale 1, running mean
0, running variance 1 - eps) and **frozen in eval mode** while fine-tuning
(:func:`freeze_batchnorm`): batch statistics would otherwise replace the folded ones. What the
graph does not hold (the AAM class weights, the teacher projection) is rebuilt from the data:
each class weight is the mean embedding of its speaker's clean windows (imprinting), the
projection a least-squares fit of the teacher's embeddings. :func:`encoder_state_from_onnx`
checks the recovered network against the graph (dropout rate set to 0) before it is used.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def encoder_state_from_onnx(path) -> tuple[dict, dict]:
    """(EncoderConfig fields, SpeakerEncoder state_dict) recovered from an exported MC encoder.

    ValueError for anything but a voicegate MC encoder graph of the compact trunk, or when the
    recovered network does not reproduce the graph."""
    import onnx
    import torch
    from onnx import numpy_helper

    from voicegate.export.graphs import DROPOUT_P_NAME

    from .encoder import EncoderConfig, SpeakerEncoder

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    contract = json.loads(meta.get("voicegate.contract", "{}"))
    if contract.get("kind") != "encoder" or contract.get("method") != "mc":
        raise ValueError(f"{path}: not a voicegate MC-dropout encoder (kind {contract.get('kind')!r}, "
                         f"method {contract.get('method')!r}); fine-tune an ensemble from its runs' checkpoints")
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    gemms = [n for n in proto.graph.node if n.op_type == "Gemm"]
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    if len(gemms) != 1 or len(matmuls) != 1 or DROPOUT_P_NAME not in inits:
        raise ValueError(f"{path}: not the compact encoder's graph (Gemm {len(gemms)}, MatMul {len(matmuls)})")
    head_add = [n for n in proto.graph.node if n.op_type == "Add" and matmuls[0].output[0] in n.input]
    head_bias = [inits.get(i, consts.get(i)) for i in head_add[0].input if i != matmuls[0].output[0]][0] \
        if head_add else None
    if head_bias is None:
        raise ValueError(f"{path}: the embedding head's bias is missing from the graph")
    weights = [inits[n.input[1]] for n in convs]
    cfg = EncoderConfig(widths=tuple(int(w.shape[0]) for w in weights),
                        trunk_dim=int(inits[gemms[0].input[1]].shape[0]),
                        embedding_dim=int(contract["embedding_dim"]),
                        dropout=round(float(inits[DROPOUT_P_NAME]), 6), teacher_dim=0)
    model = SpeakerEncoder(cfg)
    state = model.state_dict()
    conv_names = [k[: -len(".weight")] for k, v in state.items() if k.endswith(".weight") and v.ndim == 4]
    if len(conv_names) != len(convs):
        raise ValueError(f"{path}: {len(convs)} convolutions, the compact trunk has {len(conv_names)}")
    for name, node, w in zip(conv_names, convs, weights):
        bn = name.split(".")
        bn[-1] = str(int(bn[-1]) + 1)  # the BatchNorm right after each convolution
        bn = ".".join(bn)
        bias = inits[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
        eps = model.get_submodule(bn).eps
        state[f"{name}.weight"] = torch.from_numpy(w.copy())
        state[f"{bn}.weight"] = torch.ones(w.shape[0])
        state[f"{bn}.bias"] = torch.from_numpy(bias.copy())
        state[f"{bn}.running_mean"] = torch.zeros(w.shape[0])
        state[f"{bn}.running_var"] = torch.full((w.shape[0],), 1.0 - eps)
    gemm = gemms[0]
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    fc_w = inits[gemm.input[1]]
    linear = [k for k, v in state.items() if k.startswith("trunk.") and k.endswith(".weight") and v.ndim == 2][0]
    state[linear] = torch.from_numpy((fc_w if trans_b else fc_w.T).copy())
    state[linear.replace(".weight", ".bias")] = torch.from_numpy(inits[gemm.input[2]].copy())
    state["head.1.weight"] = torch.from_numpy(inits[matmuls[0].input[1]].T.copy())
    state["head.1.bias"] = torch.from_numpy(np.asarray(head_bias, np.float32).copy())
    model.load_state_dict(state)
    _check_against_graph(model, proto, path)
    return cfg.to_dict(), state


def _check_against_graph(model, proto, path) -> None:
    import onnxruntime as ort
    import torch

    from voicegate.export.graphs import with_dropout_p

    x = np.random.default_rng(0).random((3, 1, model.cfg.image_size, model.cfg.image_size), dtype=np.float32)
    sess = ort.InferenceSession(with_dropout_p(proto, 0.0).SerializeToString(), providers=["CPUExecutionProvider"])
    graph = sess.run(None, {sess.get_inputs()[0].name: x})[0][:, 0]  # (windows, samples, D): any sample
    with torch.no_grad():
        mine = model.eval()(torch.from_numpy(x)).numpy()
    err = float(np.abs(graph - mine).max())
    if err > 1e-4:
        raise ValueError(f"{path}: the recovered encoder differs from the graph by {err:.2e}")
    log.info("recovered the encoder from %s (max |difference| %.1e)", path, err)


def freeze_batchnorm(module) -> None:
    """Every BatchNorm in eval mode (running statistics used, never updated)."""
    from torch import nn

    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def start_from_onnx(training, path, images: np.ndarray, labels: np.ndarray, teacher, n_real: int) -> None:
    """Load the recovered encoder into ``training`` and rebuild its training-only parts.

    ``images``: (n, versions, 224, 224) uint8, version 0 clean; ``labels``: (n,) real speaker ids;
    ``teacher``: (n, T) teacher embeddings or None; ``n_real``: the real speakers (pseudo-speaker
    classes n_real.. of the AAM head start as copies of their source speaker's weight)."""
    import torch

    from .fit_encoder import embed_images

    cfg, state = encoder_state_from_onnx(path)
    mine = training.encoder.state_dict()  # the run's architecture, its default widths resolved
    differ = [k for k, v in state.items() if mine[k].shape != v.shape]
    if cfg["dropout"] != training.encoder.cfg.dropout:
        differ.append(f"dropout {cfg['dropout']} (this run's {training.encoder.cfg.dropout})")
    if differ:
        raise ValueError(f"{path}: another architecture than this run's: {', '.join(differ)} differ")
    training.encoder.load_state_dict(state)
    emb = embed_images(training.encoder, images[:, 0])  # clean windows, eval mode
    means = np.stack([emb[labels == k].mean(0) for k in range(n_real)])
    means /= np.linalg.norm(means, axis=1, keepdims=True) + 1e-9
    classes = training.aam.weight.shape[0]
    with torch.no_grad():
        training.aam.weight.copy_(torch.from_numpy(np.tile(means, (classes // n_real, 1))).float())
        if training.project is not None and teacher is not None:
            x = np.hstack([emb, np.ones((len(emb), 1), np.float32)])
            coef, *_ = np.linalg.lstsq(x, np.asarray(teacher, np.float32), rcond=None)
            training.project.weight.copy_(torch.from_numpy(coef[:-1].T.copy()))
            training.project.bias.copy_(torch.from_numpy(coef[-1].copy()))
    log.info("fine-tuning %s: AAM weights imprinted from %d speakers' clean windows", Path(path).name, n_real)
