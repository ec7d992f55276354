"""Label sets as router training data: checked against the SLM they must come from, merged, described."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from r2r.data_gen.shards import load_labels
from r2r.router.fit import Positives, SLMInfo, label_tensors
from r2r.router.train import LabelTensors


@dataclass
class RouterData:
    tensors: LabelTensors
    label_meta: list[dict]  # one description per label set, recorded in the router's JSON and card
    top_k: int  # top-k log-probs the label sets store as features


def load_router_data(label_dirs: list[Path], slm: SLMInfo, llm_fingerprint: str, llm_dir: str,
                     positives: Positives) -> RouterData:
    """Every label set, which must come from this SLM and tokenizer and store the same top-k; `llm_dir` is
    recorded for label sets made with the LLM of fingerprint `llm_fingerprint`."""
    columns: dict[str, list] = {}
    label_meta: list[dict] = []
    top_k = None
    for root in label_dirs:
        ds, manifest = load_labels(root)
        ident = manifest["identity"]
        if ident["slm"] != slm.fingerprint or ident["tokenizer"] != slm.tokenizer_fingerprint:
            raise ValueError(f"{root} was labeled with another SLM or tokenizer (SLM {ident['slm']}, tokenizer "
                             f"{ident['tokenizer']}) than {slm.model_dir} ({slm.fingerprint}, {slm.tokenizer_fingerprint})")
        k = ident["settings"]["top_k"]
        if top_k is not None and k != top_k:
            raise ValueError(f"{root} stores top-{k} features, the other label sets top-{top_k}")
        top_k = k
        part = ds.select_columns(["data_id", "hidden", "slm_token", "topk", positives.value]).with_format("numpy")[:]
        # unverifiable candidates (no gradeable answer in either branch) have no divergence label: left out
        # (mismatch positives need none)
        divergence_only = positives == Positives.DIVERGENT and "unverifiable" in ds.column_names
        keep = ~np.asarray(list(ds["unverifiable"]), dtype=bool) if divergence_only else np.ones(len(ds), dtype=bool)
        for key, value in part.items():
            columns.setdefault(key, []).append(np.asarray(value)[keep])
        llm = {"llm_fingerprint": ident["llm"]} | ({"llm_dir": llm_dir} if ident["llm"] == llm_fingerprint else {})
        continued = {k: ident["settings"][k] for k in ("continue_with", "continue_share") if k in ident["settings"]}
        if "continue_router" in ident:
            continued["continue_router"] = ident["continue_router"]
        how = {"verifier": ident["settings"].get("verifier", "answer"), "task": ident["settings"].get("task")}
        counts = {k: v for k, v in manifest.get("counts", {}).items() if k != "shards"}
        label_meta.append({"dir": str(root), "positives": positives.value, **how, **llm, **continued, **counts})
    assert top_k is not None, "no label directories given"
    if not sum(len(c) for c in columns["data_id"]):
        raise ValueError(f"no labeled positions left in {[str(d) for d in label_dirs]}: every candidate was "
                         "unverifiable (see the label run's counts)")
    tensors = label_tensors({k: np.concatenate(v) for k, v in columns.items()}, positives)
    return RouterData(tensors, label_meta, top_k)
