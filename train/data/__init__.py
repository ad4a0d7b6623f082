"""Data: corpora and roles, leak-free splits, augmentation, and the prepared spectrogram windows."""
