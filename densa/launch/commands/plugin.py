"""`densa plugin ...` (kb, embed, ask): knowledge plugins (map-tuning). Mappers are trained by
`densa train` with a `plugin:` recipe section. See docs/plugins.md."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    plugin = subparsers.add_parser("plugin", help="knowledge plugins (map-tuning): kb, embed, ask")
    sub = plugin.add_subparsers(dest="plugin_command", metavar="SUBCOMMAND")
    plugin.set_defaults(handler=lambda args: (plugin.print_help(), 2)[1])

    k = sub.add_parser("kb", help="write a knowledge-base file (triples + aliases) from the fact table")
    k.add_argument("--out", required=True, help="KB file to write (tab-separated triple/alias lines)")
    k.add_argument("--domain", choices=["all", "A", "B"], default="all", help="subjects of one domain only")
    k.set_defaults(handler=_kb)

    e = sub.add_parser("embed", help="train TransE on a KB file and write its entity embeddings")
    e.add_argument("kb", help="KB file")
    e.add_argument("--out", required=True, help="embeddings file (.safetensors)")
    e.add_argument("--dim", type=int, default=64, help="embedding size")
    e.add_argument("--epochs", type=int, default=100, help="passes over the triples")
    e.add_argument("--seed", type=int, default=0, help="seed of init and negative sampling")
    e.set_defaults(handler=_embed)

    a = sub.add_parser("ask", help="greedy continuation of prompts with [[mentions]], the plugin plugged in")
    a.add_argument(
        "prompts", nargs="+", help='text with mentions marked [[...]], e.g. "[[Lyon]] is a city in"'
    )
    a.add_argument("--model", required=True, help="HF or densa model folder (the frozen model)")
    a.add_argument("--kb", required=True, help="KB file the plugin was trained with")
    a.add_argument("--embeddings", required=True, help="that KB's embeddings file")
    a.add_argument("--mapper", required=True, help="mapper file (plugin.safetensors of a map-tuning run)")
    a.add_argument("--tokenizer", help="tokenizer (default: the model folder's)")
    a.add_argument("--max-new-tokens", type=int, default=8, help="tokens to generate")
    a.add_argument("--json", action="store_true", help="one JSON object per prompt")
    a.set_defaults(handler=_ask)


def _kb(args: argparse.Namespace) -> int:
    from densa.data.facts import fetch_facts, read_facts
    from densa.data.fetch import cache_root
    from densa.plugins.kb import country_aliases, kb_from_facts
    from densa.plugins.tasks import World

    facts = read_facts(fetch_facts())
    if args.domain != "all":
        world = World.from_facts(facts)
        facts = [f for f in facts if world.domain(f.subject) == args.domain]
    alias_dir = cache_root() / "pypi" / "facts" / "countryinfo" / "data"
    kb = kb_from_facts(facts, country_aliases(alias_dir) if alias_dir.is_dir() else {})
    kb.save(args.out)
    print(f"{args.out}: {len(kb.triples)} triples, {len(kb.entities)} entities, {len(kb.aliases)} aliases")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from densa.plugins.io import save_embeddings
    from densa.plugins.kb import read_kb
    from densa.plugins.transe import TransEConfig, tail_ranks, train_transe

    kb = read_kb(args.kb)
    model = train_transe(kb, TransEConfig(dim=args.dim, epochs=args.epochs, seed=args.seed))
    save_embeddings(args.out, kb, model.entity)
    import torch

    sample = torch.tensor(kb.triples[:500]).split(50)  # chunks: [50, entities, dim] at a time
    ranks = torch.cat([tail_ranks(model.entity, model.relation, t) for t in sample]).float()
    print(
        f"{args.out}: {len(kb.entities)} x {args.dim}; raw tail mean rank {ranks.mean():.1f} of 500 triples"
    )
    return 0


def _ask(args: argparse.Namespace) -> int:
    import torch

    from densa.data.tokenizer import load_tokenizer
    from densa.plugins.inject import encode_mentions, plugged_logits
    from densa.plugins.io import load_embeddings, load_plugin
    from densa.plugins.kb import read_kb
    from densa.plugins.mapper import NO_ENTITY
    from densa.train.finetune import load_model

    model = load_model(args.model)
    tok = load_tokenizer(args.tokenizer or args.model)
    kb = read_kb(args.kb)
    plugin = load_plugin(args.mapper, model, kb, load_embeddings(args.embeddings, kb))
    placeholder = tok.eos_id if tok.eos_id is not None else 0
    for prompt in args.prompts:
        enc = encode_mentions(prompt, tok.encode, kb, placeholder, form=plugin.mention_form)
        ids, ents = list(enc.input_ids), list(enc.entity_ids)
        with torch.no_grad():  # no KV cache: prompts are short and the plugged input is re-embedded
            for _ in range(args.max_new_tokens):
                logits = plugged_logits(model, plugin, torch.tensor([ids]), torch.tensor([ents]))
                nxt = int(logits[0, -1].argmax())
                if nxt == tok.eos_id:
                    break
                ids.append(nxt)
                ents.append(NO_ENTITY)
        answer = tok.decode(ids[len(enc.input_ids) :])
        if args.json:
            print(json.dumps({"prompt": prompt, "answer": answer, "unknown_mentions": enc.unknown}))
        else:
            note = f"  ({enc.unknown} mention(s) linked to no entity: zero vector)" if enc.unknown else ""
            print(f"{prompt} -> {answer}{note}")
    return 0
