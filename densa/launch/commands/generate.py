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
    prompt = ids[1:] if args.bos and tok.bos_id is not None and ids[0] == tok.bos_id else ids
    print(tok.decode(prompt + new))
    return 0
