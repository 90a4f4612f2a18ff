"""`llmfair export`: a standard peft adapter and a merged checkpoint that plain transformers/peft
load with the trained model's logits, a model card, and a no-op adapter refused — on every backbone
family's tiny build (the family table of tests/test_backbones.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llmfair.errors import ConfigError, DataError
from llmfair.predictions import read_predictions
from llmfair.training.config import RunConfig
from tests.test_backbones import BY_NAME, FAMILY_NAMES


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def trained_run(request, tmp_path_factory) -> Path:
    from llmfair.speechllm.run import train

    root = tmp_path_factory.mktemp(f"export-{request.param}")
    torch.set_num_threads(2)
    config = RunConfig.from_mapping({
        "model": {"name_or_path": "tiny", "dtype": "float32", "family": request.param},
        "data": {"root": str(root / "corpus"), "synth_seed": 0, "synth_options": {"utterances_per_pair": 40},
                 "languages": ["eng"], "modalities": ["audio"]},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": "llm", "train_projector": True},
        "objective": {"name": "minmaxgap", "options": {"weight": "fixed", "lambda_init": 0.5}},
        "training": {"max_steps": 12, "per_device_train_batch_size": 4, "learning_rate": 0.003,
                     "save_strategy": "no", "seed": 0, "report_to": [], "disable_tqdm": True},
    }, source="test")
    train(config, root / "run", predict_splits=["test"])
    return root / "run"


def _plain_probabilities(model, run: Path) -> np.ndarray:
    """Class probabilities the way a user without llmfair's scorer gets them: the full forward's
    last-position logits restricted to the label words' first tokens."""
    from llmfair.data.labels import MELD
    from llmfair.speechllm import PromptTemplate, SpeechLLMCollator, Verbalizer, get_backbone, load_speech_llm
    from llmfair.speechllm.collator import model_inputs

    config = RunConfig.from_yaml(run / "config.yaml")
    chat = get_backbone(config.model.family).chat
    _, processor = load_speech_llm("tiny", family=config.model.family)
    verbalizer = Verbalizer(MELD.classes, processor.tokenizer, answer_prefix=chat.answer_prefix)
    collator = SpeechLLMCollator(processor, PromptTemplate(chat=chat), verbalizer)
    pred = read_predictions(run / "predictions_test.csv")
    frame = pred.frame
    from llmfair.data.meld_st import read_meld_st

    by_id = {e.id: e for e in read_meld_st(config.data.root, splits=("test",), languages=("eng",))}
    records = [{"audio": by_id[i].audio, "text": by_id[i].text, "language": "eng", "modality": "audio", "emotion": 0}
               for i in frame["id"][:8]]
    model.eval()
    with torch.no_grad():
        logits = model(**model_inputs(collator(records))).logits[:, -1, verbalizer.label_token_ids]
    return torch.softmax(logits.float(), -1).numpy(), pred.probs[:8]


def test_adapter_loads_with_plain_peft_and_reproduces_logits(trained_run: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    from llmfair.speechllm import load_speech_llm
    from llmfair.speechllm.export import export_run

    import transformers

    family = BY_NAME[RunConfig.from_yaml(trained_run / "config.yaml").model.family]
    out = export_run(trained_run, tmp_path / "export", merge=True, n_resamples=50)
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "README.md", "merged"}
    base, _ = load_speech_llm("tiny", family=family.name)
    model = PeftModel.from_pretrained(base, str(out))
    ours, written = _plain_probabilities(model, trained_run)
    np.testing.assert_allclose(ours, written, atol=1e-5)

    merged = getattr(transformers, family.model_class).from_pretrained(str(out / "merged"))
    merged_probs, _ = _plain_probabilities(merged, trained_run)
    np.testing.assert_allclose(merged_probs, written, atol=1e-5)

    from llmfair.speechllm import get_backbone
    from llmfair.speechllm.loading import check_processor

    check_processor(merged, get_backbone(family.name).load_processor(str(out / "merged"), local_files_only=True))
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "objective `minmaxgap`" in card and "**Reconstruction**" in card
    assert f"Backbone family: `{family.name}`" in card and f"from transformers import {family.model_class}" in card
    results = card.split("## Results")[1]
    assert "| eng | audio | female |" in results and "| eng | audio | male |" in results
    assert "## Gender gaps (male − female)" in results
    provenance = json.loads((out / "llmfair_run.json").read_text())
    assert provenance["probe_max_logit_change"] > 0 and len(provenance["manifest"]["lora_target_modules"]) == 14


def test_noop_adapter_refused(trained_run: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from llmfair.speechllm.export import export_run

    fake = tmp_path / "run"
    shutil.copytree(trained_run, fake)
    weights = load_file(str(fake / "adapter" / "adapter_model.safetensors"))
    family = BY_NAME[RunConfig.from_yaml(fake / "config.yaml").model.family]
    projector = family.projector_params[0].rsplit(".", 1)[0]
    zeroed = {k: (torch.zeros_like(v) if "lora_B" in k else v) for k, v in weights.items() if projector not in k}
    assert len(zeroed) < len(weights)  # the trained projector was in the adapter
    save_file(zeroed, str(fake / "adapter" / "adapter_model.safetensors"))
    cfg = json.loads((fake / "adapter" / "adapter_config.json").read_text())
    cfg["modules_to_save"] = None
    (fake / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="does not change the model's logits"):
        export_run(fake, tmp_path / "out", n_resamples=0)
    assert not (tmp_path / "out").exists()


def test_refusals(trained_run: Path, tmp_path: Path) -> None:
    from llmfair.speechllm.export import export_run

    with pytest.raises(ConfigError, match="is not a finished llmfair run"):
        export_run(tmp_path, tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    for overwrite in (False, True):  # a user's file is never replaced: --overwrite does not help
        with pytest.raises(DataError, match=r"holds files llmfair did not write \(.*keep.txt\)"):
            export_run(trained_run, tmp_path / "busy", overwrite=overwrite)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "x"
