"""NatureLM-audio with a per-request LoRA interpolation weight (alpha), and nothing about the UI."""
