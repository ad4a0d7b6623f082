"""The device runtime: numpy + onnxruntime (+ sounddevice for `listen`). No torch, no librosa."""
