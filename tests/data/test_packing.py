"""The packing feature converters (`make_feature_converter(family, pack=True)`, seqio's packing) on hand examples."""
import numpy as np
import pytest
import tensorflow as tf

from plmjax.data import feature_converters


def _convert(family, examples, lengths, pack=True):
    names = list(examples[0])
    ds = tf.data.Dataset.from_generator(
        lambda: iter(examples), output_signature={k: tf.TensorSpec([None], tf.int32) for k in names})
    rows = list(feature_converters.make_feature_converter(family, pack=pack)(ds, lengths).as_numpy_iterator())
    return {k: np.stack([row[k] for row in rows]).tolist() for k in rows[0]}


def test_decoder_packing_by_hand():
    """[3 4 5] and [6 7] share a row of 8; [8 9 10 11] does not fit after them and starts the next row. Each
    segment's inputs are its own targets shifted right with 0 first; positions restart at 0."""
    examples = [{"targets": np.array(t, np.int32)} for t in ([3, 4, 5], [6, 7], [8, 9, 10, 11])]
    got = _convert("decoder", examples, {"targets": 8})
    assert got == {
        "decoder_target_tokens": [[3, 4, 5, 6, 7, 0, 0, 0], [8, 9, 10, 11, 0, 0, 0, 0]],
        "decoder_input_tokens": [[0, 3, 4, 0, 6, 0, 0, 0], [0, 8, 9, 10, 0, 0, 0, 0]],
        "decoder_loss_weights": [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]],
        "decoder_segment_ids": [[1, 1, 1, 2, 2, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]],
        "decoder_positions": [[0, 1, 2, 0, 1, 0, 0, 0], [0, 1, 2, 3, 0, 0, 0, 0]],
    }


def test_encoder_decoder_packing_by_hand():
    examples = [{"inputs": np.array(i, np.int32), "targets": np.array(t, np.int32)}
                for i, t in (([3, 4, 5], [8, 9]), ([6, 7], [10, 11, 12]))]
    got = _convert("encoder_decoder", examples, {"inputs": 8, "targets": 6})
    assert got == {
        "encoder_input_tokens": [[3, 4, 5, 6, 7, 0, 0, 0]],
        "encoder_segment_ids": [[1, 1, 1, 2, 2, 0, 0, 0]],
        "encoder_positions": [[0, 1, 2, 0, 1, 0, 0, 0]],
        "decoder_target_tokens": [[8, 9, 10, 11, 12, 0]],
        "decoder_input_tokens": [[0, 8, 0, 10, 11, 0]],
        "decoder_loss_weights": [[1, 1, 1, 1, 1, 0]],
        "decoder_segment_ids": [[1, 1, 2, 2, 2, 0]],
        "decoder_positions": [[0, 1, 0, 1, 2, 0]],
    }


def test_prefix_lm_packing_by_hand():
    """Each segment is its inputs then its targets; the prefix (bidirectional) mask and the loss are per segment."""
    examples = [{"inputs": np.array(i, np.int32), "targets": np.array(t, np.int32)}
                for i, t in (([3, 4], [5]), ([6], [7, 8]))]
    got = _convert("prefix_lm", examples, {"inputs": 4, "targets": 4})
    assert got["decoder_target_tokens"] == [[3, 4, 5, 6, 7, 8, 0, 0]]
    assert got["decoder_input_tokens"] == [[0, 3, 4, 0, 6, 7, 0, 0]]
    assert got["decoder_segment_ids"] == [[1, 1, 1, 2, 2, 2, 0, 0]]
    assert got["decoder_positions"] == [[0, 1, 2, 0, 1, 2, 0, 0]]
    assert got["decoder_loss_weights"] == [[0, 0, 1, 0, 1, 1, 0, 0]]  # the targets only
    # seqio: the prefix and the position that reads its last token attend bidirectionally
    assert got["decoder_causal_attention"] == [[1, 1, 1, 1, 1, 0, 0, 0]]


def test_unpacked_converters_unchanged_by_default():
    examples = [{"targets": np.array(t, np.int32)} for t in ([3, 4, 5], [6, 7])]
    got = _convert("decoder", examples, {"targets": 4}, pack=False)
    assert got == {"decoder_target_tokens": [[3, 4, 5, 0], [6, 7, 0, 0]],
                   "decoder_input_tokens": [[0, 3, 4, 5], [0, 6, 7, 0]],
                   "decoder_loss_weights": [[1, 1, 1, 0], [1, 1, 0, 0]]}


@pytest.mark.parametrize("family", ["encoder", "encoder_sentence_pair", "classification"])
def test_families_that_do_not_pack_say_so(family):
    with pytest.raises(ValueError, match="does not pack.*train.pack = False"):
        feature_converters.make_feature_converter(family, pack=True)
