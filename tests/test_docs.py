"""Every code name the docs cite (`module.name` or `module.Class.attr` in backticks, for a module
of this project) exists."""
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = ("schemas", "pipeline", "student_train")


def modules() -> dict[str, str]:
    """Short and full module names: 'job' and 'pipeline.job' -> 'pipeline.job'."""
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).glob("*.py"):
            if f.stem != "__init__":
                out[f.stem] = out[f"{pkg}.{f.stem}"] = f"{pkg}.{f.stem}"
        out[pkg] = pkg
    return out


def cited() -> list[tuple[str, str, str]]:
    mods, found = modules(), []
    for doc in DOCS:
        for span in re.findall(r"`([^`\n]+)`", doc.read_text()):
            if re.search(r"\.(safetensors|json|py|yaml|parquet|md|txt|png|jsonl)$", span):
                continue  # a file name
            m = re.fullmatch(r"([a-z_]+(?:\.[a-z_]+)?)\.([A-Za-z_][\w.]*)", span.split("(")[0])
            if not m:
                continue
            mod, attr = m.groups()
            if mod not in mods and mod.split(".")[0] in PACKAGES:  # e.g. schemas.compact.x
                mod, attr = mod.split(".")[0], mod.split(".", 1)[1] + "." + attr
            if mod in mods:
                found.append((doc.name, mods[mod], attr))
    return found


def test_docs_cite_names():
    assert len(cited()) > 20  # the check sees the docs' names at all


@pytest.mark.parametrize("doc,module,attr", cited())
def test_cited_name_exists(doc, module, attr):
    obj = importlib.import_module(module)
    for part in attr.split("."):
        if not hasattr(obj, part) and hasattr(obj, "__path__"):  # a package's module
            obj = importlib.import_module(f"{obj.__name__}.{part}")
            continue
        assert hasattr(obj, part), f"{doc} cites `{module}.{attr}`, which does not exist"
        obj = getattr(obj, part)
