"""``voicegate prepare``: turn a speaker corpus into cached, leak-free spectrogram windows.

Each recording is loaded with the device's ``load_audio``, trimmed with ``trim_silence``, cut
with ``frame_windows`` and rendered with ``spectrogram``: the very featurizer the gate runs.
Training recordings are cut every ``train_hop_seconds`` and also give augmented copies (more
for the allowed class, which is the small one); val, test and held-out recordings are cut every
``eval_hop_seconds``, the device's decision hop, and are never augmented.

The cache folder holds:

* ``images.npy``: float16 (N, 224, 224) windows in [0, 1] (open it with ``mmap_mode="r"``);
* ``index.csv``: one row per window: ``speaker, recording, item, split, label, role, aug, start_s``
  (``split`` in train/val/test/heldout, ``label`` 1 = allowed, ``aug`` 0 = clean, k = copy k,
  ``start_s`` = the window start in the trimmed recording, seconds);
* ``augmentations.csv``: what each augmented copy did (pitch, noise kind, SNR, shift);
* ``meta.json``: the config, the cache key, the feature contract and the roles;
* ``report.json`` / ``report.md``: the split report (windows per speaker and split, seconds
  before and after trimming, class counts, skipped files, leakage computed from the index).

The cache key hashes the config, the corpus files (path, size, mtime), the noise files, the
roles and the feature contract, so a second run with the same inputs reuses the cache, and any
change rebuilds it. A build is written to a temporary folder and renamed into place at the end,
so an interrupted run never leaves a broken cache behind.

The parts: :mod:`~voicegate.train.data.config` (options), :mod:`~voicegate.train.data.cache`
(the cache on disk), :mod:`~voicegate.train.data.build` (rendering) and
:mod:`~voicegate.train.data.split_report`. Nothing heavy is imported at module level: this module
builds the CLI's ``--help``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from voicegate.train.commands import error_text
from voicegate.train.data.build import build, limit_recordings, load_recording  # noqa: F401 (load_recording: API)
from voicegate.train.data.cache import PreparedCorpus, cache_key, existing_key, swap_into_place
from voicegate.train.data.config import PrepareConfig, add_arguments, config_from_args, default_cache_root
from voicegate.train.data.corpus import CorpusError, load_corpus
from voicegate.train.data.split_report import summary

log = logging.getLogger(__name__)

__all__ = ["PrepareConfig", "PreparedCorpus", "add_arguments", "load_recording", "prepare_corpus", "run"]


def prepare_corpus(cfg: PrepareConfig) -> PreparedCorpus:
    """Prepare ``cfg.corpus`` (or reuse a matching cache) and open the result."""
    from voicegate.train.data.augment import find_noise_dir, noise_files

    t0 = time.perf_counter()
    corpus = load_corpus(cfg.corpus, cfg.layout, cfg.versions, cfg.allowed, cfg.impostors)
    corpus.recordings = sorted(
        limit_recordings(corpus.recordings, cfg.max_recordings_per_speaker),
        key=lambda r: (r.speaker, r.recording, r.item),
    )
    noise_dir = find_noise_dir(corpus.root, cfg.noise_dir)
    noise = list(noise_files(noise_dir))
    key = cache_key(cfg, corpus, noise)
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_root() / f"{corpus.root.name}-{key[:16]}"
    cache = cache.resolve()
    existing = existing_key(cache)
    if existing == key and not cfg.force:
        try:
            pc = PreparedCorpus.open(cache)
            pc.reused = True
            log.info("reusing the prepared cache %s (key %s)", cache, key[:16])
            return pc
        except (CorpusError, OSError, ValueError) as e:
            log.warning("cache %s is unusable (%s); rebuilding", cache, e)
    elif existing is not None:
        log.info("cache %s was prepared with other inputs%s; rebuilding", cache, " (forced)" if cfg.force else "")
    elif cache.exists() and any(cache.iterdir()):
        raise CorpusError(f"{cache}: exists and is not a voicegate cache; choose another --cache folder")

    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.parent / f".{cache.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build(cfg, corpus, noise_dir, key, tmp, t0)
        swap_into_place(tmp, cache)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return PreparedCorpus.open(cache)


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        pc = prepare_corpus(cfg)
    except (CorpusError, ValueError, OSError) as e:
        print(f"voicegate prepare: error: {error_text(e)}", file=sys.stderr)
        return 2
    print(summary(pc))
    return 0
