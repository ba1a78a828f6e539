"""Pretrained checkpoints in and out: load / generate / export, HF and Gemma Orbax formats."""
