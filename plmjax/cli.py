"""`plmjax train|eval|convert ...`: flags -> gin -> a library call.

    plmjax train --gin_file=gin_configs/quickstart.gin [--gin_param='train.num_steps = 100'] [--model_dir=DIR]
    plmjax train --gin_file=gin_configs/quickstart.gin --gin.train.num_steps=100       # t5x's flag form
    plmjax eval  --gin_file=gin_configs/quickstart.gin --checkpoint=DIR
    plmjax convert --from hf --model_dir=HF_DIR --out=DIR [--verify]    # Hugging Face -> plmjax checkpoint + gin
    plmjax convert --to hf --model_dir=DIR --out=HF_DIR [--verify]      # plmjax checkpoint -> from_pretrained dir
    plmjax convert --layout scanned --model_dir=DIR --out=DIR           # the layers as one nn.scan (or unrolled)
    plmjax bench [--sizes full|tiny] [--out results.json]               # speed vs the PyTorch reference
    plmjax plan --gin_file=EXPERIMENT --topology=v5e:4x4 --mesh=data=16  # TPU memory/FLOPs by AOT compilation
    plmjax parse --checkpoint=DIR --conllu=FILE --out=DIR               # Perturbed Masking unsupervised parsing
    plmjax infer --checkpoint=DIR --inputs=FILE --strategy=beam         # generation (greedy, sample, beam)
    plmjax augment --mlm=DIR --task=SST-2 --out=DIR [--gin_param='augment.copies = 20']  # TinyBERT augmentation

A mistake a user can make (a bad gin binding, a missing file, a too-long sequence, a checkpoint of another
model) ends in one line naming the problem and the fix, exit status 2; `--traceback` shows the whole story.
`plmjax train` exit statuses (docs/reliability.md): 0 done; 2 a user error; 3 stopped at a non-finite loss or
gradient (train.nonfinite='stop'); 75 preempted (SIGTERM or Ctrl-C): the current step was checkpointed, run the
same command again to resume; 76 the preemption grace period (train.preemption_grace_s) ran out before that
checkpoint was written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys

# The environment (JAX_PLATFORMS without accelerators, TensorFlow quiet and off the GPU) is set when the package
# is imported, before this module: plmjax/__init__.py.


def _initialize_distributed(args) -> None:
    """Joins a multi-process run before anything touches the devices (CPU processes talk over gloo)."""
    import jax
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                               process_id=args.process_id)


def _user_error_types():
    from plmjax.train import checkpoint
    return (ValueError, FileNotFoundError, NotADirectoryError, KeyError, checkpoint.CheckpointMismatchError)


_IN_CONFIGURABLE = re.compile(r"In call to configurable '([^']+)'")


def _is_user_error(error: BaseException) -> bool:
    """The user error types, and a TypeError raised inside a gin configurable (a binding of the wrong type,
    `bert_base.emb_dim = 'abc'`)."""
    return isinstance(error, _user_error_types()) or (
        isinstance(error, TypeError) and _IN_CONFIGURABLE.search(str(error)) is not None)


def _one_line(error: BaseException) -> str:
    message = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError) and error.args:
        message = str(error.args[0])
    configurable = _IN_CONFIGURABLE.search(message) if isinstance(error, TypeError) else None
    # gin appends "In call to configurable ..." lines to errors raised inside configurables: not for users.
    message = "\n".join(line for line in message.splitlines() if not line.strip().startswith("In call to configurable"))
    if configurable:
        message = (f"a gin binding of {configurable.group(1)} has a value of the wrong type ({message}); check the "
                   f"{configurable.group(1)}.* bindings and --gin_param values")
    return f"{type(error).__name__}: {message}"


def _train(model_dir: str, args) -> int:
    """`plmjax train`: a preemption or a non-finite stop is an expected end with its own exit status."""
    from plmjax import launch
    from plmjax.train import checkpoint, faults
    try:
        launch.train(model_dir)
    except faults.Preempted:
        return faults.PREEMPTED_EXIT_STATUS  # the loop printed where the checkpoint is
    except checkpoint.CheckpointWriteError as error:
        if args.traceback:
            raise
        print(f"plmjax train: error: {_one_line(error)}", file=sys.stderr)
        return faults.CHECKPOINT_WRITE_FAILED_EXIT_STATUS
    except faults.NonFiniteError as error:
        if args.traceback:
            raise
        print(f"plmjax train: error: {_one_line(error)}", file=sys.stderr)
        return faults.NONFINITE_STOPPED_EXIT_STATUS
    return 0


def _add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint from or to Hugging Face")
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="from_format", choices=["hf"], help="read a Hugging Face model directory")
    direction.add_argument("--to", dest="to_format", choices=["hf"], help="write a Hugging Face model directory")
    direction.add_argument("--layout", choices=["scanned", "unrolled"], help="rewrite a plmjax checkpoint with its "
                           "layers scanned (one 'layers' subtree stacked on axis 0, scan_layers=True) or unrolled")
    p.add_argument("--model_dir", required=True, help="the directory to convert (--from hf: config.json + weights; "
                   "--to hf: a plmjax model dir, its checkpoints/ dir or one step's dir)")
    direction.add_argument("--grow", choices=["fpi", "aki"], help="bert2BERT: grow a plmjax encoder checkpoint into "
                           "a wider/deeper one (function-preserving FPI, or AKI), sizes from --grow_to")
    direction.add_argument("--extract", action="store_true", help="DynaBERT: write the sub-network of "
                           "--width_mult and --depth_mult of a plmjax encoder checkpoint as a smaller one")
    direction.add_argument("--tws", action="store_true", help="BinaryBERT: split a ternary student (a TernaryBERT "
                           "run's <model_dir>/student) into two binary weights a tensor (ternary weight splitting), "
                           "the start of binary fine-tuning (quantize = 'split_binary')")
    direction.add_argument("--rewire", action="store_true", help="DynaBERT: reorder the heads and FFN neurons of a "
                           "fine-tuned encoder_classifier checkpoint by their importance on --task's --split")
    p.add_argument("--task", default=None, help="--rewire: the labelled task whose loss gradients give importance")
    p.add_argument("--split", default="validation", help="--rewire: the split read (the released code: dev)")
    p.add_argument("--sequence_length", type=int, default=128, help="--rewire: the examples' length")
    p.add_argument("--num_batches", type=int, default=None, help="--rewire: read only this many batches of 32")
    p.add_argument("--width_mult", type=float, default=1.0, help="--extract: the share of heads and FFN neurons kept")
    p.add_argument("--depth_mult", type=float, default=1.0, help="--extract: the share of layers kept (DynaBERT's "
                   "rule: layer floor(i / d))")
    p.add_argument("--keep_layers", default=None, help="--extract: keep these layers (1-based, e.g. 1,2,3: a TinyBERT "
                   "student initialized from its teacher's first three layers) instead of --depth_mult's rule")
    p.add_argument("--grow_to", default=None, help="--grow: the larger sizes, e.g. "
                   "emb_dim=768,num_heads=12,mlp_dim=3072,num_encoder_layers=12 (head_dim stays)")
    p.add_argument("--grow_mapping", choices=["random", "cyclic"], default="random", help="--grow: which unit each "
                   "new unit copies: drawn uniformly (the paper's) or cyclic (j mod n: even copy counts)")
    p.add_argument("--seed", type=int, default=0, help="--grow: the seed of the random unit map")
    p.add_argument("--out", required=True, help="where the converted model goes")
    p.add_argument("--family", default=None, help="--to hf: the Hugging Face model_type to write (default: the "
                   "one the checkpoint came from, else the first that represents its config)")
    p.add_argument("--verify", action="store_true", help="run transformers and plmjax on a sample batch and print "
                   "the largest differences (needs torch and transformers)")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of an error")


def _add_augment_parser(sub) -> None:
    from plmjax import launch
    p = sub.add_parser("augment", help="TinyBERT's data augmentation of a GLUE task's training set (a GLUE folder "
                       "for GLUE_DIR; K, p, N and the seed from gin: augment.num_candidates, .replace_prob, .copies, "
                       ".seed)")
    launch.add_gin_flags(p, required=False)
    p.add_argument("--mlm", required=True, help="an encoder checkpoint with an MLM head (plmjax train/convert)")
    p.add_argument("--task", default="SST-2", help="the GLUE folder name (SST-2, MRPC, ...)")
    p.add_argument("--glue_dir", default=None, help="default $GLUE_DIR, else ../shared/data/glue")
    p.add_argument("--out", required=True, help="the new GLUE folder (train with GLUE_DIR = this)")
    p.add_argument("--limit", type=int, default=0, help="augment the first N training rows only (0: all)")
    p.add_argument("--batch_size", type=int, default=64, help="MLM queries a forward pass")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of an error")


def _augment(args) -> int:
    """`plmjax augment`: <out>/<task>/train.tsv holds every original row followed by its augmented copies (one text
    column at a time), dev/test are copied, and augment.json records the MLM, the options and the sizes."""
    import json
    from plmjax import interactive as pi
    from plmjax import launch
    from plmjax.compression import augment_glue
    from plmjax.data.finetune import glue
    tasks = {t.folder: t for t in glue.TASKS.values()}
    if args.task not in tasks:
        raise ValueError(f"--task {args.task!r}: choose one of {sorted(tasks)}.")
    options = launch.augment_options()
    model = pi.load(args.mlm)
    sizes = augment_glue.augment_folder(pi.masked_lm(model), tasks[args.task], args.glue_dir or
                                        glue.default_glue_dir(), args.out, options, args.limit, args.batch_size)
    record = {"mlm": os.path.abspath(args.mlm), "mlm_config": model.config.name, "task": args.task,
              "options": dataclasses.asdict(options), **sizes}
    with open(os.path.join(args.out, args.task, "augment.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    print(f"{args.task}: {sizes['examples']:,} training rows -> {sizes['augmented_examples']:,} "
          f"({sizes['augmented_examples'] / max(1, sizes['examples']):.1f}x, {sizes['bytes'] / 1e6:.1f} MB) in "
          f"{sizes['seconds']:.0f} s; GLUE_DIR = {args.out!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from plmjax import launch
    parser = argparse.ArgumentParser(prog="plmjax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("train", "train or resume a model"), ("eval", "evaluate a checkpoint")):
        p = sub.add_parser(name, help=help_)
        launch.add_gin_flags(p)
        p.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
        p.add_argument("--coordinator_address", default=None,
                       help="host:port of process 0, to run as one of several processes (jax.distributed)")
        p.add_argument("--num_processes", type=int, default=None, help="with --coordinator_address")
        p.add_argument("--process_id", type=int, default=None, help="with --coordinator_address")
    sub.choices["train"].add_argument("--model_dir", default=None,
                                      help="where checkpoints, metrics and plots go (default runs/<gin file name>)")
    sub.choices["eval"].add_argument("--checkpoint", required=True,
                                     help="a model dir, its checkpoints/ dir, one step's dir, or a quantized "
                                     "student's packed low-bit file (<student>/packed.npz)")
    sub.choices["eval"].add_argument("--out", default=None, help="fine-tuning: where the results table and the "
                                     "submission file go (default: <model dir>/eval)")
    _add_convert_parser(sub)
    _add_augment_parser(sub)
    from plmjax.bench import command as bench_command
    from plmjax.evaluation import infer, perturbed_masking
    from plmjax.plan import command as plan_command
    bench_command.add_parser(sub)
    plan_command.add_parser(sub)
    perturbed_masking.add_parser(sub)
    infer.add_parser(sub)
    launch.add_gin_flags(sub.choices["infer"], required=False)
    argv, dotted_gin = launch.split_gin_flags(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if hasattr(args, "gin_param"):
        args.gin_param += dotted_gin
    elif dotted_gin:
        parser.error(f"--gin.NAME=VALUE flags belong to commands that read gin files, not {args.command!r}")

    try:
        if args.command == "convert":
            from plmjax.convert import command
            command.run(args)
            return 0
        if args.command == "bench":
            bench_command.run(args)
            return 0
        if args.command == "plan":
            return plan_command.run(args)
        if args.command == "parse":
            return perturbed_masking.run(args)
        if args.command == "augment":
            launch.parse_gin(args.gin_file, args.gin_param, clear=True)
            return _augment(args)
        if args.command == "infer":  # one command, one configuration: no binding of an earlier call in this process
            if args.gin_file or args.gin_param:
                launch.parse_gin(args.gin_file, args.gin_param, clear=True)
            else:
                import gin
                gin.clear_config()
            return infer.run(args, launch.infer_settings)
        if args.coordinator_address:
            _initialize_distributed(args)
        launch.parse_gin(args.gin_file, args.gin_param, clear=True)
        if args.command == "train":
            model_dir = args.model_dir or os.path.join(
                "runs", os.path.splitext(os.path.basename(args.gin_file[-1]))[0])
            return _train(model_dir, args)
        else:
            launch.evaluate(args.checkpoint, args.out)
    except Exception as error:  # noqa: BLE001  user errors become one line; others keep their traceback
        if args.traceback or not _is_user_error(error):
            raise
        print(f"plmjax {args.command}: error: {_one_line(error)}", file=sys.stderr)
        print("(run again with --traceback for the full traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
