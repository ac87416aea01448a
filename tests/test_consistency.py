"""The training engine's consistency term (issue 11): two views of a face should score alike."""
import math

import pytest
import torch

from training_engine import Trainer, build_parser


def test_consistency_is_the_symmetric_kl_of_the_two_views():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-3.0, 4.0]])
    z1, z2 = logits[:, 0], logits[:, 1]
    p1, p2 = torch.sigmoid(z1), torch.sigmoid(z2)

    def kl(p, q):
        return p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))

    expected = (kl(p1, p2) + kl(p2, p1)).mean()
    assert math.isclose(float(Trainer.consistency_loss(logits)), float(expected), rel_tol=1e-5)


def test_consistency_is_zero_for_agreeing_views_and_grows_with_disagreement():
    agree = torch.tensor([[1.5, 1.5], [-2.0, -2.0]])
    assert float(Trainer.consistency_loss(agree)) == 0.0
    small = Trainer.consistency_loss(torch.tensor([[0.0, 0.5]]))
    large = Trainer.consistency_loss(torch.tensor([[0.0, 2.0]]))
    assert 0 < float(small) < float(large)
    # Both confidently fake: the logits differ by 2 but the probabilities hardly do, so it costs less
    # than the same logit gap across the decision boundary.
    confident = Trainer.consistency_loss(torch.tensor([[6.0, 8.0]]))
    assert float(confident) < float(large) / 20


def test_consistency_pulls_the_views_together():
    logits = torch.tensor([[2.0, -1.0]], requires_grad=True)
    Trainer.consistency_loss(logits).backward()
    assert logits.grad[0, 0] > 0 > logits.grad[0, 1]     # descent lowers the high view, raises the low one


def test_three_views_average_over_pairs():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    pairs = [Trainer.consistency_loss(logits[:, [i, j]]) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert math.isclose(float(Trainer.consistency_loss(logits)), float(sum(pairs) / 3), rel_tol=1e-6)


def test_relative_consistency_is_the_share_of_variance_within_faces():
    logits = torch.tensor([[2.0, 1.0], [-1.0, -2.0], [0.0, 0.0]])
    within = ((0.5 ** 2) + (0.5 ** 2) + 0.0) / 3                  # each face's views around their mean
    total = float(logits.flatten().var(unbiased=False))
    assert math.isclose(float(Trainer.relative_consistency_loss(logits)), within / total, rel_tol=1e-4)
    assert float(Trainer.relative_consistency_loss(torch.tensor([[1.0, 1.0], [-3.0, -3.0]]))) == 0.0
    # Faces that differ no more than their views: everything is within faces.
    assert math.isclose(float(Trainer.relative_consistency_loss(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))), 1.0,
                        rel_tol=1e-4)


def test_relative_consistency_cannot_be_lowered_by_shrinking_the_logits():
    """The KL form can (session 7: the model's temperature fell to 0.62 and calibration undid it)."""
    logits = torch.tensor([[2.0, 1.2], [-1.5, -0.5], [3.0, 2.0], [-2.0, -2.4]])
    relative = float(Trainer.relative_consistency_loss(logits))
    for factor in (0.25, 4.0):
        assert math.isclose(float(Trainer.relative_consistency_loss(logits * factor)), relative, rel_tol=1e-4)
    assert float(Trainer.consistency_loss(logits * 0.25)) < float(Trainer.consistency_loss(logits)) / 4
    scaled = (logits * 1.0).requires_grad_(True)
    Trainer.relative_consistency_loss(scaled).backward()
    # No gradient along the logits themselves (the direction of a rescaling).
    assert abs(float((scaled.grad * logits).sum())) < 1e-5


def test_relative_consistency_pulls_a_face_s_views_together():
    logits = torch.tensor([[2.0, 0.0], [-2.0, -2.0], [3.0, 3.0]], requires_grad=True)
    Trainer.relative_consistency_loss(logits).backward()
    assert logits.grad[0, 0] > 0 > logits.grad[0, 1]


def test_options_that_need_two_views_refuse_one(tmp_path):
    # a single view has nothing to share or agree on: refusing beats silently training without it
    for extra in (["--consistency", "1", "--views", "1"], ["--views-differ", "framing"], ["--views-differ", "nudge"]):
        args = build_parser("cnn_transformer").parse_args(
            ["--data-dir", str(tmp_path), "--output-dir", str(tmp_path)] + extra)
        with pytest.raises(SystemExit, match="two views"):
            Trainer(args)
    args = build_parser("cnn_transformer").parse_args(
        ["--data-dir", str(tmp_path), "--output-dir", str(tmp_path), "--views-differ", "framing", "--views", "2"])
    assert Trainer(args).views == 2
