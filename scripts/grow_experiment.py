"""bert2BERT on CPU (issue 15): does continued MLM pre-training of an FPI/AKI-grown tiny BERT reach the small
model's loss in fewer steps than the same large model from random initialization? (docs/compression.md)

    python scripts/grow_experiment.py [--out runs/grow_experiment] [--small_steps 600] [--large_steps 600] \\
        [--grow_to emb_dim=128,num_heads=8,mlp_dim=256,num_encoder_layers=4] [--docs]

1. `plmjax train` the tiny BERT MLM recipe (gin_configs/experiments/tiny_bert_mlm.gin) for --small_steps;
2. `plmjax convert --grow fpi|aki` it to --grow_to;
3. `plmjax train` the large config three times, with the same data, schedule and seed: from the FPI checkpoint,
   from the AKI checkpoint (`train.init_checkpoint`) and from random initialization;
4. every run's held-out MLM loss (the trainer's eval every --eval_every steps, the same --eval_batches batches each
   time; the grown checkpoints are also evaluated before their first step) against the small model's final loss:
   the first step at or below it, steps saved = scratch's - grown's, in <out>/results.md and <out>/loss_curves.png
   (--docs: also docs/compression_files/grow_experiment.png). Finished runs are reused. The FLOPs ratio assumes
   the recipe's 32 tokens and 4,096-piece vocabulary.

Measured (docs/compression.md): 504 s wall, 433 s CPU on 2 shared Zen 4 cores.
"""
import argparse
import json
import os
import shutil
import time

RECIPE = 'gin_configs/experiments/tiny_bert_mlm.gin'


def first_step_reaching(steps, losses, target):
    """The first step whose loss is at or below `target` (steps ascending), or None if none is."""
    return next((step for step, loss in zip(steps, losses) if loss <= target), None)


def steps_saved(scratch, grown, horizon: int, cost: float = 0.0) -> str:
    """Scratch's steps - (the grown run's + `cost`) and that share of scratch's, as text; scratch None (not reached
    within `horizon` steps) gives lower bounds, grown None '-'."""
    if grown is None:
        return '-'
    if scratch is None:
        return f'> {horizon - grown - cost:.0f} (> {(horizon - grown - cost) / horizon:.0%})'
    return f'{scratch - grown - cost:.0f} ({(scratch - grown - cost) / scratch:.0%})'


