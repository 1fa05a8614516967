"""Runs every notebook in notebooks/ with its default parameters (the tiny recipes; slow: minutes each) and writes a
rendered copy with outputs (stderr, i.e. progress bars and logs, left out) and images to docs/notebooks/<name>.md (+ <name>_files/); or strips the outputs of the
committed notebooks. Needs the `notebooks` extra (pip install -e '.[notebooks]').

    python scripts/render_notebooks.py                    # every notebook -> docs/notebooks/
    python scripts/render_notebooks.py generation         # one
    python scripts/render_notebooks.py --strip            # clear outputs in notebooks/*.ipynb (before committing)
"""
import argparse
import pathlib
import sys
import time

import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / 'notebooks'
OUT = ROOT / 'docs' / 'notebooks'


def strip(path: pathlib.Path) -> bool:
    notebook = nbformat.read(path, as_version=4)
    changed = False
    for cell in notebook.cells:
        if cell.cell_type == 'code' and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
    if changed:
        nbformat.write(notebook, path)
    return changed


def render(path: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    from nbclient import NotebookClient
    from nbconvert import MarkdownExporter
    from nbconvert.writers import FilesWriter
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=3600, kernel_name='python3',
                   resources={'metadata': {'path': str(workdir)}}).execute()
    for cell in notebook.cells:  # progress bars and logs (stderr) are not part of the rendered copy
        if cell.cell_type == 'code':
            cell.outputs = [o for o in cell.outputs if not (o.output_type == 'stream' and o.name == 'stderr')]
    body, resources = MarkdownExporter().from_notebook_node(
        notebook, resources={'output_files_dir': f'{path.stem}_files'})
    FilesWriter(build_directory=str(OUT)).write(body, resources, notebook_name=path.stem)
    return OUT / f'{path.stem}.md'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('names', nargs='*', help='notebook names (default: all)')
    parser.add_argument('--strip', action='store_true', help='clear the outputs of notebooks/*.ipynb instead')
    parser.add_argument('--workdir', default=str(ROOT / 'runs' / 'notebooks'),
                        help='where the notebooks run (their runs/ go there)')
    args = parser.parse_args()
    paths = [NOTEBOOKS / f'{n.removesuffix(".ipynb")}.ipynb' for n in args.names] or sorted(NOTEBOOKS.glob('*.ipynb'))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f'no such notebook: {", ".join(missing)}', file=sys.stderr)
        return 2
    if args.strip:
        for path in paths:
            print(f'{path.name}: {"stripped" if strip(path) else "no outputs"}')
        return 0
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        start = time.perf_counter()
        out = render(path, workdir)
        print(f'{path.name} -> {out.relative_to(ROOT)} ({time.perf_counter() - start:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
