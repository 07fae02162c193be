"""The package works the same from a wheel, an editable install and the source tree. The model-card templates live
outside the package (the top-level model_cards/): a wheel must carry them inside it, and code imported from a
checkout (an editable install, or `python -m pytest` from the root over a wheel install) must find them beside it."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import CLI_ENV, REPO

TEMPLATE = "model_cards/model_card.md.jinja"
# Imports hf_instruct from each folder in turn, in one interpreter (transformers is imported once), and prints where
# it found the card template.
WHERE_IS_THE_TEMPLATE = """
import sys
for root in sys.argv[1:]:
    sys.path.insert(0, root)
    from hf_instruct.model_card import TEMPLATE
    print(TEMPLATE)
    sys.path.remove(root)
    for name in [name for name in sys.modules if name.partition(".")[0] == "hf_instruct"]:
        del sys.modules[name]
"""


@pytest.mark.slow  # a fresh interpreter imports the package (about 10 s)
def test_a_wheel_and_a_checkout_both_find_the_card_templates(tmp_path):
    pytest.importorskip("setuptools", minversion="77")  # the PEP 639 `license` string in pyproject.toml
    checkout, wheels, installed = tmp_path / "checkout", tmp_path / "wheels", tmp_path / "site-packages"
    checkout.mkdir()  # a copy, so that building the wheel leaves nothing in the real checkout
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, checkout / name)
    for name in ("hf_instruct", "model_cards"):
        shutil.copytree(REPO / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    subprocess.run([*build, str(checkout)], check=True, capture_output=True, timeout=120)
    (wheel,) = wheels.glob("hf_instruct-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(f"hf_instruct/{TEMPLATE}") == (REPO / TEMPLATE).read_bytes()
        archive.extractall(installed)

    proc = subprocess.run(
        [sys.executable, "-c", WHERE_IS_THE_TEMPLATE, str(installed), str(checkout)],
        cwd=tmp_path,
        env=CLI_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Each copy reads its own templates (not, say, the ones an editable install maps in from this repository).
    assert [Path(line) for line in proc.stdout.split()] == [installed / "hf_instruct" / TEMPLATE, checkout / TEMPLATE]
