"""The README's figures agree with the code: one RAM figure (the banner's too), the Explore length limit."""

from __future__ import annotations

import re
from pathlib import Path

from naturelm_core.audio import MAX_DURATION_S
from naturelm_core.startup import DEMO_BANNER

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_cpu_ram_is_one_figure_in_the_readme_and_the_banner():
    figures = set(re.findall(r"about\s+(\S+)\s+GB of RAM", README)) | set(
        re.findall(r"about (\S+) GB of RAM", DEMO_BANNER)
    )
    assert len(figures) == 1 and "<RAM>" not in figures, figures
    assert "40 GB" not in DEMO_BANNER


def test_the_length_limit_and_the_long_recording_path_are_stated():
    assert f"at most {MAX_DURATION_S:.0f} s" in README and "python -m naturelm_core.detect" in README


def test_the_cpu_only_install_is_described_as_untested():
    assert "--index-url https://download.pytorch.org/whl/cpu" in README and "not tested here" in README
    assert "6.8 GB" in README and "naturelm_core.infer --demo" in README
