"""One measured configuration in a fresh process: `python -m plmjax.bench.worker '<spec json>'`.

Prints one line `BENCH_RESULT <json>` with the measurement, the peak resident memory of the whole process
(`peak_rss_mb`, from getrusage) and the resident memory right after importing the framework (`import_rss_mb`),
so that the memory each configuration needs is its own. Errors are reported in the JSON ('error'), not raised.
"""
from __future__ import annotations

import json
import sys
import traceback

from plmjax.bench import timing

RESULT_PREFIX = 'BENCH_RESULT '


def measure(spec: dict) -> dict:
    if spec['framework'] == 'plmjax':
        from plmjax.bench import jax_worker as worker
        if spec['kind'] == 'train':
            import plmjax.train.step  # noqa: F401  the trainer's imports (seqio, TensorFlow) count in import_rss_mb
    else:
        from plmjax.bench import torch_worker as worker
    import_rss = timing.current_rss_mb()
    try:
        result = worker.MEASURES[spec['kind']](spec)
    except Exception as error:  # noqa: BLE001  a failed variant (e.g. torch.compile) is reported, not fatal
        result = {'error': f'{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ""}',
                  'traceback': traceback.format_exc(limit=5)}
    return {**result, 'import_rss_mb': import_rss, 'peak_rss_mb': timing.peak_rss_mb()}


def main(argv: list[str]) -> None:
    spec = json.loads(argv[1])
    print(RESULT_PREFIX + json.dumps(measure(spec)), flush=True)


if __name__ == '__main__':
    main(sys.argv)
