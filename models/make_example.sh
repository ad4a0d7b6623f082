#!/usr/bin/env bash
# Regenerates models/example-espeak.wav: a synthetic voice (espeak-ng) that is NOT one of the allowed
# people, so the shipped gate should answer DENIED (or UNCERTAIN) on it. The tests build their
# synthetic speakers from it (tests/synth.py). models/example.wav is a real stranger (make_demo.py).
# Needs the Debian packages espeak-ng and sox.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp --suffix=.wav)"
trap 'rm -f "$tmp"' EXIT
espeak-ng -v en-us -s 150 -w "$tmp" "Hello, this is the front door. Please let me in, I live here."
sox "$tmp" -r 16000 -c 1 -b 16 "$here/example-espeak.wav"
