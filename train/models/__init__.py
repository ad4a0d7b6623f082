"""Models and fitting, classifier and encoder side by side: the study's CNN classifier
(``classifier``), its training loop (``fit``) and the `voicegate train` CLI (``trainer``); the
speaker encoder (``encoder``, AAM-softmax head), its GE2E teacher (``teacher``), its training loop
(``fit_encoder``), fine-tuning from an exported graph (``from_onnx``) and the
`voicegate train-encoder` CLI (``encoder_cli``)."""
