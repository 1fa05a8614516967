"""bert2BERT on CPU (issue 15): does continued MLM pre-training of an FPI/AKI-grown tiny BERT reach the small
model's loss in fewer steps than the same large model from random initialization? (docs/compression.md)

    python scripts/grow_experiment.py [--out runs/grow_experiment] [--small_steps 600] [--large_steps 600] \\
        [--grow_to emb_dim=128,num_heads=8,mlp_dim=256,num_encoder_layers=4] [--docs]

1. `plmjax train` the tiny BERT MLM recipe (gin_configs/experiments/tiny_bert_mlm.gin) for --small_steps;
2. `plmjax convert --grow fpi|aki` it to --grow_to;
3. `plmjax train` the large config four times, with the same data, schedule and seed: from the FPI checkpoint,
   from the AKI checkpoint (`train.init_checkpoint`), from random initialization, and from the AKI checkpoint with
   bert2BERT's two-stage schedule (`train.two_stage`: sub-models of --block_layers, 2 x --block_layers, ...
   layers for the first --stage1_steps steps), whose steps are counted in full-model steps of training FLOPs;
4. every run's held-out MLM loss (the trainer's eval every --eval_every steps, the same --eval_batches batches each
   time; the grown checkpoints are also evaluated before their first step) against the small model's final loss:
   the first step at or below it, steps saved = scratch's - grown's, in <out>/results.md and <out>/loss_curves.png
   (--docs: also docs/compression_files/grow_experiment.png). Finished runs are reused. The FLOPs ratio assumes
   the recipe's 32 tokens and 4,096-piece vocabulary.

Measured (docs/compression.md): 504 s wall, 433 s CPU on 2 shared Zen 4 cores; the two-stage run alone (the
others reused) 165 s wall, 115 s CPU.
"""
import argparse
import json
import os
import shutil
import time

RECIPE = 'gin_configs/experiments/tiny_bert_mlm.gin'
LABELS = dict(scratch='random init', fpi='FPI growth', aki='AKI growth', two_stage='AKI growth, two-stage')


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


def _multiply_adds(config, length: int) -> tuple[int, int, int]:
    """A token's multiply-adds in (one layer: projections and attention over `length` positions, the MLM head's
    transform, its tied vocabulary projection)."""
    inner = config.num_heads * config.head_dim
    per_layer = 4 * config.emb_dim * inner + 2 * config.emb_dim * config.mlp_dim + 2 * length * inner
    return per_layer, config.emb_dim ** 2, config.vocab_size * config.emb_dim


def train_flops_per_token(config, length: int) -> float:
    """6 x the multiply-adds a token goes through (Kaplan et al.: 2 forward, 4 backward)."""
    layer, transform, vocab = _multiply_adds(config, length)
    return 6.0 * (config.num_encoder_layers * layer + transform + vocab)


def stage1_flops_per_token(config, length: int, depth: float, block: int) -> float:
    """A two-stage step on the sub-model of `depth` layers (the mean depth of several steps: linear): forward
    through all of it (2x), backward (4x) through its top `block` layers and the head's transform only; the tied
    vocabulary projection is an embedding, frozen in stage 1: its backward is the input gradient alone (2x)."""
    layer, transform, vocab = _multiply_adds(config, length)
    return 2.0 * (depth * layer + transform + vocab) + 4.0 * (block * layer + transform) + 2.0 * vocab