def train_flops_per_token(config, length: int) -> float:
    """6 x the multiply-adds a token goes through (Kaplan et al.): the layers' projections, attention over
    `length` positions, the MLM head's transform and its tied vocabulary projection."""
    inner = config.num_heads * config.head_dim
    per_layer = 4 * config.emb_dim * inner + 2 * config.emb_dim * config.mlp_dim + 2 * length * inner
    return 6.0 * (config.num_encoder_layers * per_layer + config.emb_dim ** 2 + config.vocab_size * config.emb_dim)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='runs/grow_experiment')
    parser.add_argument('--small_steps', type=int, default=600)
    parser.add_argument('--large_steps', type=int, default=600)
    parser.add_argument('--grow_to', default='emb_dim=128,num_heads=8,mlp_dim=256,num_encoder_layers=4')
    parser.add_argument('--learning_rate', type=float, default=3e-3, help="every run's peak (the recipe's)")
    parser.add_argument('--eval_every', type=int, default=20)
    parser.add_argument('--eval_batches', type=int, default=5)
    parser.add_argument('--threads', type=int, default=1, help='XLA CPU threads (1: share the machine)')
    parser.add_argument('--docs', action='store_true', help='also write docs/compression_files/grow_experiment.png')
    args = parser.parse_args()
    if args.threads == 1:  # before jax is imported
        os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen=false '
                                   'intra_op_parallelism_threads=1').strip()
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    from plmjax import cli, launch
    from plmjax.models import config as config_lib
    from plmjax.train import metrics as metrics_lib

    start = time.time()
    sizes = dict((k, int(v)) for k, v in (item.split('=') for item in args.grow_to.split(',')))
    # a small-model step's share of a large one's cost (before any gin parse binds tiny_encoder's fields)
    ratio = train_flops_per_token(config_lib.tiny_encoder(vocab_size=4096), 32) / train_flops_per_token(
        config_lib.tiny_encoder(vocab_size=4096, **sizes), 32)
    common = ['--gin_param=train.progress = False', f'--gin_param=NUM_STEPS = {args.small_steps}',
              f'--gin_param=LEARNING_RATE = {args.learning_rate}', f'--gin_param=train.eval_every = {args.eval_every}',
              f'--gin_param=train.eval_batches = {args.eval_batches}', '--gin_param=train.log_every = 10']
    large = [f'--gin_param=tiny_encoder.{name} = {value}' for name, value in sizes.items()]
    large_steps = [f'--gin_param=NUM_STEPS = {args.large_steps}', f'--gin_param=train.checkpoint_every = '
                   f'{args.large_steps}']
    runs = {'small': common, 'scratch': common + large + large_steps}
    for method in ('fpi', 'aki'):
        runs[method] = runs['scratch'] + [f"--gin_param=train.init_checkpoint = '{args.out}/grown_{method}'"]
    start_loss = {}
    for name, flags in runs.items():
        model_dir = os.path.join(args.out, name)
        if name in ('fpi', 'aki'):
            grown = os.path.join(args.out, f'grown_{name}')
            if not os.path.isdir(grown):
                _check(cli.main(['convert', '--grow', name, '--model_dir', os.path.join(args.out, 'small'),
                                 '--out', grown, '--grow_to', args.grow_to]), 'convert', grown)
            launch.parse_gin([RECIPE], [f.split('=', 1)[1] for f in flags], clear=True)
            # batches of 32, as the trainer's eval (train.eval_batches of them)
            start_loss[name] = launch.evaluate(grown, eval_batches=args.eval_batches, batch_size=32)['loss']
        if os.path.exists(os.path.join(model_dir, 'summary.json')):
            print(f'{model_dir}: finished before, reused.', flush=True)
            continue
        shutil.rmtree(model_dir, ignore_errors=True)  # an unfinished run starts over (its flags may have changed)
        _check(cli.main(['train', f'--gin_file={RECIPE}', f'--model_dir={model_dir}', *flags]), 'train', model_dir)

    curves = {}
    for name in runs:
        rows = [r for r in metrics_lib.read_metrics(os.path.join(args.out, name, 'metrics.jsonl'))
                if r['split'] == 'validation']
        curves[name] = ([0] if name in start_loss else []) + [r['step'] for r in rows], \
            ([start_loss[name]] if name in start_loss else []) + [r['loss'] for r in rows]
    target = curves['small'][1][-1]  # the small model's final held-out loss
    goal = curves['scratch'][1][-1]  # the large model's own final loss from scratch
    reach = {name: first_step_reaching(*curves[name], target) for name in ('scratch', 'fpi', 'aki')}
    lines = [f'Small model ({args.small_steps} steps) final held-out MLM loss: {target:.4f}; the large model from '
             f'scratch after {args.large_steps} steps: {goal:.4f}. A small-model step costs {ratio:.2f} of a '
             'large one (training FLOPs).', '',
             '| large model from | loss at step 0 | steps to the small model\'s loss | steps saved | '
             'saved, counting the small model\'s training | steps to scratch\'s final loss | final loss |',
             '|---|---|---|---|---|---|---|']
    paid = args.small_steps * ratio  # the small model's training in large-model steps
    for name in ('scratch', 'fpi', 'aki'):
        steps, losses = curves[name]
        at, grown = reach[name], name != 'scratch'
        lines.append(
            f"| {dict(scratch='random init', fpi='FPI growth', aki='AKI growth')[name]} | "
            f"{f'{losses[0]:.4f}' if grown else '-'} | {at if at is not None else f'not in {args.large_steps}'} | "
            f"{steps_saved(reach['scratch'], at, args.large_steps) if grown else '-'} | "
            f"{steps_saved(reach['scratch'], at, args.large_steps, paid) if grown else '-'} | "
            f"{first_step_reaching(steps, losses, goal)} | {losses[-1]:.4f} |")
    table = '\n'.join(lines)
    with open(os.path.join(args.out, 'results.md'), 'w') as f:
        f.write(table + '\n')
    pngs = [os.path.join(args.out, 'loss_curves.png')] + (
        [os.path.join('docs', 'compression_files', 'grow_experiment.png')] if args.docs else [])
    _plot(curves, reach, target, args, pngs)
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
        json.dump({'curves': curves, 'target': target, 'reach': reach, 'flops_ratio': ratio}, f, indent=1)
    print('\n' + table + f'\n\nPlot: {", ".join(pngs)}; wall time {time.time() - start:.0f} s.')


def _check(status, command, where):
    if status:
        raise SystemExit(f'plmjax {command} failed for {where} (status {status}); see its message above.')


def _plot(curves, reach, target, args, pngs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(8, 4.8), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    names = {'small': f'small (64 wide, 2 layers), {args.small_steps} steps', 'scratch': 'large from random init',
             'fpi': 'large grown by FPI', 'aki': 'large grown by AKI'}
    colors = {'small': 'tab:gray', 'scratch': 'tab:red', 'fpi': 'tab:blue', 'aki': 'tab:green'}
    for name, (steps, losses) in curves.items():
        axes.plot(steps, losses, color=colors[name], label=names[name], linestyle=':' if name == 'small' else '-')
        if reach.get(name) is not None:
            axes.axvline(reach[name], color=colors[name], alpha=0.4, linewidth=1)
    axes.axhline(target, color='black', linestyle='--', linewidth=1, label=f"small model's final loss {target:.3f}")
    axes.set_xlabel('training step (each run from its own step 0)')
    axes.set_ylabel(f'held-out MLM loss ({args.eval_batches} batches)')
    axes.set_title(f'bert2BERT, tiny BERT MLM on the embedded corpus\nlarge: {args.grow_to}', fontsize=10)
    axes.set_ylim(min(min(losses) for _, losses in curves.values()) - 0.1,
                  max(max(losses) for _, losses in curves.values()) + 0.1)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    for png in pngs:
        os.makedirs(os.path.dirname(png), exist_ok=True)
        figure.savefig(png, format='png')


if __name__ == '__main__':
    main()
