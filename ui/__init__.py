"""The app's UI: one module per tab that builds widgets and wires events, and the text, tables and figures
they show. Importing the package imports nothing (no gradio), so gradio-free parts (the figures, the
sweeps service) are usable from evaluation code and tests without a web stack.
"""
