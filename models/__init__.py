"""The shipped default models (ONNX files with their contract inside) and an example WAV.

Installed as the package ``voicegate.models`` so the device finds them without any path setup.
"""