def full_model_steps(train_rows, stage1_steps: int, stage1_cost) -> dict[int, float]:
    """{step: the training FLOPs a two-stage run has spent by then, in full-model steps}, from its train rows (each
    the mean over the steps since the previous row; the stage boundary a row boundary): a stage-1 step costs
    stage1_cost(its sub-model's layers), linear in them, so the rows' mean depth gives the sum; a stage-2 step 1."""
    spent, last, steps = 0.0, 0, {0: 0.0}
    for row in sorted(train_rows, key=lambda r: r['step']):
        count = row['step'] - last
        spent += count * (stage1_cost(row['sub_model_layers']) if row['step'] <= stage1_steps else 1.0)
        steps[row['step']], last = spent, row['step']
    return steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='runs/grow_experiment')
    parser.add_argument('--small_steps', type=int, default=600)
    parser.add_argument('--large_steps', type=int, default=600)
    parser.add_argument('--grow_to', default='emb_dim=128,num_heads=8,mlp_dim=256,num_encoder_layers=4')
    parser.add_argument('--learning_rate', type=float, default=3e-3, help="every run's peak (the recipe's)")
    parser.add_argument('--eval_every', type=int, default=20)
    parser.add_argument('--eval_batches', type=int, default=5)
    parser.add_argument('--block_layers', type=int, default=2, help="two-stage run: l_b (the small model's depth)")
    parser.add_argument('--stage1_steps', type=int, default=200, help='two-stage run: stage 1 (a multiple of 10)')
    parser.add_argument('--threads', type=int, default=1, help='XLA CPU threads (1: share the machine)')
    parser.add_argument('--docs', action='store_true', help='also write docs/compression_files/grow_experiment.png')
    args = parser.parse_args()
    if args.stage1_steps % 10:  # the train rows (every 10 steps) give the sampled depths
        parser.error(f'--stage1_steps={args.stage1_steps}: use a multiple of 10 (train.log_every).')
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
    large_config = config_lib.tiny_encoder(vocab_size=4096, **sizes)
    full = train_flops_per_token(large_config, 32)
    ratio = train_flops_per_token(config_lib.tiny_encoder(vocab_size=4096), 32) / full
    stage1_cost = lambda depth: stage1_flops_per_token(large_config, 32, depth, args.block_layers) / full  # noqa: E731
    common = ['--gin_param=train.progress = False', f'--gin_param=NUM_STEPS = {args.small_steps}',
              f'--gin_param=LEARNING_RATE = {args.learning_rate}', f'--gin_param=train.eval_every = {args.eval_every}',
              f'--gin_param=train.eval_batches = {args.eval_batches}', '--gin_param=train.log_every = 10']
    large = [f'--gin_param=tiny_encoder.{name} = {value}' for name, value in sizes.items()]
    large_steps = [f'--gin_param=NUM_STEPS = {args.large_steps}', f'--gin_param=train.checkpoint_every = '
                   f'{args.large_steps}']
    runs = {'small': common, 'scratch': common + large + large_steps}
    for method in ('fpi', 'aki'):
        runs[method] = runs['scratch'] + [f"--gin_param=train.init_checkpoint = '{args.out}/grown_{method}'"]
    runs['two_stage'] = runs['aki'] + ['--gin_param=train.two_stage = @two_stage()',
                                       f'--gin_param=two_stage.block_layers = {args.block_layers}',
                                       f'--gin_param=two_stage.stage1_steps = {args.stage1_steps}']
    start_loss = {}
    for name, flags in runs.items():
        model_dir = os.path.join(args.out, name)
        if name == 'two_stage':
            start_loss[name] = start_loss['aki']  # the same AKI checkpoint
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
        records = metrics_lib.read_metrics(os.path.join(args.out, name, 'metrics.jsonl'))
        rows = [r for r in records if r['split'] == 'validation']
        curves[name] = ([0] if name in start_loss else []) + [r['step'] for r in rows], \
            ([start_loss[name]] if name in start_loss else []) + [r['loss'] for r in rows]
        if name == 'two_stage':  # its steps counted in full-model steps of training FLOPs
            spent = full_model_steps([r for r in records if r['split'] == 'train'], args.stage1_steps, stage1_cost)
            raw = dict(zip((spent[step] for step in curves[name][0]), curves[name][0]))  # FLOPs step -> own step
            curves[name] = [spent[step] for step in curves[name][0]], curves[name][1]
    target = curves['small'][1][-1]  # the small model's final held-out loss
    goal = curves['scratch'][1][-1]  # the large model's own final loss from scratch
    reach = {name: first_step_reaching(*curves[name], target) for name in ('scratch', 'fpi', 'aki', 'two_stage')}
    stage1 = spent[args.stage1_steps]
    lines = [f'Small model ({args.small_steps} steps) final held-out MLM loss: {target:.4f}; the large model from '
             f'scratch after {args.large_steps} steps: {goal:.4f}. A small-model step costs {ratio:.2f} of a '
             f'large one (training FLOPs). Two-stage: l_b = {args.block_layers}, stage 1 = {args.stage1_steps} '
             f'steps costing {stage1:.1f} large-model steps ({stage1 / args.stage1_steps:.2f} each); its step '
             f'columns count large-model steps of FLOPs (the run\'s own steps in brackets).', '',
             '| large model from | loss at step 0 | steps to the small model\'s loss | steps saved | '
             'saved, counting the small model\'s training | steps to scratch\'s final loss | final loss |',
             '|---|---|---|---|---|---|---|']
    paid = args.small_steps * ratio  # the small model's training in large-model steps
    for name in ('scratch', 'fpi', 'aki', 'two_stage'):
        steps, losses = curves[name]
        at, grown, to_goal = reach[name], name != 'scratch', first_step_reaching(steps, losses, goal)
        shown = (lambda x: f'{x:.0f} [{raw[x]}]' if x is not None else 'None') if name == 'two_stage' else str
        lines.append(
            f"| {LABELS[name]} | {f'{losses[0]:.4f}' if grown else '-'} | "
            f"{shown(at) if at is not None else f'not in {args.large_steps}'} | "
            f"{steps_saved(reach['scratch'], at, args.large_steps) if grown else '-'} | "
            f"{steps_saved(reach['scratch'], at, args.large_steps, paid) if grown else '-'} | "
            f"{shown(to_goal)} | {losses[-1]:.4f} |")
    table = '\n'.join(lines)
    with open(os.path.join(args.out, 'results.md'), 'w') as f:
        f.write(table + '\n')
    pngs = [os.path.join(args.out, 'loss_curves.png')] + (
        [os.path.join('docs', 'compression_files', 'grow_experiment.png')] if args.docs else [])
    _plot(curves, reach, target, args, pngs)
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
        json.dump({'curves': curves, 'target': target, 'reach': reach, 'flops_ratio': ratio,
                   'two_stage_stage1_cost': stage1}, f, indent=1)
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
             'fpi': 'large grown by FPI', 'aki': 'large grown by AKI',
             'two_stage': f'AKI + two-stage (l_b {args.block_layers}, stage 1 {args.stage1_steps} steps), '
                          'x in full-model steps of FLOPs'}
    colors = {'small': 'tab:gray', 'scratch': 'tab:red', 'fpi': 'tab:blue', 'aki': 'tab:green',
              'two_stage': 'tab:purple'}
    for name, (steps, losses) in curves.items():
        axes.plot(steps, losses, color=colors[name], label=names[name], linestyle=':' if name == 'small' else '-')
        if reach.get(name) is not None:
            axes.axvline(reach[name], color=colors[name], alpha=0.4, linewidth=1)
    axes.axhline(target, color='black', linestyle='--', linewidth=1, label=f"small model's final loss {target:.3f}")
    axes.set_xlabel('training step of the large model (each run from its own step 0; two-stage: FLOPs)')
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
