"""Models and fitting: the study's CNN classifier, its training loop and the `voicegate train` CLI."""
