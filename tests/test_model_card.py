"""scripts/model_card.py: the README's tables come from the manifests, a continued model's runs summed."""

from script_loader import load_script


def _model_card():
    return load_script("model_card")


def test_phases_follow_the_lineage_newest_first():
    card = _model_card()
    first = {"train_time_s": 600, "command": "a"}
    second = {"train_time_s": 120, "command": "b", "continued_from": {"sha256": "x", "training": first}}
    third = {"train_time_s": 60, "command": "c", "continued_from": {"sha256": "y", "training": second}}
    assert [p["command"] for p in card.phases(third)] == ["c", "b", "a"]
    assert card.phases({"command": "only"}) == [{"command": "only"}]
    # A lineage that could not be read (no training section) ends the chain.
    assert len(card.phases({"continued_from": {"file": "f", "sha256": None}})) == 1


def test_gpu_and_cpu_minutes_are_reported_apart_never_added():
    card = _model_card()
    cpu_run = {"train_time_s": 3840, "command": "train_xception.py --epochs 2"}    # before `device` was recorded
    gpu_run = {"train_time_s": 332, "device": "cuda", "continued_from": {"sha256": "x", "training": cpu_run}}
    assert card.minutes_on([cpu_run]) == "64 min CPU"
    assert card.minutes_on([gpu_run]) == "6 min GPU"
    assert card.minutes_on(card.phases(gpu_run)) == "64 min CPU + 6 min GPU"
    assert card.minutes_on([{"train_time_s": 60, "device": "cpu"}, cpu_run]) == "65 min CPU"


def test_a_runs_device_comes_from_its_config_or_else_its_command():
    from convert_models import _training_device

    assert _training_device({"device": "cuda", "command": "train_swin.py"}) == "cuda"
    assert _training_device({"command": "train_xception.py --device cuda:1 --epochs 3"}) == "cuda"
    assert _training_device({"command": "train_xception.py --epochs 3"}) == "cpu"
    assert _training_device({"command": "train_xception.py --device"}) == "cpu"      # a malformed command
    assert _training_device({}) == "cpu"


def test_a_95th_percentile_shows_its_interval_when_the_stability_file_has_one():
    card = _model_card()
    assert card.p95_cell({"p95": 0.1143, "p95_ci90": [0.0812, 0.1491]}) == "0.114 [0.08, 0.15]"
    assert card.p95_cell({"p95": 0.1143}) == "0.114"     # a stability file written before intervals


def test_false_positive_table_lists_only_manifests_that_record_the_figures(tmp_path):
    import json

    card = _model_card()
    assert card.false_positive_rows(tmp_path) == []          # nothing installed: no table
    (tmp_path / "xception.json").write_text(json.dumps({"metrics": {"test": {"auc": 0.9}}}))   # an older manifest
    assert card.false_positive_rows(tmp_path) == []
    (tmp_path / "swin.json").write_text(json.dumps({"metrics": {
        "test": {"fpr": 0.0625, "real_mean_p": 0.1234}, "cross_dataset": {"auc": 0.5}}}))
    rows = card.false_positive_rows(tmp_path)
    assert rows[-1] == "| `swin` | 6.2 % (0.123) | n/a |" and len([r for r in rows if r.startswith("| `")]) == 1


def test_the_starting_point_says_when_only_a_stem_had_imagenet_weights():
    starting_point = _model_card().starting_point
    stemmed = {"architecture": {"args": {"stem": "mobilenet_v2"}}, "training": {"pretrained_trunk": True}}
    assert starting_point(stemmed) == "from ImageNet weights in a mobilenet_v2 stem, the rest from scratch"
    assert starting_point({"architecture": {"args": {}}, "training": {"pretrained_trunk": True}}) == "from ImageNet weights"
    assert starting_point({"training": {"pretrained_trunk": False}}) == "from scratch"


def test_the_card_gives_the_ensembles_gap_to_its_best_member_with_its_interval(tmp_path):
    import json

    card = _model_card()
    ensemble = {"weights": {"xception": 1.0}, "chosen": "mean+floor", "why_chosen": "simplest",
                "metrics": {"test": {"auc": 0.98, "ap": 0.98, "eer": 0.07, "accuracy": 0.92}},
                "comparison": {"mean+floor": {"weights": {"xception": 1.0}, "val": {"auc": 0.99}, "test": {"auc": 0.98}}},
                "best_member": {"test": {"key": "xception", "auc": 0.975}}}
    (tmp_path / "ensemble.json").write_text(json.dumps(ensemble))
    assert "minus its best member" not in card.main(tmp_path)      # an older manifest: no sentence
    ensemble["versus_best_member"] = {
        "test": {"best_member": "cnn_transformer", "difference": 0.0055, "ci90": [0.0031, 0.0079]},
        "cross_dataset": {"best_member": "swin", "difference": -0.1042, "ci90": [-0.151, -0.0577]}}
    (tmp_path / "ensemble.json").write_text(json.dumps(ensemble))
    text = card.main(tmp_path)
    assert ("test +0.0055 [+0.0031, +0.0079] against `cnn_transformer`; "
            "FFHQ/StyleGAN2 -0.1042 [-0.1510, -0.0577] against `swin`.") in text
    assert "Against the best member that votes" not in text
    ensemble["versus_best_voter"] = {
        "test": {"best_member": "cnn_transformer", "difference": 0.0055, "ci90": [0.0031, 0.0079]},
        "cross_dataset": {"best_member": "cnn_transformer", "difference": -0.0126, "ci90": [-0.03, 0.004]}}
    (tmp_path / "ensemble.json").write_text(json.dumps(ensemble))
    assert ("`swin`. Against the best member that votes: FFHQ/StyleGAN2 -0.0126 [-0.0300, +0.0040] against "
            "`cnn_transformer`.") in card.main(tmp_path)        # only the sets where the two differ
