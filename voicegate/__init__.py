"""voicegate: an edge voice gate.

The code lives in three subpackages, installed under this namespace:

- ``voicegate.device``: the runtime for the Raspberry Pi (numpy, onnxruntime, sounddevice).
- ``voicegate.train``: corpus preparation and PyTorch training (the ``[train]`` extra).
- ``voicegate.export``: ONNX export of trained runs (the ``[train]`` extra).

Dependencies point one way: ``train`` and ``export`` import from ``device``, never the reverse.
"""

__version__ = "0.1.0"
