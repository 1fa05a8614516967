"""`plmjax infer` end to end on tiny converted GPT-2, T5 and BART checkpoints with a word-level tokenizer: the
outputs are `transformers`' generate's for the same inputs (greedy and beam), in order, and each bad input gives
one clear message."""
import json

import numpy as np
import pytest

from plmjax import cli, convert

torch = pytest.importorskip('torch')
WORDS = [f'w{k}' for k in range(3, 99)]  # the tiny models' 99 ids: [PAD]=0, </s>=1, [UNK]=2, then words
INPUTS = ['w5 w9 w17 w33', 'w40 w41', 'w7 w8 w9 w10 w11 w12 w13', 'w90']


def _checkpoint(path, name):
    import tokenizers
    from plmjax.convert import hf, parity
    torch.manual_seed(0)
    hf_model = parity.tiny_hf_model(name)
    with torch.no_grad():  # make </s> likely in some contexts: outputs end at different lengths
        hf_model.get_output_embeddings().weight[1] *= 6.0
    state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    converted = hf.from_hf(hf_model.config.to_dict(), state)
    convert.save_checkpoint(str(path), converted.architecture, converted.config, converted.params,
                            hf_family=converted.family)
    vocab = {'[PAD]': 0, '</s>': 1, '[UNK]': 2, **{w: k for k, w in enumerate(WORDS, 3)}}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='[UNK]'))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(['[PAD]', '</s>', '[UNK]'])
    tokenizer.decoder = tokenizers.decoders.WordPiece(prefix='##')  # joins words with spaces
    if hf_model.config.is_encoder_decoder:  # inputs end with </s>, as T5's and BART's tokenizers do
        tokenizer.post_processor = tokenizers.processors.TemplateProcessing(single='$A </s>',
                                                                            special_tokens=[('</s>', 1)])
    (path / 'tokenizer').mkdir()
    tokenizer.save(str(path / 'tokenizer' / 'tokenizer.json'))
    (path / 'tokenizer' / 'special_tokens_map.json').write_text(json.dumps({'eos_token': '</s>',
                                                                             'pad_token': '[PAD]'}))
    return hf_model, tokenizer


def _hf_outputs(hf_model, tokenizer, new, **kwargs):
    """generate() one input at a time (no padding at all)."""
    outputs = []
    for text in INPUTS:
        ids = torch.tensor([tokenizer.encode(text).ids])
        extra = {}
        if hf_model.config.is_encoder_decoder:  # plmjax infer: 0 (T5's pad), a converted BART its </s>
            extra['decoder_start_token_id'] = 1 if hf_model.config.model_type == 'bart' else 0
        with torch.no_grad():
            out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, eos_token_id=1,
                                    pad_token_id=0, forced_bos_token_id=None, forced_eos_token_id=None,
                                    no_repeat_ngram_size=0, repetition_penalty=1.0, min_new_tokens=0, **extra,
                                    **kwargs)[0].numpy()
        out = out[1:] if hf_model.config.is_encoder_decoder else out[ids.shape[1]:]
        stop = int(np.argmax(out == 1)) + 1 if (out == 1).any() else len(out)
        outputs.append(out[:stop].tolist())
    return outputs


@pytest.mark.parametrize('name', ['gpt2', 't5', 'bart'])
def test_infer_gives_generates_outputs_in_order(name, tmp_path, capsys):
    hf_model, tokenizer = _checkpoint(tmp_path / 'model', name)
    inputs = tmp_path / 'inputs.jsonl'
    inputs.write_text(''.join(json.dumps({'inputs': text}) + '\n' for text in INPUTS))
    for strategy, extra, hf_kwargs in [('greedy', [], dict(do_sample=False, num_beams=1)),
                                       ('beam', ['--num_beams', '3', '--length_penalty', '0.6'],
                                        dict(do_sample=False, num_beams=3, length_penalty=0.6))]:
        out = tmp_path / f'{strategy}.jsonl'
        assert cli.main(['infer', '--checkpoint', str(tmp_path / 'model'), '--inputs', str(inputs), '--out',
                         str(out), '--strategy', strategy, '--max_new_tokens', '8', '--batch_size', '3',
                         *extra]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r['input'] for r in rows] == INPUTS
        expected = _hf_outputs(hf_model, tokenizer, 8, **hf_kwargs)
        assert [r['tokens'] for r in rows] == expected, strategy
        assert {len(r['tokens']) for r in rows} != {8}  # </s> ended some
        for r in rows:
            shown = [t for t in r['tokens'] if t >= 3]  # special tokens are not shown
            assert r['output'] == ' '.join(WORDS[t - 3] for t in shown) and r['length'] == len(r['tokens'])
            assert r['score'] < 0
    assert 'examples' in capsys.readouterr().err


def test_each_bad_input_gives_one_clear_message(tmp_path, capsys):
    _checkpoint(tmp_path / 'model', 'gpt2')
    model = str(tmp_path / 'model')
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"inputs": "w5"}\n{"inputs": w6}\n')
    long = tmp_path / 'long.txt'
    long.write_text('w5\n' + ' '.join(['w7'] * 60) + '\n')
    cases = [(['--inputs', str(bad)], 'bad.jsonl:2'), (['--inputs', str(long)], 'input 2 is 60 tokens'),
             (['--inputs', str(long), '--strategy', 'telepathy'], "choose one of"),
             (['--inputs', str(tmp_path / 'missing.txt')], 'no such file'),
             (['--inputs', str(long), '--strategy', 'pmlm'], "holds a 'decoder' model"),
             (['--task', 'pydoc_lm'], 'no inputs'),
             (['--inputs', str(long), '--gin_param', "infer.strategy = 'telepathy'"], 'choose one of')]
    for args, message in cases:
        assert cli.main(['infer', '--checkpoint', model, *args]) == 2
        err = capsys.readouterr().err
        assert message in err and 'Traceback' not in err, (args, err)
