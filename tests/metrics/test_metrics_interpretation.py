"""FLINT's interpretation metrics against loops written as the official `flint.py`
(`analyze`, `sparse_sense`, `extract_attr_class_max`)."""

import numpy as np
import pytest

from protojax.metrics import interpretation


def _logits(seed, b=40, k=10):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, k)).astype(np.float32)


def test_fidelity_and_top5_match_the_official_analyze_loop():
    h, f = _logits(0), _logits(1)
    f[:15] = h[:15] + 0.01  # some agreement
    agree = top5 = 0
    for j in range(len(h)):  # analyze(): conf_matx_hf diagonal and the argsort()[:5] test
        agree += int(h[j].argmax() == f[j].argmax())
        top5 += int(f[j].argmax() in (-1 * h[j]).argsort()[:5])
    result = interpretation.fidelity(h, f)
    assert result.per_example.shape == (40,)
    np.testing.assert_allclose(float(result.aggregate), agree / len(h), rtol=1e-6)
    top = interpretation.fidelity_top_k(h, f, k=5)
    np.testing.assert_allclose(float(top.aggregate), top5 / len(h), rtol=1e-6)
    assert agree / len(h) < top5 / len(h) < 1.0


def test_fidelity_ignores_padding_rows():
    h, f = _logits(2, b=6), _logits(3, b=6)
    f[:3] = h[:3]
    valid = np.array([True, True, True, False, False, True])
    expected = np.mean((h.argmax(1) == f.argmax(1))[valid])
    np.testing.assert_allclose(
        float(interpretation.fidelity(h, f, valid=valid).aggregate), expected
    )
    with pytest.raises(ValueError, match="same"):
        interpretation.fidelity(h, f[:, :5])


def test_conciseness_matches_sparse_sense():
    rng = np.random.default_rng(4)
    relevance = rng.normal(size=(30, 25)).astype(np.float32) * rng.uniform(0, 1, (30, 25))
    relevance[0] = -np.abs(relevance[0])  # an all-negative row: the official rule still counts
    result = interpretation.conciseness(relevance)
    for t, multiplier in enumerate(interpretation.CONCISENESS_THRESHOLDS):
        sparse = 0
        for i in range(len(relevance)):
            thresh = relevance[i].max() / multiplier
            sparse += np.sum(relevance[i] > thresh)
        np.testing.assert_allclose(float(result.aggregate[t]), sparse / len(relevance), rtol=1e-6)
    # Dividing by a positive row maximum does not change the counts.
    positive = np.abs(relevance[1:])
    normalized = positive / positive.max(1, keepdims=True)
    np.testing.assert_array_equal(
        interpretation.conciseness(normalized).per_example,
        interpretation.conciseness(positive).per_example,
    )


def test_global_relevance_is_the_mean_per_predicted_class():
    rng = np.random.default_rng(5)
    relevance = rng.uniform(-0.2, 1.0, (50, 7)).astype(np.float32)
    predicted = rng.integers(0, 3, 50)  # classes 3 and 4 never predicted
    result = interpretation.global_relevance(relevance, predicted, num_classes=5)
    for c in range(3):  # extract_attr_class_max: expl_data[pos_arr].mean(axis=0)
        np.testing.assert_allclose(
            result.relevance[c], relevance[predicted == c].mean(0), rtol=1e-5, atol=1e-7
        )
        assert result.counts[c] == np.sum(predicted == c)
    assert np.isnan(np.asarray(result.relevance[3:])).all()
