"""Images: one Dockerfile and one lock per dependency group, holding the pins that resolve together."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

IMAGES = Path(__file__).resolve().parents[1] / "components" / "images"
# Known to resolve together (see the architecture notes); the locks must keep them.
PINS = {"kfp": "2.17.0", "kfp-kubernetes": "2.17.0"}
GROUP_PINS = {
    "data": {"alibi-detect": "0.13.0"},
    "train": {"tensorflow": "2.21.0"},
    "deploy": {"kserve": "0.20.0"},
    "serve": {"kserve": "0.20.0", "tensorflow-cpu": "2.21.0"},
}


def locked(group: str) -> dict[str, str]:
    text = (IMAGES / group / "requirements.txt").read_text()
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M)}


@pytest.mark.parametrize("group", sorted(GROUP_PINS))
def test_lock_holds_the_known_good_pins(group: str) -> None:
    pins = locked(group)
    for name, version in {**PINS, **GROUP_PINS[group]}.items():
        assert pins.get(name) == version, f"{group}: {name} should be {version}, lock has {pins.get(name)}"
    assert int(pins["numpy"].split(".")[0]) < 2
    assert "feedback-loop" not in pins, "the package itself is installed from source, not the lock"


def test_gpu_training_image_has_no_cpu_only_tensorflow() -> None:
    pins = locked("train")
    assert "tensorflow-cpu" not in pins and "nvidia-cudnn-cu12" in pins


@pytest.mark.parametrize("group", sorted(GROUP_PINS))
def test_dockerfile_installs_its_own_lock_on_a_pinned_base(group: str) -> None:
    dockerfile = (IMAGES / group / "Dockerfile").read_text()
    # The base is a build argument (./build.sh passes a Debian-built one where no registry answers),
    # whose default is a pinned, fully qualified image.
    assert re.findall(r"^FROM\s+(\S+)", dockerfile, re.M) == ["${BASE_IMAGE}"]
    (base,) = re.findall(r"^ARG\s+BASE_IMAGE=(\S+)", dockerfile, re.M)
    assert base.startswith("docker.io/") and ":" in base and not base.endswith(":latest")
    assert f"components/images/{group}/requirements.txt" in dockerfile
    assert "pip install --no-deps /src" in dockerfile and re.search(r"^USER\s+\d+", dockerfile, re.M)


def test_every_package_folder_is_installed() -> None:
    # The images install the package non-editable: a subpackage missing from pyproject's list is
    # absent there (train.families was), though the editable dev install still finds it.
    import tomllib

    root = IMAGES.parent
    folders = {
        ".".join(p.parent.relative_to(root).parts) for p in (root / "feedback_loop").rglob("__init__.py")
    }
    listed = set(tomllib.loads((root.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert folders - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(folders - listed)}"
