"""`densa generate --model PATH --prompt TEXT`: sample a continuation with the model's own tokenizer."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="sample text from a checkpoint or HF folder")
    p.add_argument("--model", required=True, help="HF folder, densa model folder, run dir or step_N")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="default: the model's own")
    p.add_argument("--no-bos", dest="bos", action="store_false", help="do not prepend BOS to the prompt")
    kv = p.add_argument_group("KV-cache policy (chunked prefill under a budget; greedy decoding)")
    kv.add_argument("--kv-policy", default=None, help="full, streaming_llm, h2o, snapkv, random or locret")
    kv.add_argument("--budget", type=int, default=None, help="KV entries kept per layer and head")
    kv.add_argument("--chunk", type=int, default=256, help="prefill chunk length (default: %(default)s)")
    kv.add_argument("--heads", default=None, help="locret: retaining-heads file (save_heads output)")
    kv.add_argument(
        "--kv-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="policy option, e.g. n_stabilizers=8",
    )
    p.set_defaults(handler=_handler)


def _handler(args) -> int:
    import torch

    from densa.data.tokenizer import load_tokenizer
    from densa.errors import DensaError
    from densa.models.generation import generate
    from densa.train.finetune import find_tokenizer, load_model

    if args.max_new_tokens < 1 or not 0 < args.top_p <= 1 or args.temperature < 0:
        raise DensaError("need --max-new-tokens >= 1, 0 < --top-p <= 1 and --temperature >= 0")
    model = load_model(args.model)
    tok_path = args.tokenizer or find_tokenizer(args.model)
    if tok_path is None:
        raise DensaError(f"{args.model}: no tokenizer found next to the model; pass --tokenizer")
    tok = load_tokenizer(tok_path)
    ids = tok.encode(args.prompt)
    if args.bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
        ids = [tok.bos_id, *ids]
    if not ids:
        raise DensaError("the prompt encodes to no tokens")
    if args.kv_policy is not None:
        new = _generate_with_policy(model, ids, args, tok.eos_id)
        print(tok.decode(_strip_bos(ids, tok, args) + new))
        return 0
    generator = torch.Generator().manual_seed(args.seed)
    out = generate(
        model,
        torch.tensor([ids]),
        args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        eos_token_id=tok.eos_id,
        generator=generator,
    )
    new = out[0, len(ids) :].tolist()
    if tok.eos_id is not None and tok.eos_id in new:
        new = new[: new.index(tok.eos_id)]
    print(tok.decode(_strip_bos(ids, tok, args) + new))
    return 0


def _strip_bos(ids: list[int], tok, args) -> list[int]:
    return ids[1:] if args.bos and tok.bos_id is not None and ids[0] == tok.bos_id else ids


def _generate_with_policy(model, ids: list[int], args, eos_id: int | None) -> list[int]:
    """Chunked prefill with `--kv-policy` keeping at most `--budget` entries, then greedy decoding."""
    import sys

    import torch
    import yaml

    from densa.errors import DensaError
    from densa.longctx import build_policy, generate_with_policy

    options = {}
    for item in args.kv_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise DensaError(f"--kv-option {item!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    if args.heads is not None:
        options["heads"] = args.heads
    if args.temperature > 0:
        print(
            "densa generate: KV-policy generation decodes greedily; --temperature is ignored", file=sys.stderr
        )
    policy = build_policy(args.kv_policy, **options)
    result = generate_with_policy(
        model, torch.tensor([ids]), policy, args.budget, args.chunk, args.max_new_tokens, eos_token_id=eos_id
    )
    stats = result.stats
    print(
        f"densa generate: policy {policy.name}, budget {args.budget}, chunk {args.chunk}: "
        f"peak {stats.peak_kv_tokens} KV entries for {stats.tokens_seen} tokens, {stats.evictions} evictions",
        file=sys.stderr,
    )
    new = result.tokens[0, len(ids) :].tolist()
    if eos_id is not None and eos_id in new:
        new = new[: new.index(eos_id)]
    return new
