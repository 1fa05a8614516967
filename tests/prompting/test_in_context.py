"""In-context few-shot evaluation of decoders: the answer log-likelihoods equal transformers' GPT2LMHeadModel's on
the same random weights (converted with plmjax.convert.from_hf; both in float64, as the model parity tests), the
rows hold exactly prompt + answer, demonstrations are deterministic for a seed and never the query itself, and
`evaluate` runs from a plmjax checkpoint (and gin) on real SST-2 rows."""
import gin
import jax
import numpy as np
import pytest

import plmjax.tasks  # noqa: F401  registers the tasks whose examples the prompts read
from plmjax import convert, launch, models
from plmjax.convert import common
from plmjax.data import bpe
from plmjax.prompting import in_context, templates

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SST2 = templates.PROMPT_TASKS["glue_sst2_tsv"]
POOL = [{"sentence": s, "label": i % 2, "idx": i} for i, s in enumerate(
    ["a gorgeous , witty film", "dull and lifeless", "one of the year 's best", "a mess", "charming throughout",
     "tedious beyond words", "sharp and funny", "i wanted my money back"])]


@pytest.fixture(scope="module")
def vocab():
    try:
        return bpe.ByteLevelBpeVocabulary()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_demonstrations_are_seeded_and_never_the_query():
    query = POOL[3]
    draws = [in_context.sample_demonstrations(POOL, query, 4, seed=7, query_index=i, text_fields=("sentence",))
             for i in range(50)]
    assert all(query not in d and len({x["idx"] for x in d}) == 4 for d in draws)
    again = in_context.sample_demonstrations(POOL, query, 4, seed=7, query_index=5, text_fields=("sentence",))
    assert again == draws[5]  # deterministic for (seed, query index)
    other_seed = [in_context.sample_demonstrations(POOL, query, 4, seed=8, query_index=i, text_fields=("sentence",))
                  for i in range(50)]
    assert other_seed != draws and len({tuple(x["idx"] for x in d) for d in draws}) > 10
    with pytest.raises(ValueError, match="only 7 other examples"):
        in_context.sample_demonstrations(POOL, query, 8, seed=0, query_index=0, text_fields=("sentence",))


def test_rows_hold_prompt_then_answer(vocab):
    demos = [POOL[:2], POOL[2:5]]
    rows = in_context.encode_rows(vocab, SST2, [POOL[5], POOL[6]], demos, max_length=128)
    assert rows.tokens.shape[0] == 4 and rows.num_demonstrations.tolist() == [2, 3]  # 2 queries x 2 labels
    longest = max(int(np.nonzero(m)[0][-1]) + 1 for m in rows.answer_mask)
    assert rows.tokens.shape[1] == 16 * -(-longest // 16)  # padded to the next multiple of 16: one compiled shape
    for row in range(4):
        query, label = POOL[5 + row // 2], row % 2
        text = in_context.build_prompt(SST2, demos[row // 2], query) + SST2.answers[label]
        length = int(np.nonzero(rows.answer_mask[row])[0][-1]) + 1
        assert vocab.decode(rows.tokens[row, :length].tolist()) == text
        assert vocab.decode(rows.tokens[row][rows.answer_mask[row] > 0].tolist()) == SST2.answers[label]
    assert in_context.build_prompt(SST2, demos[0], POOL[5]) == (
        "Review: a gorgeous , witty film\nSentiment: negative\n\nReview: dull and lifeless\nSentiment: positive\n\n"
        "Review: tedious beyond words\nSentiment:")
    short = in_context.encode_rows(vocab, SST2, [POOL[5]], [POOL[:4]], max_length=24)  # demonstrations dropped
    assert short.num_demonstrations.tolist() == [1] and short.tokens.shape[1] <= 24


@pytest.fixture
def float64():
    with jax.enable_x64(True):
        yield


def test_answer_log_likelihoods_equal_gpt2lmheadmodel(vocab, float64):
    hf_config = transformers.GPT2Config(vocab_size=vocab.vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(hf_config).double().eval()
    with torch.no_grad():  # weights far from the init, so every layer matters
        for tensor in reference.parameters():
            tensor.add_(torch.randn_like(tensor) * 0.2)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    converted = convert.from_hf(reference.config.to_dict(), state, dtype="float64")
    queries = [POOL[1], POOL[6], POOL[7]]
    demos = [in_context.sample_demonstrations(POOL, q, 2, seed=0, query_index=i, text_fields=("sentence",))
             for i, q in enumerate(queries)]
    rows = in_context.encode_rows(vocab, SST2, queries, demos, max_length=128)
    module = models.build_model("decoder", converted.config)
    sums, counts = in_context.answer_log_likelihoods(module, converted.params, rows, batch_size=4)  # last batch padded
    for row, (tokens, mask) in enumerate(zip(rows.tokens, rows.answer_mask)):
        answer = np.nonzero(mask)[0]
        ids = torch.tensor(tokens[None, :answer[-1] + 1].astype(np.int64))
        with torch.no_grad():
            log_probs = torch.log_softmax(reference(ids).logits[0], dim=-1).numpy()
        expected = sum(log_probs[t - 1, tokens[t]] for t in answer)  # position t - 1 predicts token t
        np.testing.assert_allclose(sums[row], expected, rtol=1e-10, atol=1e-10)
        assert counts[row] == len(answer)


def test_evaluate_from_a_checkpoint_on_real_sst2(vocab, shared_data, tmp_path):
    config = models.tiny_decoder(vocab_size=vocab.vocab_size, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                                 max_length=256)
    params = common.init_params("decoder", config, 0)
    convert.save_checkpoint(str(tmp_path), "decoder", config, params)
    results = in_context.evaluate(str(tmp_path), "glue_sst2_tsv", k=2, max_examples=6, batch_size=4)
    assert results["num_examples"] == 6 and results["mean_demonstrations"] == 2.0
    assert results["predictions"].tolist() == results["scores"].argmax(-1).tolist()
    assert results["accuracy"] == pytest.approx(100 * np.mean(results["predictions"] == results["targets"]))
    with gin.unlock_config():
        gin.parse_config(["in_context_evaluate.task = 'glue_sst2_tsv'", "in_context_evaluate.k = 2",
                          "in_context_evaluate.normalize = 'mean'", "in_context_evaluate.max_examples = 6"])
    try:
        mean = launch.in_context_evaluate(str(tmp_path))
    finally:
        gin.clear_config()
    assert mean["scores"].shape == (6, 2) and mean["targets"].tolist() == results["targets"].tolist()
