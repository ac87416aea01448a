"""scripts/model_card.py: the README's tables come from the manifests, a continued model's runs summed."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _model_card():
    spec = importlib.util.spec_from_file_location("model_card", ROOT / "scripts" / "model_card.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_phases_follow_the_lineage_newest_first():
    card = _model_card()
    first = {"train_time_s": 600, "command": "a"}
    second = {"train_time_s": 120, "command": "b", "continued_from": {"sha256": "x", "training": first}}
    third = {"train_time_s": 60, "command": "c", "continued_from": {"sha256": "y", "training": second}}
    assert [p["command"] for p in card.phases(third)] == ["c", "b", "a"]
    assert card.phases({"command": "only"}) == [{"command": "only"}]
    # A lineage that could not be read (no training section) ends the chain.
    assert len(card.phases({"continued_from": {"file": "f", "sha256": None}})) == 1
